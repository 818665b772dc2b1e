"""The selector protocol: a global step over the narrow score table.

A selector sees one row per eligible document (`id`, `_shard`, `_row`, the token column
and the score columns it asks for). It sees no text unless it names normalised input columns
in `text_columns()` (e.g. `prompt`, `response`): the select stage then reads them again from
the input and adds them to its table (all of them, in the driver's memory). It returns a boolean
`selected` aligned with the rows, optional extra per-row columns (written next to the
scores, e.g. a learned logit or a weight), and statistics for the manifest.

Budgets are a fraction of the valid (non-rejected) corpus, counted in documents or in
tokens (`budget_unit`), so `budget: 0.1` means the same thing whatever filters ran first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class SelectorParams(BaseModel):
    """Base for selector parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class BudgetParams(SelectorParams):
    """Parameters shared by every selector that picks a budget."""

    budget: float = Field(0.1, gt=0, le=1, description="fraction of the valid corpus to select")
    budget_unit: Literal["docs", "tokens"] = Field(
        "docs", description="count the budget in documents, or in tokens (by token_column)")
    token_column: str = Field("n_words", description="per-document token count for token budgets")


ParallelMap = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def serial_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """The default `SelectContext.parallel_map`: in this process, in order."""
    return [fn(x) for x in items]


@dataclass
class SelectContext:
    """What a selector knows besides its rows."""

    seed: int
    pool_docs: int  # valid (non-rejected) documents in the whole corpus
    pool_tokens: float  # their tokens, by the selector's token column (0 if unknown)
    # maps a picklable module-level function over independent work items (e.g. DATAMASK
    # blocks) on the job's engine: local processes, Spark tasks or Beam elements
    parallel_map: ParallelMap = serial_map
    # the job's validated scorer specs (`type`, optional `name`, params), for selectors that
    # reuse a scorer's settings (e.g. the icon selector's classifier uses the icon scorer's model)
    scorers: list[dict[str, Any]] = field(default_factory=list)
    # a folder for the selector's artefacts (the job's `_selection/`; None outside a job run)
    artifacts_dir: str | None = None


@dataclass
class Ranking:
    """A rank selector's priority over its rows: `keys` most significant first, each
    (values, descending); NaN sorts last; ties are broken by id (ascending), so the order is
    total and the same on every engine. Only `candidates` (all rows when None) may be chosen."""

    keys: list[tuple[np.ndarray, bool]]
    candidates: np.ndarray | None = None
    columns: dict[str, pa.Array] = field(default_factory=dict)


def key_components(keys: list[tuple[np.ndarray, bool]]) -> list[np.ndarray]:
    """The keys as ascending float64 components (a NaN flag, then the value, per key): sorting
    rows by these components and then by id gives the priority order."""
    out = []
    for values, descending in keys:
        v = np.asarray(values, dtype=np.float64)
        nan = np.isnan(v)
        out.append(nan.astype(np.float64))
        out.append(np.where(nan, 0.0, -v if descending else v))
    return out


def priority_order(ranking: Ranking, ids: np.ndarray) -> np.ndarray:
    """Row indices of the candidates in priority order (keys, then id)."""
    comps = key_components(ranking.keys)
    order = np.lexsort((np.asarray(ids).astype(str), *reversed(comps))) if comps else np.argsort(
        np.asarray(ids).astype(str), kind="stable")
    if ranking.candidates is not None:
        order = order[np.asarray(ranking.candidates, dtype=bool)[order]]
    return order


