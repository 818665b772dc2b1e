"""Blocks: what every block selector shares (DATAMASK, greedy).

The corpus is split into random blocks (``block_of``: a hash of (seed, id)) and each block is solved on its own
(``BlockSelector.solve``): a block is the unit of parallelism (one Spark task / Beam element per
block), and every random number of a block is seeded from (job seed, block id, purpose tag,
step), so a block's result does not depend on which worker solves it or on the other blocks.
Per block: ``prepare_block`` validates, prunes by quality and moves the block to the device,
``block_calibration`` standardises the objective, ``finish_block`` scores the choice.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from thresher.common.arrays import column_numpy, embedding_matrix
from thresher.common.device import resolve_device
from thresher.common.hashing import hash_group, id_hash
from thresher.common.progress import item_progress
from thresher.common.seeds import torch_generator
from thresher.common.threads import torch_threads
from thresher.selectors.base import Ranking, SelectContext, SelectionResult, Selector, budget_target, priority_order
from thresher.selectors.datamask.objective import Calibration, calibrate, objective
from thresher.selectors.datamask.params import BlockObjectiveParams

# seed purposes, so streams never overlap
TAG_STEP, TAG_CALIB, TAG_REF, TAG_EPOCH = 1, 2, 3, 4
_TAG_SPLIT = 0xB10C
_CURVE_POINTS = 100


def block_count(n: int, block_size: int) -> int:
    """Blocks for n eligible documents: ceil(n / block_size), at least one."""
    return max(1, math.ceil(n / block_size))


def block_of(ids: pa.Array | pa.ChunkedArray, blocks: int, seed: int) -> np.ndarray:
    """The block of each document: a pure function of (seed, id), so any worker computes it
    (near-equal blocks; with one block every document is in block 0)."""
    if blocks <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    return hash_group(id_hash(ids, seed, _TAG_SPLIT), blocks)


def allocate(total: float, weights: np.ndarray, integer: bool = True) -> np.ndarray:
    """Split a budget over blocks in proportion to ``weights`` (largest remainder when integer)."""
    w = np.asarray(weights, dtype=np.float64)
    share = total * w / w.sum() if w.sum() > 0 else np.zeros_like(w)
    if not integer:
        return share
    base = np.floor(share + 1e-9).astype(np.int64)
    rest = int(round(total)) - int(base.sum())
    if rest > 0:
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
    return base


def prune_by_quality(quality: np.ndarray, prune_fraction: float) -> np.ndarray:
    """Indices (ascending) of the documents kept after dropping the bottom share by quality."""
    n = len(quality)
    n_drop = int(math.floor(prune_fraction * n + 1e-9))
    if n_drop == 0:
        return np.arange(n)
    order = np.argsort(-quality, kind="stable")  # best first, ties by position
    return np.sort(order[: n - n_drop])


@dataclass
class BlockResult:
    """What one block returns; indices are positions within the block."""

    selected: np.ndarray  # bool (n,)
    logits: np.ndarray  # float64 (n,), NaN for pruned documents (greedy: the pick rank)
    order: np.ndarray  # kept documents in readout priority (best first)
    reward_curve: list[float] = field(default_factory=list)  # mean objective of the G masks per step
    objective: float = float("nan")  # objective of the selected subset
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedBlock:
    """A validated block on its device: all rows, the kept (unpruned) positions, the FL reference set."""

    device: torch.device
    n: int
    kept: np.ndarray
    q_all: torch.Tensor
    e_all: torch.Tensor
    ref_emb: torch.Tensor | None
    sq_norms: torch.Tensor


def _check_inputs(quality: np.ndarray, emb: np.ndarray, n_select: int, n_keep: int, kind: str) -> None:
    if quality.ndim != 1 or emb.ndim != 2 or emb.shape[0] != quality.shape[0]:
        raise ValueError(f"quality must be (n,) and embeddings (n, d); got {quality.shape} and {emb.shape}")
    if not np.isfinite(quality).all():
        raise ValueError("quality has non-finite values")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings have non-finite values")
    if n_select < 0:
        raise ValueError(f"n_select must be >= 0, got {n_select}")
    if n_select > n_keep:
        raise ValueError(f"budget of {n_select} documents is bigger than the pruned pool of {n_keep} "
                         f"(block of {len(quality)}); lower prune_fraction or the budget")
    if kind in ("pws", "disf") and 0 < n_select < 2:
        raise ValueError(f"diversity {kind!r} needs at least 2 selected documents per block")


def prepare_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: BlockObjectiveParams,
                  seed: int, block_id: int) -> PreparedBlock:
    """Validate, prune, move to the device and pick the facility-location reference set."""
    quality = np.asarray(quality, dtype=np.float64)
    emb = np.asarray(emb, dtype=np.float32)
    kept = prune_by_quality(quality, params.prune_fraction) if quality.ndim == 1 else np.arange(0)
    _check_inputs(quality, emb, n_select, len(kept), params.diversity)
    dev = resolve_device(params.device)
    q_all = torch.from_numpy(quality).to(dev)
    e_all = torch.from_numpy(np.ascontiguousarray(emb)).to(dev)
    ref_emb = None
    if params.diversity == "fl" and params.lam < 1:
        n = len(quality)
        if params.fl_reference >= n:
            ref_emb = e_all
        else:
            gen = torch_generator(dev, seed, block_id, TAG_REF)
            ref = torch.topk(torch.rand(n, generator=gen, device=dev), params.fl_reference).indices
            ref_emb = e_all[torch.sort(ref).values]
    sq_norms = torch.linalg.vector_norm(e_all, dim=1).square_()  # no (n, d) temporary
    return PreparedBlock(dev, len(quality), kept, q_all, e_all, ref_emb, sq_norms)


def block_calibration(prep: PreparedBlock, size: int, params: BlockObjectiveParams, seed: int, block_id: int) -> Calibration:
    """Calibration of the block objective at subset size ``size`` (same for DATAMASK and greedy)."""
    gen = torch_generator(prep.device, seed, block_id, TAG_CALIB, size)
    return calibrate(prep.q_all, prep.e_all, max(size, 2 if params.lam < 1 else 1), params.diversity,
                     params.lam, gen, params.calibration_draws, prep.ref_emb, prep.sq_norms)


def finish_block(prep: PreparedBlock, chosen: np.ndarray, order: np.ndarray, logits: np.ndarray,
                 cal: Calibration | None, curve: list[float], stats: dict[str, Any]) -> BlockResult:
    """Assemble a BlockResult: objective of the choice and of quality top-k for comparison."""
    selected = np.zeros(prep.n, dtype=bool)
    selected[chosen] = True
    obj = float("nan")
    if cal is not None and len(chosen) >= 2:
        dev = prep.device
        obj = float(objective(prep.q_all, prep.e_all, torch.as_tensor(chosen, device=dev), cal)[0])
        q = prep.q_all.cpu().numpy()
        topk = np.argsort(-q, kind="stable")[: len(chosen)]
        stats["objective_quality_topk"] = float(
            objective(prep.q_all, prep.e_all, torch.as_tensor(topk, device=dev), cal)[0])
    return BlockResult(selected, logits, order, _downsample(curve), obj, stats)


def block_solver(fn: Callable[..., BlockResult]) -> Callable[..., BlockResult]:
    """Decorate a block solver `(quality, emb, n_select, params, seed, block_id=0)`: it runs with
    the params' CPU thread count and without autograd."""

    @functools.wraps(fn)
    def solve(quality: np.ndarray, emb: np.ndarray, n_select: int, params: BlockObjectiveParams, seed: int,
              block_id: int = 0) -> BlockResult:
        with torch_threads(params.threads), torch.no_grad():
            return fn(quality, emb, n_select, params, seed, block_id)

    return solve


