"""Greedy baseline on the DATAMASK objective, and single-score top-k helpers.

``greedy_block`` maximises exactly the block-standardised objective that DATAMASK reports
(``thresher.selectors.datamask.objective``), over the same pruned pool and blocks:

- ``pws``: plain greedy (the pairwise term is not submodular once similarities can be negative,
  so lazy evaluation would be unsafe), vectorised: the gain of x is a*q_x - b*e_x.s where s is
  the sum of the chosen embeddings, kept up to date with one matrix-vector product per pick:
  O(N.S.d) in all.
- ``fl``: lazy greedy (modular quality + facility location is submodular), over a precomputed
  (N, |V|) similarity table.
- ``disf``: plain greedy; each step scores every candidate's effect on the correlation matrix
  with closed-form rank-2 updates, O(N.d^2) per step, O(N.S.d^2) in all (the slow baseline of
  the paper's speed comparison).
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import numpy as np
import torch

from thresher.selectors.datamask.blocks import (
    BlockResult,
    BlockSelector,
    block_calibration,
    block_solver,
    finish_block,
    prepare_block,
)
from thresher.selectors.datamask.params import BlockObjectiveParams


class GreedyParams(BlockObjectiveParams):
    """Greedy's parameters: the block objective and its blocks, as DATAMASK's (no optimiser knobs)."""


def quality_topk(quality: np.ndarray, n_select: int) -> np.ndarray:
    """Indices of the ``n_select`` best documents by quality (ties by position)."""
    return np.sort(np.argsort(-np.asarray(quality), kind="stable")[:n_select])


def diversity_topk(emb: np.ndarray, n_select: int) -> np.ndarray:
    """Indices of the ``n_select`` documents least similar to the pool on average.

    A per-document diversity score: e_i . mean(e) is document i's mean cosine similarity to
    the pool (unit rows), so the lowest are the most atypical; O(N.d).
    """
    e = np.asarray(emb, dtype=np.float64)
    sim = e @ e.mean(axis=0)
    return np.sort(np.argsort(sim, kind="stable")[:n_select])


def _greedy_pws(q: torch.Tensor, e: torch.Tensor, s: int, a: float, b: float) -> list[int]:
    n = q.shape[0]
    c = torch.zeros(n, dtype=torch.float64, device=e.device)  # c_i = e_i . (sum of chosen)
    taken = torch.zeros(n, dtype=torch.bool, device=e.device)
    base = a * q.to(torch.float64)
    picks: list[int] = []
    neg_inf = torch.tensor(-torch.inf, dtype=torch.float64, device=e.device)
    for _ in range(s):
        gain = torch.where(taken, neg_inf, base - b * c)
        x = int(torch.argmax(gain))
        picks.append(x)
        taken[x] = True
        c += (e @ e[x]).to(torch.float64)
    return picks


def _greedy_fl(q: np.ndarray, sim: np.ndarray, s: int, a: float, b: float) -> list[int]:
    """Lazy greedy on a*q_x + b*mean_v max(sim[x, v], best_v); best starts at -1 (cosine floor)."""
    n, v = sim.shape
    best = np.full(v, -1.0)
    heap = [(-(a * q[i] + b * float(np.maximum(sim[i] - best, 0).mean())), i, 0) for i in range(n)]
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < s and heap:
        neg, i, stamp = heapq.heappop(heap)
        if stamp == len(picks):
            picks.append(i)
            best = np.maximum(best, sim[i])
            continue
        g = a * q[i] + b * float(np.maximum(sim[i] - best, 0).mean())
        heapq.heappush(heap, (-g, i, len(picks)))
    return picks


def disf_offdiag_after_adding(x: torch.Tensor, k: int, s1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal correlations of U + {x} for every candidate row of ``x`` (c, d).

    U has k rows with sums s1 (d,) and second moments m2 (d, d). With k' = k + 1 and
    T = k' * cov(U + x) = P + x y^T + y x^T, where P = m2 - s1 s1^T / k' and
    y = (1 - 1/k') x / 2 - s1 / k', and D = diag(1 / T_aa):
    sum_ab T_ab^2 D_a D_b = u^T (P o P) u + 4 (u o y)^T P (u o x) + 2 (x.Dy)^2 + 2 (x.Dx)(y.Dy).
    """
    kp = k + 1
    p = m2 - torch.outer(s1, s1) / kp
    y = (1 - 1 / kp) * x / 2 - s1 / kp
    var = torch.diagonal(p) + 2 * x * y
    tiny = 1e-12 * kp
    u = torch.where(var > tiny, 1.0 / var.clamp_min(tiny), torch.zeros_like(var))
    total = ((u @ (p * p)) * u).sum(1) + 4 * (((u * y) @ p) * (u * x)).sum(1)
    xdy = (x * u * y).sum(1)
    total = total + 2 * xdy ** 2 + 2 * (x * u * x).sum(1) * (y * u * y).sum(1)
    return total - (var > tiny).sum(1).to(total.dtype)


