"""DATAMASK: joint quality/diversity subset selection by policy-gradient mask learning.

SPEC section 1. One real logit per document defines a Plackett-Luce policy (S draws without
replacement, each a softmax over the remaining documents). Each step draws G masks at once by
Gumbel-top-k, scores them with a set objective lam*f_qua + (1-lam)*f_div, turns the scores into
group-normalised advantages and moves the logits along the exact Plackett-Luce score function.
The readout is the top-S documents by logit.

The corpus is split into random blocks (``split_blocks``) and each block is solved on its own
(``solve_block``): a block is the unit of parallelism (one Spark task / Beam element per block),
and every random number of a block is seeded from (job seed, block id, step), so a block's
result does not depend on which worker solves it or on the other blocks.

Objective reported (and optimised exactly by greedy / ``metric_norm: fixed``): each metric is
standardised against random subsets of the same size drawn from the whole block,

    f(U) = lam * (qbar(U) - m_q) / s_q + (1 - lam) * (div(U) - m_d) / s_d,

so 0 = a random subset and 1 = one random-subset standard deviation better. The default
``metric_norm: fixed`` optimises that objective (standardised at the batch's subset size); with
``metric_norm: group`` the optimiser instead z-scores each metric within the group of G masks
before mixing (SPEC 1.6), which keeps lam meaningful as the policy sharpens but lands 3-6% lower
on the reported objective (benchmarks/results/datamask.md).

Speed (per step, G x batch keys): the Gumbel-top-k keys are formed as the equivalent exponential
race (one log per key), the exact Plackett-Luce gradient runs in linear space (cumsum instead of
logcumsumexp; log space only for logit spreads > 600 nats) with no dense (G, N) temporary in the
weighted form, and the step's batch is gathered once before scoring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from thresher.selectors.base import (
    BudgetParams,
    SelectContext,
    SelectionResult,
    Selector,
    budget_target,
    column_numpy,
)
from thresher.selectors.diversity import DiversityKind, diversity, pool_pairwise_similarity

_INIT_FLOOR = 0.1  # q' = (q - min) / (max - min) + floor, so quality init spans log(1 + 1/floor) nats
_CURVE_POINTS = 100


class DataMaskParams(BudgetParams):
    """DATAMASK parameters (SPEC 1.6). Give either ``quality`` or ``quality_weights``."""

    quality: str | None = Field(None, description="quality score column")
    quality_weights: dict[str, float] | None = Field(
        None, description="quality = weighted sum of these columns (e.g. three classifiers)")
    embedding: str = Field("embedding_vector", description="fixed-size-list<float> embedding column")
    lam: float = Field(0.5, ge=0, le=1, description="weight of quality against diversity")
    diversity: Literal["pws", "fl", "disf"] = "pws"
    group_size: int = Field(128, ge=2, description="masks drawn per step (G)")
    steps: int = Field(400, ge=0, description="optimisation steps per block (paper ~10k)")
    lr: float = Field(4.0, gt=0, description="ascent step size on the logits")
    batch_fraction: float = Field(0.05, gt=0, le=1, description="share of the block updated per step")
    min_batch: int = Field(64, ge=2, description="smallest batch, for small blocks")
    prune_fraction: float = Field(0.4, ge=0, lt=1, description="drop this bottom share by quality first")
    block_size: int = Field(1_000_000, ge=2, description="documents per independently solved block")
    init: Literal["quality", "uniform"] = "quality"
    metric_norm: Literal["group", "fixed"] = Field(
        "fixed", description="group: z-score each metric within the group before mixing; "
                             "fixed: mix the block-standardised objective (exactly what greedy maximises)")
    adv_eps: float = Field(1e-8, gt=0, description="floor of the group std in the advantage")
    fl_reference: int = Field(1024, ge=1, description="facility location: reference docs V per block")
    calibration_draws: int = Field(32, ge=2, description="random subsets used to standardise diversity")
    normalized_tol: float = Field(1e-3, gt=0, description="allowed | ||e|| - 1 | for pws/fl")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads while solving (None: leave as is)")
    readout: Literal["topk"] = "topk"

    @model_validator(mode="after")
    def _one_quality(self) -> "DataMaskParams":
        if (self.quality is None) == (self.quality_weights is None):
            raise ValueError("give exactly one of `quality` (a column) or `quality_weights` ({column: weight})")
        if self.quality_weights is not None and not self.quality_weights:
            raise ValueError("`quality_weights` is empty")
        return self

    def quality_columns(self) -> list[str]:
        return [self.quality] if self.quality is not None else list(self.quality_weights or {})


# --------------------------------------------------------------------------------------------
# pure building blocks


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device; use auto or cpu")
    return torch.device(device)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (job seed, block id, purpose, step)."""
    ss = np.random.SeedSequence([abs(int(p)) for p in parts])
    return int(ss.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))


