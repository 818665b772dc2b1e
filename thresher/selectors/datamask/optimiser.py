"""The DATAMASK optimiser: policy-gradient mask learning on one block (SPEC 1.3-1.6).

Each step draws G masks per batch from the Plackett-Luce policy, scores them with the
block objective (the batch reward, ``rewards``), turns the scores into group-normalised
advantages and moves the logits along the exact Plackett-Luce score function. Several
disjoint batches are updated together per step (vectorised). The readout is the top-S
documents by logit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from thresher.common.seeds import torch_generator
from thresher.selectors.datamask.blocks import (
    TAG_EPOCH,
    TAG_STEP,
    BlockResult,
    block_calibration,
    block_solver,
    finish_block,
    prepare_block,
)
from thresher.selectors.datamask.params import DataMaskParams
from thresher.selectors.datamask.plackett_luce import draw_masks, pl_grad
from thresher.selectors.datamask.rewards import ContextReadout, batch_metrics, reward_mode

_INIT_FLOOR = 0.1  # q' = (q - min) / (max - min) + floor, so quality init spans log(1 + 1/floor) nats
_CONTEXT_BATCH = 32  # default batch size with the context reward
_CONTEXT_GROUP, _BATCH_REWARD_GROUP = 32, 128  # default G per reward
_BATCH_REWARD_STEPS = 400  # default steps with the batch reward
_BATCH_REWARD_FRACTION = 0.05  # default batch share with the batch reward (paper: 5-10%)
_KEYS_PER_STEP = 1 << 19  # default parallel batches, batch reward: about this many sampling keys (K x G x batch)
_DOCS_PER_STEP = 1 << 15  # default parallel batches, context reward: about this many batch documents per step


def zscore(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the group (the last dimension); all zeros for a group whose std
    is below eps (or not finite)."""
    x = x.to(torch.float64)
    sd = x.std(dim=-1, unbiased=False, keepdim=True)
    ok = torch.isfinite(sd) & (sd > eps)
    return torch.where(ok, (x - x.mean(dim=-1, keepdim=True)) / torch.where(ok, sd, 1.0), 0.0)


def group_advantages(metrics: dict[str, torch.Tensor], weights: dict[str, float], eps: float = 1e-8,
                     normalize_each: bool = True) -> torch.Tensor:
    """Advantages A_j of the G masks from named metrics and their mixing weights.

    ``normalize_each``: z-score every metric within the group before mixing (SPEC 1.6);
    then the mix is group-normalised, A = (f - mean f) / std f. Invariant to adding a
    constant to, or scaling by c > 0, any metric (and so the reward).
    """
    mix = None
    for name, wt in weights.items():
        if wt == 0:
            continue
        m = metrics[name].to(torch.float64)
        term = wt * (zscore(m, eps) if normalize_each else m)
        mix = term if mix is None else mix + term
    if mix is None:
        raise ValueError("all metric weights are zero")
    return zscore(mix, eps)


def batch_docs(n_keep: int, p: DataMaskParams, context: bool) -> int:
    """Documents per batch: ``batch_size`` or ``batch_fraction`` of the pruned block (at least
    ``min_batch``) when given; otherwise 32 documents with the context reward and 5% of the
    block (the paper's) with the batch reward. Never more than the block."""
    if p.batch_size is not None:
        return min(n_keep, p.batch_size)
    if p.batch_fraction is None and context:
        return min(n_keep, _CONTEXT_BATCH)
    frac = p.batch_fraction if p.batch_fraction is not None else _BATCH_REWARD_FRACTION
    if frac >= 1:
        return n_keep
    return min(n_keep, max(math.ceil(frac * n_keep), p.min_batch))


