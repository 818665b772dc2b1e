"""Baseline selectors: everything, a random subset, top-k by a score, a threshold filter."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.common.arrays import column_numpy
from thresher.common.hashing import hash_unit, id_hash
from thresher.selectors.base import BudgetParams, Ranking, SelectContext, SelectionResult, Selector, SelectorParams

TAG_RANDOM = 0x5A4D  # the random selector's hash stream


class AllSelector(Selector):
    """Select every eligible row (score-only jobs, or filters alone)."""

    name = "all"

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        return SelectionResult(np.ones(table.num_rows, dtype=bool))


class RandomSelector(Selector):
    """A uniformly random subset within the budget: rows in the order of a seeded hash of their
    id (so the pick does not depend on how rows are delivered or spread over shards)."""

    name = "random"
    Params = BudgetParams
    kind = "rank"

    def rank(self, table: pa.Table, ctx: SelectContext, state: dict) -> Ranking:
        h = id_hash(table.column("id"), ctx.seed, TAG_RANDOM)
        return Ranking([(hash_unit(h), False)])

    def rank_stats(self, fit_stats: dict, cut: list[float] | None, selected: int) -> dict:
        return {"selected": selected}

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        return self.rank_select(table, ctx)


class TopKParams(BudgetParams):
    column: str = Field(..., description="the score column to rank by")
    descending: bool = Field(True, description="True: highest scores first")


class TopKSelector(Selector):
    """The highest (or lowest) scoring rows of one column, ties broken by id."""

    name = "topk"
    Params = TopKParams
    kind = "rank"

    def required_columns(self) -> list[str]:
        return super().required_columns() + [self.params.column]

    def rank(self, table: pa.Table, ctx: SelectContext, state: dict) -> Ranking:
        p: TopKParams = self.params  # type: ignore[assignment]
        return Ranking([(column_numpy(table, p.column), p.descending)])

    def rank_stats(self, fit_stats: dict, cut: list[float] | None, selected: int) -> dict:
        return {"column": self.params.column, "threshold_reached": cut[0] if cut else None}

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        return self.rank_select(table, ctx)


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