def make_generator(device: torch.device, *parts: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


# seed purposes, so streams never overlap
_TAG_STEP, _TAG_CALIB, _TAG_REF = 1, 2, 3


def split_blocks(n: int, block_size: int, seed: int) -> list[np.ndarray]:
    """Random, deterministic partition of range(n) into ceil(n / block_size) near-equal blocks.

    Each block is sorted ascending. With one block the result is exactly ``[arange(n)]``.
    """
    if n <= 0:
        return []
    k = max(1, math.ceil(n / block_size))
    if k == 1:
        return [np.arange(n)]
    perm = np.random.default_rng(derive_seed(seed, 0xB10C)).permutation(n)
    return [np.sort(b) for b in np.array_split(perm, k)]


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


# Largest logit spread (max - min, nats) for which the linear-space fast paths are used: every
# exp(L - max) >= e^-600 stays a normal float64 and every 1/Z <= e^600, so sums of up to ~1e45
# terms stay finite. Wider spreads fall back to the log-space forms (same results, slower).
_LINEAR_SPREAD = 600.0


def _spread(logits: torch.Tensor) -> float:
    return float(logits.max() - logits.min()) if logits.numel() else 0.0


def gumbel_topk(logits: torch.Tensor, n_masks: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Draw ``n_masks`` ordered samples of ``size`` items without replacement, P(i) ~ exp(logit).

    Gumbel-top-k: the ``size`` largest of logits + Gumbel(0,1) noise, in descending order, have
    exactly the sequential-softmax (Plackett-Luce) distribution, draw order included. (G, size).

    Implemented as the equivalent exponential race: with E_i = -log U_i ~ Exp(1),
    L_i + Gumbel_i = L_i - log E_i, so the ranking is that of E_i / w_i ascending (w = exp(L - max)),
    i.e. of log(U_i) / w_i descending: one log per key instead of two, and no clamping.
    (For logit spreads above ``_LINEAR_SPREAD`` the keys are formed in log space.)
    """
    u = torch.rand((n_masks, logits.shape[0]), generator=gen, device=logits.device, dtype=logits.dtype)
    tiny = torch.finfo(logits.dtype).tiny
    if _spread(logits) <= _LINEAR_SPREAD:
        inv_w = torch.exp(logits.max() - logits)  # 1 / w, in [1, e^600]
        keys = torch.log(u.clamp_(min=tiny)).mul_(inv_w)  # -E_i / w_i (U = 0 has probability ~2^-53)
    else:
        keys = logits - torch.log(-torch.log(u.clamp_(min=tiny, max=1 - torch.finfo(logits.dtype).eps)))
    return torch.topk(keys, size, dim=1, largest=True, sorted=True).indices


def pl_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """log P(order | logits) of ordered draws without replacement (differentiable; for tests).

    log P = sum_k [ L_{i_k} - logsumexp(L over the items not drawn before k) ].
    """
    order = order.unsqueeze(0) if order.dim() == 1 else order
    out = []
    for row in order:
        mask = torch.ones_like(logits, dtype=torch.bool)
        lp = logits.new_zeros(())
        for i in row.tolist():
            lp = lp + logits[i] - torch.logsumexp(logits[mask], dim=0)
            mask = mask.clone()
            mask[i] = False
        out.append(lp)
    return torch.stack(out)


def pl_grad(logits: torch.Tensor, order: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Exact gradient of the Plackett-Luce log-probability, O(N + S) per mask (SPEC 1.3 (6a)).

    d log P / d L_j = M_j - w_j * sum_{k <= K_j} 1/Z_k, with w = exp(L), K_j the draw position
    of j (or S if j was not drawn) and Z_k the mass left before draw k, formed as
    (unselected mass) + (suffix sum of the drawn weights from k on), never by subtraction.

    Computed in linear space with w = exp(L - max L) when the logit spread is at most
    ``_LINEAR_SPREAD`` (no over/underflow possible there, and only sums of positive terms, so
    no cancellation), otherwise in log space (``pl_grad_log``); both give the same values.

    ``weights`` None: per-mask gradients (G, N). Otherwise sum_j weights_j * grad_j: (N,).
    """
    if _spread(logits) > _LINEAR_SPREAD:
        return pl_grad_log(logits, order, weights)
    order = order.unsqueeze(0) if order.dim() == 1 else order
    g_masks, _ = order.shape
    w = torch.exp(logits - logits.max())  # (N,), max 1
    undrawn = torch.ones((g_masks, logits.shape[0]), dtype=logits.dtype, device=logits.device)
    undrawn.scatter_(1, order, 0.0)
    unsel = undrawn @ w  # (G,) mass never drawn
    ws = w[order]  # (G, S) drawn weights in draw order
    z = torch.cumsum(ws.flip(1), dim=1).flip(1).add_(unsel.unsqueeze(1))  # Z_k
    c = torch.cumsum(z.reciprocal_(), dim=1)  # sum_{t<=k} 1/Z_t
    drawn_part = 1.0 - ws * c  # selected j at position k: 1 - w_j sum_{t<=k} 1/Z_t
    c_last = c[:, -1]
    if weights is None:
        return (undrawn * c_last.unsqueeze(1)).mul_(-w).scatter_(1, order, drawn_part)
    a = weights.to(logits.dtype)
    grad = ((a * c_last) @ undrawn).mul_(-w)  # -w_j sum_{masks not drawing j} a_g C_g
    grad.index_add_(0, order.reshape(-1), (a.unsqueeze(1) * drawn_part).reshape(-1))
    return grad


def pl_grad_log(logits: torch.Tensor, order: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``pl_grad`` in log space (logsumexp / logcumsumexp), safe for any logit spread.

    Every w_j / Z_k <= 1 because j is still in the pool at draw k, so nothing overflows or
    underflows even for extreme logits.
    """
    order = order.unsqueeze(0) if order.dim() == 1 else order
    g_masks, _ = order.shape
    drawn = torch.zeros((g_masks, logits.shape[0]), dtype=torch.bool, device=logits.device)
    drawn.scatter_(1, order, True)
    neg_inf = torch.tensor(-torch.inf, dtype=logits.dtype, device=logits.device)
    log_unsel = torch.logsumexp(torch.where(drawn, neg_inf, logits.unsqueeze(0)), dim=1)  # (G,)
    ls = logits[order]  # (G, S) drawn logits in draw order
    log_suffix = torch.logcumsumexp(ls.flip(1), dim=1).flip(1)
    log_z = torch.logaddexp(log_unsel.unsqueeze(1), log_suffix)
    c = torch.logcumsumexp(-log_z, dim=1)  # log sum_{t<=k} 1/Z_t
    c_last = c[:, -1]
    drawn_part = 1.0 - torch.exp(ls + c)  # selected j at position k: 1 - w_j sum_{t<=k} 1/Z_t
    # -w_j sum_{t<=S} 1/Z_t for the undrawn j (drawn entries are replaced, never used: for them
    # the full sum can overflow because later Z_t no longer contain j)
    unsel = -torch.exp(torch.where(drawn, neg_inf, logits.unsqueeze(0) + c_last.unsqueeze(1)))  # (G, N)
    if weights is None:
        return unsel.scatter_(1, order, drawn_part)
    a = weights.to(logits.dtype)
    grad = a @ unsel
    grad.index_add_(0, order.reshape(-1), (a.unsqueeze(1) * drawn_part).reshape(-1))
    return grad


def zscore(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the group; all zeros when the group's std is below eps."""
    x = x.to(torch.float64)
    sd = x.std(unbiased=False)
    if not torch.isfinite(sd) or sd <= eps:
        return torch.zeros_like(x)
    return (x - x.mean()) / sd


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


@dataclass
class Calibration:
    """Standardisation of each metric against random subsets of one size from the block."""

    lam: float
    kind: DiversityKind
    size: int
    m_q: float
    s_q: float
    m_d: float = 0.0
    s_d: float = 1.0
    ref_emb: torch.Tensor | None = None  # facility-location reference set V

    def combine(self, qbar: torch.Tensor, div: torch.Tensor | None) -> torch.Tensor:
        f = self.lam * (qbar.to(torch.float64) - self.m_q) / self.s_q
        if self.lam < 1:
            assert div is not None
            f = f + (1 - self.lam) * (div.to(torch.float64) - self.m_d) / self.s_d
        return f


def calibrate(quality: torch.Tensor, emb: torch.Tensor, size: int, kind: DiversityKind, lam: float,
              gen: torch.Generator, draws: int = 32, ref_emb: torch.Tensor | None = None) -> Calibration:
    """Mean/std of each metric over random ``size``-subsets of the block (quality: exact)."""
    n = quality.shape[0]
    q = quality.to(torch.float64)
    m_q = float(q.mean())
    s_q = float(q.std(unbiased=False)) * math.sqrt(max(n - size, 0) / max(size * (n - 1), 1))
    cal = Calibration(lam, kind, size, m_q, s_q if s_q > 0 else 1.0, ref_emb=ref_emb)
    if lam < 1:
        keys = torch.rand((draws, n), generator=gen, device=emb.device)
        idx = torch.topk(keys, size, dim=1).indices
        d = diversity(kind, emb, idx, ref_emb).to(torch.float64)
        cal.m_d = float(d.mean())
        sd = float(d.std(unbiased=False))
        cal.s_d = sd if sd > 0 else 1.0
    return cal


def objective(quality: torch.Tensor, emb: torch.Tensor, idx: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """The block-standardised objective of each subset in ``idx`` (G, S) -> (G,)."""
    idx = idx.unsqueeze(0) if idx.dim() == 1 else idx
    qbar = quality[idx].to(torch.float64).mean(dim=1)
    div = diversity(cal.kind, emb, idx, cal.ref_emb) if cal.lam < 1 else None
    return cal.combine(qbar, div)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _downsample(curve: list[float], points: int = _CURVE_POINTS) -> list[float]:
    if len(curve) <= points:
        return [float(x) for x in curve]
    edges = np.linspace(0, len(curve), points + 1).astype(int)
    arr = np.asarray(curve)
    return [float(arr[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]


@dataclass
class BlockResult:
    """What one block returns; indices are positions within the block."""

    selected: np.ndarray  # bool (n,)
    logits: np.ndarray  # float64 (n,), NaN for pruned documents
    order: np.ndarray  # kept documents in readout priority (best first)
    reward_curve: list[float] = field(default_factory=list)  # mean objective of the G masks per step
    objective: float = float("nan")  # objective of the selected subset
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Prepared:
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


def prepare_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: DataMaskParams,
                  seed: int, block_id: int) -> _Prepared:
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
            gen = make_generator(dev, seed, block_id, _TAG_REF)
            ref = torch.topk(torch.rand(n, generator=gen, device=dev), params.fl_reference).indices
            ref_emb = e_all[torch.sort(ref).values]
    return _Prepared(dev, len(quality), kept, q_all, e_all, ref_emb, (e_all * e_all).sum(dim=1))


def block_calibration(prep: _Prepared, size: int, params: DataMaskParams, seed: int, block_id: int) -> Calibration:
    """Calibration of the block objective at subset size ``size`` (same for DATAMASK and greedy)."""
    gen = make_generator(prep.device, seed, block_id, _TAG_CALIB, size)
    return calibrate(prep.q_all, prep.e_all, max(size, 2 if params.lam < 1 else 1), params.diversity,
                     params.lam, gen, params.calibration_draws, prep.ref_emb)


def finish_block(prep: _Prepared, chosen: np.ndarray, order: np.ndarray, logits: np.ndarray,
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


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (no-op for None)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def solve_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: DataMaskParams,
                seed: int, block_id: int = 0) -> BlockResult:
    """Run DATAMASK on one block: prune, init, ``steps`` policy-gradient steps, top-S readout.

    ``quality`` (n,), ``emb`` (n, d) unit-norm rows (for pws/fl), ``n_select`` documents to
    choose. Deterministic given (seed, block_id) on a given device.
    """
    with torch_threads(params.threads), torch.no_grad():
        return _solve_block(quality, emb, n_select, params, seed, block_id)


def _solve_block(quality: np.ndarray, emb: np.ndarray, n_select: int, params: DataMaskParams,
                 seed: int, block_id: int) -> BlockResult:
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
    if not trivial and p.steps > 0:
        ratio = n_select / n_keep
        nb = n_keep if p.batch_fraction >= 1 else min(n_keep, max(math.ceil(p.batch_fraction * n_keep), p.min_batch))
        need = 2 if p.lam < 1 else 1
        sb = min(nb - 1, max(need, round(ratio * nb))) if nb > need else nb
        stats.update(batch=nb, batch_select=sb)
        bcal = block_calibration(prep, sb, p, seed, block_id)
        weights = {"quality": p.lam, "diversity": 1 - p.lam}
        means = []
        for step in range(p.steps):
            gen = make_generator(dev, seed, block_id, _TAG_STEP, step)
            if nb < n_keep:
                pos = torch.randperm(n_keep, generator=gen, device=dev)[:nb]
                rows_b = kept_t[pos]  # block positions of the batch
                lb = L[pos]
            else:
                pos, rows_b, lb = None, kept_t, L
            order = gumbel_topk(lb, p.group_size, sb, gen)  # (G, sb) positions in the batch
            # gather the batch once (nb rows, contiguous) and score the G masks against it
            qbar = prep.q_all[rows_b][order].mean(dim=1)
            if p.lam < 1:
                eb = prep.e_all[rows_b]
                sqb = prep.sq_norms[rows_b] if p.diversity == "pws" else None
                div = diversity(p.diversity, eb, order, prep.ref_emb, sqb)
            else:
                div = None
            f = bcal.combine(qbar, div)
            means.append(f.mean())
            if p.metric_norm == "group":
                adv = group_advantages({"quality": qbar, "diversity": div if div is not None else qbar},
                                       weights, p.adv_eps)
            else:
                adv = zscore(f, p.adv_eps)
            grad = pl_grad(lb, order, adv).mul_(p.lr / p.group_size)
            if pos is None:
                L = L + grad
            else:
                L[pos] += grad
        curve = torch.stack(means).cpu().tolist() if means else []

    lk = L.cpu().numpy()
    order_keep = np.lexsort((kept, -lk))  # logit desc, ties by position
    logits[kept] = lk
    order_block = kept[order_keep]
    chosen = np.sort(order_block[:n_select])
    stats["seconds"] = time.perf_counter() - t0
    return finish_block(prep, chosen, order_block, logits, cal, curve, stats)


# --------------------------------------------------------------------------------------------
# table plumbing


def quality_vector(table: pa.Table, params: DataMaskParams) -> np.ndarray:
    """The quality column, or the weighted sum of the ``quality_weights`` columns."""
    if params.quality is not None:
        return column_numpy(table, params.quality)
    q = np.zeros(table.num_rows)
    for col, wt in (params.quality_weights or {}).items():
        q += wt * column_numpy(table, col)
    return q


def embedding_matrix(table: pa.Table, column: str) -> np.ndarray:
    """A (fixed-size) list<float> column as an (n, d) float32 matrix."""
    if column not in table.column_names:
        raise KeyError(f"embedding column {column!r} not found; available: {sorted(table.column_names)}")
    col = table.column(column)
    if col.null_count:
        raise ValueError(f"embedding column {column!r} has {col.null_count} nulls")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lens = arr.value_lengths().to_numpy(zero_copy_only=False)
        if n and (lens != lens[0]).any():
            raise ValueError(f"embedding column {column!r} has rows of different lengths")
        d = int(lens[0]) if n else 0
        return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, d)
    raise TypeError(f"embedding column {column!r} must be a list of floats, got {arr.type}")


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


class DataMaskSelector(Selector):
    """DATAMASK over the score table: split into blocks, solve each, take the union."""

    name = "datamask"
    Params = DataMaskParams
    logit_column = "datamask_logit"

    def required_columns(self) -> list[str]:
        p: DataMaskParams = self.params  # type: ignore[assignment]
        cols = p.quality_columns() + [p.embedding]
        if p.budget_unit == "tokens":
            cols.append(p.token_column)
        return cols

    def solve(self, quality: np.ndarray, emb: np.ndarray, n_select: int, seed: int, block_id: int) -> BlockResult:
        """Solve one block (overridden by the greedy baseline)."""
        return solve_block(quality, emb, n_select, self.params, seed, block_id)  # type: ignore[arg-type]

    def block_column(self, res: BlockResult) -> np.ndarray:
        return res.logits

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        t0 = time.perf_counter()
        p: DataMaskParams = self.params  # type: ignore[assignment]
        n = table.num_rows
        q = quality_vector(table, p)
        emb = embedding_matrix(table, p.embedding)
        if p.diversity in ("pws", "fl"):
            check_normalized(emb, p.normalized_tol, p.embedding)
        tokens = column_numpy(table, p.token_column) if p.budget_unit == "tokens" else None
        ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
        canonical = np.argsort(ids, kind="stable")  # blocks do not depend on row delivery order
        blocks = [canonical[b] for b in split_blocks(n, p.block_size, ctx.seed)]
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
            extra[rows] = self.block_column(res)
            objs.append(res.objective)
            objs_topk.append(res.stats.get("objective_quality_topk", float("nan")))
            if res.reward_curve:
                curves.append(res.reward_curve)
            secs.append(res.stats.get("seconds", 0.0))

        stats = self._stats(q, emb, selected, sizes, objs, objs_topk, curves)
        stats.update(blocks=len(blocks), seconds=time.perf_counter() - t0, block_seconds=secs,
                     device=str(resolve_device(p.device)), lam=p.lam, diversity=p.diversity)
        if tokens is not None:
            stats["selected_tokens"] = float(tokens[selected].sum())
            stats["token_target"] = float(target)
        col = pa.array(extra, type=pa.float64(), mask=np.isnan(extra))
        return SelectionResult(selected, {self.logit_column: col}, stats)

    @staticmethod
    def _stats(q: np.ndarray, emb: np.ndarray, selected: np.ndarray, sizes: np.ndarray, objs: list[float],
               objs_topk: list[float], curves: list[list[float]]) -> dict[str, Any]:
        k = int(selected.sum())
        topk = np.argsort(-q, kind="stable")[:k]
        w = sizes / max(sizes.sum(), 1)

        def wmean(vals: list[float]) -> float | None:
            v = np.asarray(vals, dtype=np.float64)
            ok = np.isfinite(v)
            return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else None

        stats: dict[str, Any] = {
            "selected_docs": k,
            "objective": wmean(objs),
            "objective_quality_topk": wmean(objs_topk),
            "objective_note": "per-block standardised objective (0 = random subset of the block), "
                              "size-weighted mean over blocks",
            "mean_quality": {"subset": float(q[selected].mean()) if k else None, "pool": float(q.mean()) if len(q) else None,
                             "quality_topk": float(q[topk].mean()) if k else None},
            "mean_pairwise_similarity": {"subset": _finite(pool_pairwise_similarity(emb[selected])),
                                         "pool": _finite(pool_pairwise_similarity(emb)),
                                         "quality_topk": _finite(pool_pairwise_similarity(emb[topk]))},
        }
        if curves:
            m = min(len(c) for c in curves)
            stats["reward_curve"] = [float(x) for x in np.mean([c[:m] for c in curves], axis=0)]
        return stats


def solve_block_task(task: tuple[Any, np.ndarray, np.ndarray, np.ndarray | None, float, int, int]
                     ) -> tuple[np.ndarray, BlockResult]:
    """Solve one block for `DataMaskSelector.select` (module level, so engines can ship it).

    Returns the block's selection flags and its result. With a token budget the optimiser
    works with a document count, estimated as the block's token target over the mean length
    of the documents that survive pruning; the readout then walks the learned priority order
    and takes documents while the block's token target is not exceeded (a block never
    overshoots its share)."""
    selector, qb, eb, tb, budget, seed, bid = task
    p = selector.params
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