def batch_schedule(n_keep: int, nb: int, per_step: int, updates: int, seed: int, block_id: int,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """Steps of at most ``per_step`` disjoint batches of ``nb`` positions, ``updates`` batches in all:
    (K, nb) per step. Batches are consecutive slices of a fresh random permutation per epoch, so
    every document takes part once per pass (the tail of an epoch that does not fill a batch waits
    for the next permutation); a step never spans two epochs, so its batches never overlap."""
    m = n_keep // nb
    done, epoch = 0, 0
    while done < updates:
        gen = torch_generator(device, seed, block_id, TAG_EPOCH, epoch)
        perm = torch.randperm(n_keep, generator=gen, device=device)[: m * nb].view(m, nb)
        for a in range(0, m, per_step):
            take = min(per_step, m - a, updates - done)
            yield perm[a:a + take]
            done += take
            if done >= updates:
                return
        epoch += 1


@block_solver
def solve_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: DataMaskParams,
                seed: int, block_id: int = 0) -> BlockResult:
    """Run DATAMASK on one block: prune, init, ``steps`` policy-gradient steps, top-S readout.

    ``quality`` (n,), ``emb`` (n, d) unit-norm rows (for pws/fl), ``n_select`` documents to
    choose. Deterministic given (seed, block_id) on a given device.
    """
    t0 = time.perf_counter()
    p = params
    prep = prepare_block(quality, emb, n_select, p, seed, block_id)
    dev, kept = prep.device, prep.kept
    n_keep = len(kept)
    logits = np.full(prep.n, np.nan)
    cal = block_calibration(prep, n_select, p, seed, block_id) if n_select >= 1 else None
    stats: dict[str, Any] = {"n": prep.n, "n_kept": n_keep, "n_select": n_select}
    kept_t = torch.from_numpy(kept).to(dev)
    q_keep = prep.q_all[kept_t]
    if p.init == "quality":
        lo, hi = float(q_keep.min()), float(q_keep.max())
        span = hi - lo if hi > lo else 1.0
        L = torch.log((q_keep - lo) / span + _INIT_FLOOR)
    else:
        L = torch.zeros(n_keep, dtype=torch.float64, device=dev)

    curve: list[float] = []
    trivial = n_select == 0 or n_select == n_keep
    if not trivial and (p.steps is None or p.steps > 0):
        ratio = n_select / n_keep
        context = reward_mode(p) == "context"
        nb = batch_docs(n_keep, p, context)
        need = 2 if p.lam < 1 else 1
        sb = min(nb - 1, max(need, round(ratio * nb))) if nb > need else nb
        n_masks = p.group_size or (_CONTEXT_GROUP if context else _BATCH_REWARD_GROUP)
        auto_par = _DOCS_PER_STEP // nb if context else _KEYS_PER_STEP // (n_masks * nb)
        n_par = max(1, min(p.parallel_batches or max(1, auto_par), n_keep // nb))
        updates = p.steps if p.steps is not None else (
            math.ceil(p.epochs * n_keep / nb) if context else _BATCH_REWARD_STEPS)
        stats.update(batch=nb, batch_select=sb, group_size=n_masks, parallel_batches=n_par, updates=updates,
                     batch_reward="context" if context else "batch")
        weights = {"quality": p.lam, "diversity": 1 - p.lam}
        means = []
        readout = ContextReadout(prep, kept_t, n_select) if context and nb < n_keep else None
        bcal = None if readout is not None else block_calibration(prep, sb, p, seed, block_id)
        if nb < n_keep:
            schedule: Iterator[torch.Tensor] = batch_schedule(n_keep, nb, n_par, updates, seed, block_id, dev)
        else:
            schedule = iter([torch.arange(n_keep, device=dev).unsqueeze(0)] * updates)
        for step, pos in enumerate(schedule):  # pos: (K, nb) disjoint batches
            gen = torch_generator(dev, seed, block_id, TAG_STEP, step)
            lb = L[pos]
            if readout is not None:
                readout.refresh(L)
            order = draw_masks(lb, n_masks, sb, gen, p.sampler)  # (K, G, sb) positions in each batch
            lb32 = lb.to(torch.float32)  # the gradient in float32; L accumulates in float64
            if readout is not None:
                assert cal is not None
                qbar, div = readout.metrics(pos, order, p.lam < 1)
                f = cal.combine(qbar, div)
            else:
                qbar, div = batch_metrics(prep, kept_t[pos], order, p)
                assert bcal is not None
                f = bcal.combine(qbar, div)
            means.append(f.mean())
            if p.metric_norm == "group":
                adv = group_advantages({"quality": qbar, "diversity": div if div is not None else qbar},
                                       weights, p.adv_eps)
            else:
                adv = zscore(f, p.adv_eps)
            step_grad = pl_grad(lb32, order, adv).to(L.dtype).mul_(p.lr / n_masks)
            L.index_add_(0, pos.reshape(-1), step_grad.reshape(-1))  # the batches of a step are disjoint
        curve = torch.stack(means).cpu().tolist() if means else []
        stats["steps"] = len(means)

    lk = L.cpu().numpy()
    order_keep = np.lexsort((kept, -lk))  # logit desc, ties by position
    logits[kept] = lk
    order_block = kept[order_keep]
    chosen = np.sort(order_block[:n_select])
    stats["seconds"] = time.perf_counter() - t0
    return finish_block(prep, chosen, order_block, logits, cal, curve, stats)