def _greedy_disf(q: torch.Tensor, e: torch.Tensor, s: int, a: float, b: float, chunk: int = 8192) -> list[int]:
    n, d = e.shape
    e64 = e.to(torch.float64)
    base = a * q.to(torch.float64)
    taken = torch.zeros(n, dtype=torch.bool, device=e.device)
    s1 = torch.zeros(d, dtype=torch.float64, device=e.device)
    m2 = torch.zeros((d, d), dtype=torch.float64, device=e.device)
    picks: list[int] = []
    for k in range(s):
        if k == 0:  # one document has no correlation matrix: start from the best quality
            gain = base.clone()
        else:
            off = torch.cat([disf_offdiag_after_adding(e64[i:i + chunk], k, s1, m2) for i in range(0, n, chunk)])
            gain = base - b * off
        gain[taken] = -torch.inf
        x = int(torch.argmax(gain))
        picks.append(x)
        taken[x] = True
        s1 += e64[x]
        m2 += torch.outer(e64[x], e64[x])
    return picks


@block_solver
def greedy_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: BlockObjectiveParams,
                 seed: int, block_id: int = 0) -> BlockResult:
    """Greedy maximisation of the block objective (same pruning and calibration as DATAMASK)."""
    t0 = time.perf_counter()
    p = params
    prep = prepare_block(quality, emb, n_select, p, seed, block_id)
    kept = prep.kept
    stats: dict[str, Any] = {"n": prep.n, "n_kept": len(kept), "n_select": n_select}
    q_keep_np = prep.q_all.cpu().numpy()[kept]
    cal = block_calibration(prep, n_select, p, seed, block_id) if n_select >= 1 else None
    if n_select == 0:
        picks: list[int] = []
    elif p.lam >= 1 or n_select == len(kept):
        picks = list(np.argsort(-q_keep_np, kind="stable")[:n_select])
    else:
        assert cal is not None
        kept_t = torch.from_numpy(kept).to(prep.device)
        qk, ek = prep.q_all[kept_t], prep.e_all[kept_t]
        a = p.lam / (n_select * cal.s_q)
        if p.diversity == "pws":
            b = (1 - p.lam) * 2 / (n_select * (n_select - 1) * cal.s_d)
            picks = _greedy_pws(qk, ek, n_select, a, b)
        elif p.diversity == "fl":
            assert cal.ref_emb is not None
            sim = (ek @ cal.ref_emb.T).cpu().numpy().astype(np.float64)
            picks = _greedy_fl(q_keep_np, sim, n_select, a, (1 - p.lam) / cal.s_d)
        else:
            d = ek.shape[1]
            picks = _greedy_disf(qk, ek, n_select, a, (1 - p.lam) / (cal.s_d * d * (d - 1)))
    picks_arr = np.asarray(picks, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(kept)), picks_arr)
    rest = rest[np.argsort(-q_keep_np[rest], kind="stable")]
    order_block = kept[np.concatenate([picks_arr, rest])]
    rank = np.full(prep.n, np.nan)
    rank[kept[picks_arr]] = np.arange(len(picks_arr))
    stats["seconds"] = time.perf_counter() - t0
    return finish_block(prep, np.sort(kept[picks_arr]), order_block, rank, cal, [], stats)


class GreedySelector(BlockSelector):
    """Greedy on the DATAMASK objective, block by block.

    Extra column ``greedy_rank``: the pick order within the block (null when not picked).
    """

    name = "greedy"
    Params = GreedyParams
    result_column = "greedy_rank"

    def solve(self, quality: np.ndarray, emb: np.ndarray, n_select: int, seed: int, block_id: int) -> BlockResult:
        return greedy_block(quality, emb, n_select, self.params, seed, block_id)  # type: ignore[arg-type]
