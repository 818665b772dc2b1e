"""The scorer protocol: a scorer takes an Arrow RecordBatch and returns new columns.

A scorer subclass declares `name`, a pydantic `Params` model (its job-spec keys), the
modules it `requires`, and implements `score(batch) -> dict[str, pa.Array]`. Optional
`setup()` runs once per worker before the first batch (load models there, never in
`__init__`: scorers are pickled to workers). The base class does the bookkeeping:
lazy setup, length and type checks of the returned columns, row and time counters, and
errors that name the scorer and the rows.

Input batches always carry `id` (string) and `text` (string, never null); instruction
data also carries `prompt` and `response`. Columns a scorer returns must be declared by
`output_schema()`; they are cast to it so every batch of every shard has one schema.
"""

from __future__ import annotations

import importlib.util
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from thresher.specs import JobError


class ScorerError(RuntimeError):
    """A scorer failed on a batch; the message names the scorer and the rows."""


class ScorerParams(BaseModel):
    """Base for scorer parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class _Named(ABC):
    """What every scorer, per batch or global, has: a name, parameters, the modules it
    needs (checked when built) and a column prefix."""

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]] = ScorerParams
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: ScorerParams | None = None, column_prefix: str | None = None) -> None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"scorer {self.name!r} needs {missing}; install thresher[models] or the package named")
        self.params = params if params is not None else self.Params()
        self.prefix = column_prefix if column_prefix is not None else self.name

    def col(self, suffix: str) -> str:
        """The full name of one of this scorer's columns."""
        return f"{self.prefix}_{suffix}" if self.prefix else suffix


class Scorer(_Named):
    """Base class of every scorer (see the module docstring for the contract)."""

    def __init__(self, params: ScorerParams | None = None, column_prefix: str | None = None) -> None:
        super().__init__(params, column_prefix)
        self.rows = 0
        self.seconds = 0.0
        self._ready = False

    # -- what subclasses implement -------------------------------------------------
    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """The columns this scorer adds (names already prefixed)."""

    @abstractmethod
    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Return one array per output column, each as long as the batch."""

    def output_names(self) -> list[str] | None:
        """The names of the columns this scorer adds, known before any model is loaded (the plan
        checks filters and selectors against them before scoring). Default: `output_schema()`'s
        names, with their types. A scorer whose schema needs a model's config (an embedding width,
        a classifier's labels) overrides this with a cheap answer; None means "not known until
        the model is loaded" (then every `<prefix>_...` column is taken on trust)."""
        return list(self.output_schema().names)

    def setup(self) -> None:
        """Load models or tables; runs once per worker before the first batch."""

    # -- bookkeeping done by the base ------------------------------------------------
    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def __call__(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Score a batch with the checks and counters of the base class."""
        try:
            self.ensure_setup()
        except (OSError, ValueError, KeyError) as exc:  # a missing or bad file named in the params
            if isinstance(exc, JobError):  # already a user error that names its key
                raise
            raise ScorerError(f"scorer {self.name!r} could not start: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}") from exc
        start = time.perf_counter()
        try:
            out = self.score(batch)
        except Exception as exc:  # name the scorer and rows, keep the cause
            ids = batch.column("id") if "id" in batch.schema.names else None
            where = f"rows {ids[0]}..{ids[-1]}" if ids is not None and len(ids) else "an empty batch"
            raise ScorerError(f"scorer {self.name!r} failed on {where}: {type(exc).__name__}: {exc}") from exc
        schema = self.output_schema()
        if set(out) != set(schema.names):
            raise ScorerError(
                f"scorer {self.name!r} returned columns {sorted(out)}, declared {sorted(schema.names)}"
            )
        fixed: dict[str, pa.Array] = {}
        for field in schema:
            arr = out[field.name]
            if not isinstance(arr, (pa.Array, pa.ChunkedArray)):
                arr = pa.array(arr, type=field.type)
            if len(arr) != batch.num_rows:
                raise ScorerError(
                    f"scorer {self.name!r} column {field.name!r} has {len(arr)} values for {batch.num_rows} rows"
                )
            if arr.type != field.type:
                arr = arr.cast(field.type)
            fixed[field.name] = arr
        self.rows += batch.num_rows
        self.seconds += time.perf_counter() - start
        return fixed


class GlobalScorer(_Named):
    """A scorer that needs the whole narrow score table (e.g. k-means clusters).

    It runs in the global step, after every shard is scored and before filters and the
    selector, on the score table (id, _shard, _row and the score columns, never text).
    Its columns are stored with the selection and can be filtered or selected on.
    """

    @abstractmethod
    def required_columns(self) -> list[str]:
        """Score-table columns it reads."""

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """The columns it adds (names already prefixed)."""

    @abstractmethod
    def fit_transform(self, table: pa.Table, seed: int) -> dict[str, pa.Array]:
        """One array per output column, aligned with the rows of `table`."""
