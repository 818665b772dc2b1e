"""Baseline selectors on tiny tables where the right answer is known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from thresher.selectors.base import SelectContext
from thresher.selectors.registry import build_selector


def table(scores: list[float], tokens: list[int] | None = None) -> pa.Table:
    n = len(scores)
    return pa.table({"id": [f"d{i:03d}" for i in range(n)], "q": scores,
                     "n_words": tokens if tokens is not None else [10] * n})


def ctx(t: pa.Table, seed: int = 0) -> SelectContext:
    return SelectContext(seed=seed, pool_docs=t.num_rows, pool_tokens=float(sum(t.column("n_words").to_pylist())))


def test_topk_picks_the_highest_and_breaks_ties_by_id() -> None:
    t = table([0.1, 0.9, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4])
    sel = build_selector({"type": "topk", "column": "q", "budget": 0.3}).select(t, ctx(t)).selected
    assert np.flatnonzero(sel).tolist() == [1, 3, 7]
    low = build_selector({"type": "topk", "column": "q", "budget": 0.2, "descending": False}).select(t, ctx(t))
    assert np.flatnonzero(low.selected).tolist() == [0, 6]
    tie = table([1.0] * 4)
    sel = build_selector({"type": "topk", "column": "q", "budget": 0.5}).select(tie, ctx(tie)).selected
    assert np.flatnonzero(sel).tolist() == [0, 1]


def test_token_budget_takes_a_prefix_within_budget() -> None:
    t = table([5, 4, 3, 2, 1], tokens=[50, 30, 10, 5, 5])  # 100 tokens in all
    sel = build_selector({"type": "topk", "column": "q", "budget": 0.85, "budget_unit": "tokens"}).select(t, ctx(t))
    assert np.flatnonzero(sel.selected).tolist() == [0, 1]  # 80 tokens; adding 10 would pass 85


def test_random_is_seeded_and_independent_of_row_order() -> None:
    t = table(list(np.linspace(0, 1, 200)))
    rnd = build_selector({"type": "random", "budget": 0.1})
    a = rnd.select(t, ctx(t, seed=1)).selected
    b = rnd.select(t, ctx(t, seed=1)).selected
    c = rnd.select(t, ctx(t, seed=2)).selected
    assert a.sum() == 20 and (a == b).all() and not (a == c).all()
    perm = np.random.default_rng(0).permutation(200)
    shuffled = t.take(pa.array(perm))
    d = rnd.select(shuffled, ctx(shuffled, seed=1)).selected
    assert set(np.asarray(shuffled.column("id"))[d]) == set(np.asarray(t.column("id"))[a])


def test_threshold_and_null_scores() -> None:
    t = table([0.1, 0.5, 0.9])
    sel = build_selector({"type": "threshold", "column": "q", "min": 0.3, "max": 0.95}).select(t, ctx(t)).selected
    assert sel.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="give min, max or both"):
        build_selector({"type": "threshold", "column": "q"}).select(t, ctx(t))
    nulls = pa.table({"id": ["a", "b"], "q": [1.0, None], "n_words": [1, 1]})
    with pytest.raises(ValueError, match="has 1 nulls"):
        build_selector({"type": "topk", "column": "q", "budget": 0.5}).select(nulls, ctx(nulls))
    with pytest.raises(KeyError, match="score column 'zz' not found"):
        build_selector({"type": "topk", "column": "zz", "budget": 0.5}).select(t, ctx(t))