@dataclass
class SelectionResult:
    selected: np.ndarray  # bool, one per row
    columns: dict[str, pa.Array] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Selector(ABC):
    """Base class of every selector.

    `kind` says how the select stage runs it without holding a per-document column on the
    driver: `rows` decides each row on its own (`select` runs per shard), `rank` gives a
    priority (`rank`; the budget is cut exactly across shards), `blocks` solves random blocks
    of rows (`BlockSelector`). `select` is the in-memory reference of the same decision."""

    name: ClassVar[str]
    Params: ClassVar[type[SelectorParams]] = SelectorParams
    kind: ClassVar[Literal["rows", "rank", "blocks"]] = "rows"

    def __init__(self, params: SelectorParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def required_columns(self) -> list[str]:
        """Score-table columns this selector reads (besides id/_shard/_row)."""
        token = self.token_column()
        return [token] if token is not None else []

    def token_column(self) -> str | None:
        """The per-document token count behind token budgets and the pool's token total
        (None: this selector has no budget)."""
        return self.params.token_column if isinstance(self.params, BudgetParams) else None

    def text_columns(self) -> list[str]:
        """Normalised input columns (`text`, `prompt`, `response`) this selector reads.

        Default none: a selector sees only the narrow score table. Named columns are read
        from the input again by the select stage, so they cost driver memory for the whole pool.
        """
        return []

    @abstractmethod
    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        """Choose rows of `table`."""

    # -- rank selectors ------------------------------------------------------------------

    def fit_rows(self, table: pa.Table) -> np.ndarray | None:
        """Rank selectors that learn from a small labelled set (ICon): which rows it is (a
        bool mask); None: nothing to fit."""
        return None

    def fit(self, rows: pa.Table, ctx: SelectContext) -> tuple[dict[str, Any], dict[str, Any]]:
        """Learn from the `fit_rows` (all of them, in shard and row order): (state, stats); the
        state is small and goes to every task."""
        return {}, {}

    def rank(self, table: pa.Table, ctx: SelectContext, state: dict[str, Any]) -> Ranking:
        """The priority of `table`'s rows (rank selectors)."""
        raise NotImplementedError(f"selector {self.name!r} is not a rank selector")

    def rank_stats(self, fit_stats: dict[str, Any], cut: list[float] | None, selected: int) -> dict[str, Any]:
        """The manifest's statistics of a rank selection; `cut` is the last selected row's key
        values (None when nothing was selected)."""
        return {**fit_stats, "selected": selected}

    def rank_select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        """The in-memory reference of a rank selection: fit, rank, take the budget in order."""
        fit_mask = self.fit_rows(table)
        state, fit_stats = self.fit(table.filter(pa.array(fit_mask)), ctx) if fit_mask is not None else ({}, {})
        ranking = self.rank(table, ctx, state)
        order = priority_order(ranking, table.column("id").to_numpy(zero_copy_only=False))
        tokens = None
        if isinstance(self.params, BudgetParams) and self.params.budget_unit == "tokens":
            tokens = np.asarray(table.column(self.params.token_column).to_numpy(zero_copy_only=False), np.float64)
        selected = take_in_order(order, table.num_rows, self.params, ctx, tokens)  # type: ignore[arg-type]
        chosen = order[selected[order]]
        cut = [float(v[chosen[-1]]) for v, _ in ranking.keys] if len(chosen) else None
        return SelectionResult(selected, ranking.columns, self.rank_stats(fit_stats, cut, int(selected.sum())))


def budget_target(params: BudgetParams, ctx: SelectContext) -> float:
    """The budget in documents or tokens."""
    if params.budget_unit == "docs":
        return math.floor(params.budget * ctx.pool_docs + 1e-9)
    return params.budget * ctx.pool_tokens


def take_in_order(order: np.ndarray, n_rows: int, params: BudgetParams, ctx: SelectContext,
                  tokens: np.ndarray | None) -> np.ndarray:
    """Select rows in priority `order` until the budget is used (a prefix of `order`)."""
    target = budget_target(params, ctx)
    selected = np.zeros(n_rows, dtype=bool)
    if params.budget_unit == "docs":
        selected[order[: int(target)]] = True
    else:
        if tokens is None:
            raise ValueError("a token budget needs a token column")
        cum = np.cumsum(tokens[order])
        selected[order[cum <= target + 1e-9]] = True
    return selected
