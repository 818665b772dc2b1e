"""Any Hugging Face sequence-classification or regression head as a document scorer.

What the model is, and its columns (prefix = scorer name, default `classifier`):
- regression with one output (e.g. the FineWeb-Edu classifier): `<p>_score` (float32), the raw
  output.
- regression with several outputs: `<p>_value_<label>` per output (float32), or with
  `labels_as: list` one `<p>_values` column (list<float32>, in label-id order).
- single-label classification: softmax probabilities `<p>_prob_<label>` per label, or with
  `labels_as: list` one `<p>_probs` column (list<float32>, in label-id order); `<p>_label`
  (string, the most likely label); with `label: NAME`, also `<p>_score` = P(NAME).
- multi-label classification: sigmoid probabilities, same columns as above (no `<p>_label`).
- always `<p>_reason`: `empty` for blank texts (all scores null), `truncated` when only the
  first `max_length` tokens were read.

Label names come from the model's `id2label`, lower-cased with non-alphanumerics as `_`.
The problem type comes from the model config (`problem_type`, else one output = regression,
several = single-label); `problem_type:` in the spec overrides it.
Long documents: `truncate` (default, as the published classifiers are used) or `chunk`
(outputs averaged over chunks, weighted by their token counts).
`cpu_bf16_autocast` defaults to false (fp32 outputs, the same on every CPU); `auto` turns bf16
autocast on where the CPU runs bf16 natively.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from thresher.models.batching import move
from thresher.models.loading import ModelError, autocast_context, inference_mode, resolve_model_ref
from thresher.scorers.model import REASON_EMPTY, REASON_TRUNCATED, ModelScorerMixin, ModelScorerParams, texts_and_valid
from thresher.scorers.base import Scorer

ProblemType = Literal["auto", "regression", "single_label_classification", "multi_label_classification"]


class ClassifierParams(ModelScorerParams):
    problem_type: ProblemType = Field(
        "auto", description="auto (from the model config) | regression | single_label_classification | "
                            "multi_label_classification")
    labels_as: Literal["columns", "list"] = Field("columns", description="one column per label, or one list column")
    label: str | None = Field(None, description="also write <p>_score = probability of this label")
    long_doc_policy: Literal["chunk", "truncate"] = Field(
        "truncate", description="truncate (the first max_length tokens, as published classifiers are used) or chunk "
                                "(outputs averaged over chunks)")
    # not `auto`: the outputs are scores that get thresholded, and under autocast the head's
    # logits are bf16 (8-bit mantissa), which moves a score by ~0.4% of its size
    cpu_bf16_autocast: Literal["auto"] | bool = Field(
        False, description="bf16 autocast of the forward on CPU (default false: the head's outputs would be "
        "bf16); auto | true | false as for the embedding scorer")


def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "label"


class ClassifierScorer(ModelScorerMixin, Scorer):
    """Scores from a sequence-classification / regression head (see the module docstring)."""

    name: ClassVar[str] = "classifier"
    Params: ClassVar[type[ClassifierParams]] = ClassifierParams
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    kind = "sequence_classification"
    default_max_length = 512
    batcher_mode = "encoder"

    # -- what the model is (read from its config; no weights needed) -----------------------------
    def _head(self) -> tuple[str, list[str]]:
        cached = getattr(self, "_head_cache", None)
        if cached is not None:
            return cached
        from transformers import AutoConfig

        path = resolve_model_ref(self.params.model)
        try:
            cfg = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=self.params.trust_remote_code)
        except Exception as exc:
            raise ModelError(f"cannot read the model config at {path}: {type(exc).__name__}: {exc}") from exc
        n = int(cfg.num_labels)
        labels = [str(cfg.id2label.get(i, f"LABEL_{i}")) for i in range(n)]
        problem = self.params.problem_type
        if problem == "auto":
            problem = cfg.problem_type or ("regression" if n == 1 else "single_label_classification")
        slugs = [_slug(x) for x in labels]
        if len(set(slugs)) != len(slugs):
            slugs = [f"{s}_{i}" for i, s in enumerate(slugs)]
        if self.params.label is not None:
            if problem == "regression":
                raise ModelError(f"`label` is set but the model at {path} is a regression head")
            if self.params.label not in labels and self.params.label not in slugs:
                raise ModelError(f"label {self.params.label!r} is not one of the model's labels {labels}")
        self._head_cache = (problem, slugs)
        self._labels_raw = labels
        return self._head_cache

    def output_names(self) -> list[str] | None:
        """Column names from the model's config (no weights); None when the model cannot be found
        here (it may exist only where the scorer runs: then scoring reports it)."""
        try:
            resolve_model_ref(self.params.model)
        except ModelError:
            return None
        return list(self.output_schema().names)

    def output_schema(self) -> pa.Schema:
        problem, slugs = self._head()
        f32 = pa.float32()
        fields: list[pa.Field] = []
        if problem == "regression" and len(slugs) == 1:
            fields.append(pa.field(self.col("score"), f32))
        elif problem == "regression":
            fields += ([pa.field(self.col("values"), pa.list_(f32))] if self.params.labels_as == "list"
                       else [pa.field(self.col(f"value_{s}"), f32) for s in slugs])
        else:
            fields += ([pa.field(self.col("probs"), pa.list_(f32))] if self.params.labels_as == "list"
                       else [pa.field(self.col(f"prob_{s}"), f32) for s in slugs])
            if problem == "single_label_classification":
                fields.append(pa.field(self.col("label"), pa.string()))
            if self.params.label is not None:
                fields.append(pa.field(self.col("score"), f32))
        fields.append(pa.field(self.col("reason"), pa.string()))
        return pa.schema(fields)

    def setup(self) -> None:
        self._head()
        self.load()
        assert self._lm is not None
        n_model = int(self._lm.model.config.num_labels)
        if n_model != len(self._head()[1]):
            raise ModelError(f"model at {self._lm.path} has {n_model} outputs, config lists {len(self._head()[1])}")

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        assert self._lm is not None and self._batcher is not None
        problem, slugs = self._head()
        texts, valid = texts_and_valid(batch)
        n, k = batch.num_rows, len(slugs)
        acc = np.zeros((n, k), dtype=np.float64)
        weight = np.zeros(n, dtype=np.float64)
        truncated = np.zeros(n, dtype=bool)
        lm = self._lm
        for b in self._batcher.batches([texts[i] for i in valid], valid):
            ids, mask = move(b, lm.device)
            with inference_mode(), autocast_context(lm.device, self.cpu_autocast()):
                logits = lm.model(input_ids=ids, attention_mask=mask).logits
            logits = logits.float()
            if problem == "single_label_classification":
                values = torch.softmax(logits, dim=-1)
            elif problem == "multi_label_classification":
                values = torch.sigmoid(logits)
            else:
                values = logits
            values_np = values.cpu().numpy().astype(np.float64)
            for row, seg in enumerate(b.segments):
                w = float(b.lengths[row])
                acc[seg.doc] += w * values_np[row]
                weight[seg.doc] += w
                truncated[seg.doc] |= seg.truncated
        ok = weight > 0
        mean = np.zeros_like(acc)
        mean[ok] = acc[ok] / weight[ok][:, None]
        null = ~ok
        reason = [REASON_EMPTY if null[i] else (REASON_TRUNCATED if truncated[i] else None) for i in range(n)]
        out: dict[str, pa.Array] = {}

        def column(values: np.ndarray) -> pa.Array:
            return pa.array(values.astype(np.float32), mask=null)

        if problem == "regression" and k == 1:
            out[self.col("score")] = column(mean[:, 0])
        else:
            stem = "value" if problem == "regression" else "prob"
            if self.params.labels_as == "list":
                out[self.col(stem + "s")] = pa.array(
                    [None if null[i] else mean[i].astype(np.float32).tolist() for i in range(n)], pa.list_(pa.float32()))
            else:
                for j, s in enumerate(slugs):
                    out[self.col(f"{stem}_{s}")] = column(mean[:, j])
            if problem == "single_label_classification":
                best = mean.argmax(axis=1)
                out[self.col("label")] = pa.array([None if null[i] else self._labels_raw[best[i]] for i in range(n)],
                                                  pa.string())
            if self.params.label is not None:
                j = (self._labels_raw.index(self.params.label) if self.params.label in self._labels_raw
                     else slugs.index(self.params.label))
                out[self.col("score")] = column(mean[:, j])
        out[self.col("reason")] = pa.array(reason, pa.string())
        return out