def _downsample(curve: list[float], points: int = _CURVE_POINTS) -> list[float]:
    if len(curve) <= points:
        return [float(x) for x in curve]
    edges = np.linspace(0, len(curve), points + 1).astype(int)
    arr = np.asarray(curve)
    return [float(arr[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# the selector over blocks


def quality_vector(table: pa.Table, params: BlockObjectiveParams) -> np.ndarray:
    """The quality column, or the weighted sum of the ``quality_weights`` columns."""
    if params.quality is not None:
        return column_numpy(table, params.quality)
    q = np.zeros(table.num_rows)
    for col, wt in (params.quality_weights or {}).items():
        q += wt * column_numpy(table, col)
    return q


def check_normalized(emb: np.ndarray, tol: float, column: str) -> None:
    """pws/fl assume cosine = dot product: every row must have unit L2 norm."""
    if len(emb) == 0:
        return
    norms = np.sqrt(np.einsum("ij,ij->i", emb, emb, dtype=np.float64))
    bad = np.abs(norms - 1) > tol
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"embedding column {column!r} is not L2-normalised ({int(bad.sum())} rows, e.g. row {i} "
                         f"has norm {norms[i]:.4g}); normalise the embeddings (or use diversity: disf)")


class BlockSelector(Selector):
    """A selector over the score table that splits it into blocks, solves each with ``solve``
    (overridden: DATAMASK, greedy) and takes the union.

    Extra column ``result_column``: each block's ``BlockResult.logits`` (null where undefined)."""

    Params: ClassVar[type[BlockObjectiveParams]] = BlockObjectiveParams
    kind = "blocks"
    result_column: ClassVar[str]

    def required_columns(self) -> list[str]:
        p: BlockObjectiveParams = self.params  # type: ignore[assignment]
        cols = p.quality_columns() + [p.embedding]
        if p.budget_unit == "tokens":
            cols.append(p.token_column)
        return cols

    @abstractmethod
    def solve(self, quality: np.ndarray, emb: np.ndarray, n_select: int, seed: int, block_id: int) -> BlockResult:
        """Solve one block: choose ``n_select`` of its rows."""

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        t0 = time.perf_counter()
        p: BlockObjectiveParams = self.params  # type: ignore[assignment]
        n = table.num_rows
        q = quality_vector(table, p)
        emb = embedding_matrix(table, p.embedding)
        if p.diversity in ("pws", "fl"):
            check_normalized(emb, p.normalized_tol, p.embedding)
        tokens = column_numpy(table, p.token_column) if p.budget_unit == "tokens" else None
        ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
        canonical = np.argsort(ids, kind="stable")  # blocks do not depend on row delivery order
        k = block_count(n, p.block_size)
        of = block_of(table.column("id"), k, ctx.seed)[canonical]
        blocks = [canonical[of == b] for b in range(k)]
        target = budget_target(p, ctx)
        sizes = np.array([len(b) for b in blocks])
        if p.budget_unit == "docs":
            per_block = allocate(target, sizes)
        else:
            assert tokens is not None
            per_block = allocate(target, np.array([tokens[b].sum() for b in blocks]), integer=False)

        # blocks are independent: the engine spreads them (local processes, Spark tasks, Beam elements)
        tasks = [(self, q[rows], emb[rows], None if tokens is None else tokens[rows], float(budget), ctx.seed, bid)
                 for bid, (rows, budget) in enumerate(zip(blocks, per_block))]
        results = ctx.parallel_map(solve_block_task, tasks)
        selected = np.zeros(n, dtype=bool)
        extra = np.full(n, np.nan)
        objs, objs_topk, curves, secs = [], [], [], []
        for rows, (local_sel, res) in zip(blocks, results):
            selected[rows] = local_sel
            extra[rows] = res.logits
            objs.append(res.objective)
            objs_topk.append(res.stats.get("objective_quality_topk", float("nan")))
            if res.reward_curve:
                curves.append(res.reward_curve)
            secs.append(res.stats.get("seconds", 0.0))

        top = priority_order(Ranking([(q, True)]), ids)[: int(selected.sum())]
        stats = stats_from_sums(sums(q, emb), sums(q[selected], emb[selected]), sums(q[top], emb[top]), sizes,
                                objs, objs_topk, curves)
        stats.update(blocks=len(blocks), seconds=time.perf_counter() - t0, block_seconds=secs,
                     device=str(resolve_device(p.device)), lam=p.lam, diversity=p.diversity)
        if tokens is not None:
            stats["selected_tokens"] = float(tokens[selected].sum())
            stats["token_target"] = float(target)
        col = pa.array(extra, type=pa.float64(), mask=np.isnan(extra))
        return SelectionResult(selected, {self.result_column: col}, stats)


def sums(q: np.ndarray, emb: np.ndarray) -> dict[str, Any]:
    """Partial sums for the statistics (plain numbers and lists, so they travel from tasks): count,
    sum of quality, sum of embeddings, sum of squared norms."""
    return {"n": int(len(q)), "q": float(np.sum(q)), "e": emb.sum(axis=0, dtype=np.float64).tolist() if len(q) else None,
            "sq": float(np.einsum("ij,ij->", emb, emb, dtype=np.float64)) if len(q) else 0.0}


def _mean_similarity(s: dict[str, Any]) -> float | None:
    """Mean off-diagonal cosine of a set from its sums: (|sum e|^2 - sum |e|^2) / (n (n - 1))."""
    n = s["n"]
    if n < 2 or s["e"] is None:
        return None
    e = np.asarray(s["e"], dtype=np.float64)
    return _finite(float((e @ e - s["sq"]) / (n * (n - 1))))


def stats_from_sums(pool: dict[str, Any], subset: dict[str, Any], topk: dict[str, Any], sizes: np.ndarray,
                    objs: list[float | None], objs_topk: list[float | None], curves: list[list[float]]
                    ) -> dict[str, Any]:
    """The manifest's selector stats from partial sums (`sums`) of the pool, the selection and
    quality top-k of the same size: size-weighted block objectives, mean quality and similarity."""
    w = sizes / max(sizes.sum(), 1)

    def wmean(vals: list[float | None]) -> float | None:
        v = np.array([np.nan if x is None else x for x in vals], dtype=np.float64)
        ok = np.isfinite(v)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else None

    def mean_q(s: dict[str, Any]) -> float | None:
        return s["q"] / s["n"] if s["n"] else None

    stats: dict[str, Any] = {
        "selected_docs": subset["n"],
        "objective": wmean(objs),
        "objective_quality_topk": wmean(objs_topk),
        "objective_note": "per-block standardised objective (0 = random subset of the block), "
                          "size-weighted mean over blocks",
        "mean_quality": {"subset": mean_q(subset), "pool": mean_q(pool), "quality_topk": mean_q(topk)},
        "mean_pairwise_similarity": {"subset": _mean_similarity(subset), "pool": _mean_similarity(pool),
                                     "quality_topk": _mean_similarity(topk)},
    }
    if curves:
        m = min(len(c) for c in curves)
        stats["reward_curve"] = [float(x) for x in np.mean([c[:m] for c in curves], axis=0)]
    return stats


@item_progress("select", "block")  # the engine's bar over blocks solved
def solve_block_task(task: tuple[BlockSelector, np.ndarray, np.ndarray, np.ndarray | None, float, int, int]
                     ) -> tuple[np.ndarray, BlockResult]:
    """Solve one block for `BlockSelector.select` (module level, so engines can ship it).

    Returns the block's selection flags and its result. With a token budget the optimiser
    works with a document count, estimated as the block's token target over the mean length
    of the documents that survive pruning; the readout then walks the learned priority order
    and takes documents while the block's token target is not exceeded (a block never
    overshoots its share)."""
    selector, qb, eb, tb, budget, seed, bid = task
    p: BlockObjectiveParams = selector.params  # type: ignore[assignment]
    if tb is None:
        res = selector.solve(qb, eb, int(budget), seed, bid)
        return np.asarray(res.selected, dtype=bool), res
    kept = prune_by_quality(qb, p.prune_fraction)
    if tb[kept].sum() + 1e-9 < budget:
        raise ValueError(f"token budget {budget:.0f} of block {bid} is bigger than the pruned "
                         f"pool's {tb[kept].sum():.0f} tokens; lower prune_fraction or the budget")
    mean_len = max(float(tb[kept].mean()), 1e-9) if len(kept) else 1.0
    est = int(min(len(kept), max(2, round(budget / mean_len))))
    res = selector.solve(qb, eb, est, seed, bid)
    cum = np.cumsum(tb[res.order])
    local = np.zeros(len(qb), dtype=bool)
    local[res.order[cum <= budget + 1e-9]] = True
    return local, res
