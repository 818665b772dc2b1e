"""An exact budget cut over shards, without collecting a per-document column.

A rank selector orders rows by key components (ascending floats, see
`selectors.base.key_components`) and then by id; the selection is the longest prefix of that
order whose weight (1 per document, or its tokens) stays within the budget. Rows are spread
over shards, so the cut is found by narrowing a band:

1. every shard sorts its candidates in the band and returns a few evenly spaced keys with the
   cumulative weight up to each (a quantile sketch), and the exact weight before the band;
2. the driver brackets the cut between the latest key whose weight is surely within the budget
   and the earliest surely beyond it (bounds from each shard's neighbouring sketch points);
3. repeat on the narrower band until it holds at most `collect_cap` rows, then collect them,
   sort, and walk the cumulative weight: the last row within the budget is the cut.

The driver holds sketches (points per shard) and at most `collect_cap` rows, whatever N is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Key = tuple  # (component, ..., id)


def sort_rows(comps: list[np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Indices in priority order (components, then id)."""
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    return np.lexsort((ids, *reversed(comps)))


def at_or_before(comps: list[np.ndarray], ids: np.ndarray, key: Key | None) -> np.ndarray:
    """Rows whose key is at or before `key` in priority order (all False when key is None)."""
    n = len(ids)
    if key is None:
        return np.zeros(n, dtype=bool)
    res = np.zeros(n, dtype=bool)
    eq = np.ones(n, dtype=bool)
    for c, b in zip(comps, key[:-1]):
        res |= eq & (c < b)
        eq &= c == b
    return res | (eq & (ids <= key[-1]))


def in_band(comps: list[np.ndarray], ids: np.ndarray, lo: Key | None, hi: Key | None) -> np.ndarray:
    """Rows strictly after `lo` and strictly before `hi` (None: open end)."""
    band = ~at_or_before(comps, ids, lo)
    if hi is not None:
        band &= at_or_before(comps, ids, hi) & ~_equal(comps, ids, hi)
    return band


def _equal(comps: list[np.ndarray], ids: np.ndarray, key: Key) -> np.ndarray:
    eq = np.ones(len(ids), dtype=bool)
    for c, b in zip(comps, key[:-1]):
        eq &= c == b
    return eq & (ids == key[-1])


def row_key(comps: list[np.ndarray], ids: np.ndarray, i: int) -> Key:
    return tuple(float(c[i]) for c in comps) + (str(ids[i]),)


def shard_sketch(comps: list[np.ndarray], ids: np.ndarray, weights: np.ndarray, lo: Key | None, hi: Key | None,
                 points: int, collect: bool) -> dict[str, Any]:
    """One shard's part of a cut round: the exact weight at or before `lo`, and either the band's
    rows (collect) or its sketch (keys at evenly spaced ranks, with the cumulative band weight)."""
    before = float(weights[at_or_before(comps, ids, lo)].sum())
    band = np.flatnonzero(in_band(comps, ids, lo, hi))
    b_comps = [c[band] for c in comps]
    b_ids = ids[band]
    b_w = weights[band]
    out: dict[str, Any] = {"before": before, "count": int(len(band)), "weight": float(b_w.sum())}
    order = sort_rows(b_comps, b_ids)
    if collect:
        out["rows"] = [[*row_key(b_comps, b_ids, j), float(b_w[j])] for j in order]
        return out
    if len(order):
        cum = np.cumsum(b_w[order])
        m = len(order)
        ranks = np.unique(np.minimum(m - 1, (np.arange(1, points + 1) * m) // points - 1).clip(0))
        out["points"] = [[*row_key(b_comps, b_ids, order[r]), float(cum[r])] for r in ranks]
    else:
        out["points"] = []
    return out


def bracket(results: list[dict[str, Any]], target: float) -> tuple[Key | None, Key | None]:
    """From the shards' sketches: (lo, hi) with every row at or before lo surely within the
    budget and every row at or after hi surely beyond it (None: no such key known)."""
    base = sum(r["before"] for r in results)
    entries = []  # (key, shard, cum, next_cum)
    for s, r in enumerate(results):
        pts = r["points"]
        for j, p in enumerate(pts):
            nxt = pts[j + 1][-1] if j + 1 < len(pts) else r["weight"]
            entries.append((tuple(p[:-1]), s, p[-1], nxt))
    if not entries:
        return None, None
    entries.sort(key=lambda e: e[0])
    first = {}
    for s, r in enumerate(results):
        first[s] = r["points"][0][-1] if r["points"] else r["weight"]
    lower = base
    upper = base + sum(first.values())
    cur = {s: 0.0 for s in range(len(results))}
    nxt_of = dict(first)
    lo = hi = None
    for key, s, cum, nxt in entries:
        lower += cum - cur[s]
        cur[s] = cum
        upper += nxt - nxt_of[s]
        nxt_of[s] = nxt
        if upper <= target + 1e-9:
            lo = key
        if hi is None and lower > target + 1e-9:
            hi = key
    return lo, hi


def finish(results: list[dict[str, Any]], target: float, lo: Key | None) -> Key | None:
    """From the collected band rows: the key of the last row within the budget (or `lo`)."""
    base = sum(r["before"] for r in results)
    rows = [row for r in results for row in r["rows"]]
    rows.sort(key=lambda row: tuple(row[:-1]))
    cut = lo
    total = base
    for row in rows:
        total += row[-1]
        if total > target + 1e-9:
            break
        cut = tuple(row[:-1])
    return cut
