"""Baseline selectors: everything, a random subset, top-k by a score, a threshold filter."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.common.arrays import column_numpy
from thresher.selectors.base import (
    BudgetParams,
    SelectContext,
    SelectionResult,
    Selector,
    SelectorParams,
    take_in_order,
)


def _tokens(table: pa.Table, params: BudgetParams) -> np.ndarray | None:
    return column_numpy(table, params.token_column) if params.budget_unit == "tokens" else None


class AllSelector(Selector):
    """Select every eligible row (score-only jobs, or filters alone)."""

    name = "all"

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        return SelectionResult(np.ones(table.num_rows, dtype=bool))


class RandomSelector(Selector):
    """A uniformly random subset within the budget, seeded by the job seed."""

    name = "random"
    Params = BudgetParams

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        # order by a seeded hash-free permutation of the rows sorted by id, so the result
        # does not depend on the order the engine delivered the rows in
        ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
        canonical = np.argsort(ids, kind="stable")
        perm = np.random.default_rng(ctx.seed).permutation(table.num_rows)
        order = canonical[perm]
        return SelectionResult(take_in_order(order, table.num_rows, self.params, ctx, _tokens(table, self.params)))


class TopKParams(BudgetParams):
    column: str = Field(..., description="the score column to rank by")
    descending: bool = Field(True, description="True: highest scores first")


class TopKSelector(Selector):
    """The highest (or lowest) scoring rows of one column, ties broken by id."""

    name = "topk"
    Params = TopKParams

    def required_columns(self) -> list[str]:
        return super().required_columns() + [self.params.column]

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        p: TopKParams = self.params  # type: ignore[assignment]
        score = column_numpy(table, p.column)
        ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
        key = -score if p.descending else score
        order = np.lexsort((ids, key))  # primary: score, secondary: id (deterministic ties)
        sel = take_in_order(order, table.num_rows, p, ctx, _tokens(table, p))
        stats = {"column": p.column, "threshold_reached": float(score[sel].min() if p.descending else score[sel].max())
                 if sel.any() else None}
        return SelectionResult(sel, stats=stats)


class ThresholdParams(SelectorParams):
    column: str = Field(..., description="the score column to compare")
    min: float | None = Field(None, description="keep rows with a score >= this (give min, max or both)")
    max: float | None = Field(None, description="keep rows with a score <= this")


class ThresholdSelector(Selector):
    """Rows whose score lies in [min, max] (no budget)."""

    name = "threshold"
    Params = ThresholdParams

    def required_columns(self) -> list[str]:
        return [self.params.column]

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        p: ThresholdParams = self.params  # type: ignore[assignment]
        if p.min is None and p.max is None:
            raise ValueError("threshold selector: give min, max or both")
        score = column_numpy(table, p.column)
        sel = np.ones(table.num_rows, dtype=bool)
        if p.min is not None:
            sel &= score >= p.min
        if p.max is not None:
            sel &= score <= p.max
        return SelectionResult(sel)


__all__ = ["AllSelector", "RandomSelector", "TopKSelector", "ThresholdSelector"]
