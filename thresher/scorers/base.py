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
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from thresher.common.hashing import hash_unit, id_hash
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
    """A scorer that needs more than one row at a time (e.g. k-means clusters).

    It runs in the global step, after every shard is scored and before filters and the
    selector, on the score table (id, _shard, _row and the score columns, never text), in
    pieces that never hold a per-document column in one process:
    1. `fit` on a bounded sample (`sample_size`: a share of the rows, capped), on the driver;
    2. `transform` each shard's rows with the fitted state (a map task);
    3. optionally `transform_group`: rows that share a value of the `group_column` of step 2
       (e.g. a cluster), gathered by the engine's shuffle, one task per group.
    Its columns are stored with the selection and can be filtered or selected on.
    `fit_transform` is the in-memory reference: the same steps on one table.
    """

    group_column: str | None = None  # a column `transform` adds; None: no per-group step

    @abstractmethod
    def required_columns(self) -> list[str]:
        """Score-table columns it reads."""

    @abstractmethod
    def output_schema(self) -> pa.Schema:
        """The columns it adds (names already prefixed)."""

    def sample_size(self) -> tuple[float, int]:
        """(share of the rows, most rows) `fit` sees."""
        return 1.0, 0

    def sample_rows(self, table: pa.Table) -> np.ndarray:
        """Which rows may enter the sample (bool mask); default all."""
        return np.ones(table.num_rows, dtype=bool)

    @abstractmethod
    def fit(self, sample: pa.Table, seed: int) -> dict[str, Any]:
        """Learn a small state from the sample (rows in shard and row order)."""

    @abstractmethod
    def transform(self, table: pa.Table, state: dict[str, Any]) -> dict[str, pa.Array]:
        """Per-row columns (aligned with `table`) that need only the fitted state."""

    def transform_group(self, group: pa.Table, state: dict[str, Any]) -> dict[str, pa.Array]:
        """Columns of one group's rows (in shard and row order), aligned with `group`."""
        return {}

    def fit_transform(self, table: pa.Table, seed: int) -> dict[str, pa.Array]:
        """All output columns of `table` at once (in memory): sample, fit, transform, groups."""
        fraction, cap = self.sample_size()
        ok = self.sample_rows(table)
        u = hash_unit(id_hash(table.column("id"), seed, SAMPLE_TAG))
        take = ok & (u < fraction)
        if cap and take.sum() > cap:
            cut = np.sort(u[take])[cap - 1]
            take &= u <= cut
        state = self.fit(table.filter(pa.array(take)), seed)
        cols = self.transform(table, state)
        if self.group_column is None:
            return cols
        full = table
        for name, arr in cols.items():
            full = full.append_column(name, arr)
        out = dict(cols)
        keys = full.column(self.group_column)
        valid = np.asarray(pc.is_valid(keys).to_numpy(zero_copy_only=False), dtype=bool)
        k = np.asarray(pc.fill_null(keys, -1).to_numpy(zero_copy_only=False))
        extra: dict[str, list] = {}
        for g in np.unique(k[valid]):
            rows = np.flatnonzero(valid & (k == g))
            res = self.transform_group(full.take(pa.array(rows)), state)
            for name, arr in res.items():
                extra.setdefault(name, []).append((rows, arr))
        for f in self.output_schema():
            if f.name in out:
                continue
            pos = np.full(table.num_rows, -1, dtype=np.int64)
            pieces = extra.get(f.name, [])
            vals = pa.concat_arrays([a for _, a in pieces]) if pieces else pa.array([], f.type)
            offset = 0
            for rows, arr in pieces:
                pos[rows] = np.arange(offset, offset + len(arr))
                offset += len(arr)
            out[f.name] = vals.take(pa.array(pos, mask=pos < 0)).cast(f.type)
        return out


SAMPLE_TAG = 0x5A3E  # the hash stream of global scorers' samples
