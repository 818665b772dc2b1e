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

Batch reward (``batch_reward``; SPEC 1.5.4 leaves open what a batch mask is scored on). With
``batch`` (the reference loop's reading) a mask drawn in a batch is scored on the batch subset
alone, so diversity only sees the few documents drawn with it. With ``context`` (default for
PWS) it is scored as the block subset it completes: U_g plus the current readout (top-S by
logit) outside the batch, i.e. exactly the block objective the readout is judged on. A
document's reward then carries its interaction with the whole selection, which lets batches be
small (32 documents, G = 32) and many (vectorised ``parallel_batches`` per step); with PWS the
rest of the block enters as one summed embedding, so the cost per mask stays small. It
reaches 0.98-0.99 of greedy's objective where the batch reward reached 0.87-0.93
(benchmarks/results/datamask.md).

Speed. Sampling: Gumbel-top-k forms its keys as the equivalent exponential race (one log per
key); when a batch draws only a few documents (the context reward's 3 of 32) the same race is
run lazily instead (``sequential_draws``: one uniform per draw, no G x batch keys, no top-k).
Reward: one batched Gram product per step over the batches, extended by a row holding the
readout's summed embedding, gives every mask's PWS from gathered entries. Gradient: the exact
Plackett-Luce gradient runs in linear space (cumsum instead of logcumsumexp; log space only
for wide logit spreads) with no dense (G, N) temporary in the weighted form.
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
from thresher.selectors.diversity import DiversityKind, diversity, pool_pairwise_similarity, pws_subset_moments

_INIT_FLOOR = 0.1  # q' = (q - min) / (max - min) + floor, so quality init spans log(1 + 1/floor) nats
_CURVE_POINTS = 100
_CONTEXT_BATCH = 32  # default batch size with the context reward
_CONTEXT_GROUP, _BATCH_REWARD_GROUP = 32, 128  # default G per reward
_BATCH_REWARD_STEPS = 400  # default steps with the batch reward
_BATCH_REWARD_FRACTION = 0.05  # default batch share with the batch reward (paper: 5-10%)
_KEYS_PER_STEP = 1 << 19  # default parallel batches, batch reward: about this many sampling keys (K x G x batch)
_DOCS_PER_STEP = 1 << 15  # default parallel batches, context reward: about this many batch documents per step


class DataMaskParams(BudgetParams):
    """DATAMASK parameters (SPEC 1.6). Give either ``quality`` or ``quality_weights``."""

    quality: str | None = Field(None, description="quality score column")
    quality_weights: dict[str, float] | None = Field(
        None, description="quality = weighted sum of these columns (e.g. three classifiers)")
    embedding: str = Field("embedding_vector", description="fixed-size-list<float> embedding column")
    lam: float = Field(0.5, ge=0, le=1, description="weight of quality against diversity")
    diversity: Literal["pws", "fl", "disf"] = "pws"
    group_size: int | None = Field(None, ge=2, description="masks drawn per batch (G); None: 32 with the context "
                                                           "reward, 128 (the paper's) with the batch reward")
    steps: int | None = Field(None, ge=0, description="batch updates per block (paper ~10k); None: `epochs` passes "
                                                       "over the pruned block with the context reward, 400 with the batch reward")
    epochs: float = Field(10.0, gt=0, description="passes over the pruned block when `steps` is None (context reward)")
    lr: float = Field(4.0, gt=0, description="ascent step size on the logits")
    batch_fraction: float | None = Field(None, gt=0, le=1, description="share of the pruned block per batch "
                                                                   "(None: see batch_size)")
    min_batch: int = Field(64, ge=2, description="smallest batch, for small blocks")
    prune_fraction: float = Field(0.4, ge=0, lt=1, description="drop this bottom share by quality first")
    block_size: int = Field(1_000_000, ge=2, description="documents per independently solved block (memory: the "
                                                          "block's embeddings, plus a copy of the kept ones with the "
                                                          "context reward: about 1.6 x block x dim x 4 bytes)")
    init: Literal["quality", "uniform"] = "quality"
    metric_norm: Literal["group", "fixed"] = Field(
        "fixed", description="group: z-score each metric within the group before mixing; "
                             "fixed: mix the block-standardised objective (exactly what greedy maximises)")
    adv_eps: float = Field(1e-8, gt=0, description="floor of the group std in the advantage")
    fl_reference: int = Field(1024, ge=1, description="facility location: reference docs V per block")
    calibration_draws: int = Field(32, ge=2, description="random subsets used to standardise fl/disf diversity "
                                                           "(pws: exact moments, no subsets)")
    normalized_tol: float = Field(1e-3, gt=0, description="allowed | ||e|| - 1 | for pws/fl")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads while solving (None: leave as is)")
    readout: Literal["topk"] = "topk"
    sampler: Literal["auto", "gumbel"] = Field(
        "auto", description="gumbel: Gumbel-top-k for every batch; auto: sequential draws (the same race, run "
                            "lazily) where a batch draws at most 8 documents with a logit spread <= 16 nats")
    batch_reward: Literal["auto", "context", "batch"] = Field(
        "auto", description="context: score a batch mask as the block subset it completes (U + current readout "
                            "outside the batch; pws only); batch: the batch subset alone; auto: context for pws")
    batch_size: int | None = Field(None, ge=2, description="documents per batch; with batch_fraction also None: "
                                                          "32 with the context reward, 5% of the block with the batch reward")
    parallel_batches: int | None = Field(None, ge=1, description="disjoint batches updated together, vectorised "
                                                                 "(None: about 2^15 batch documents per step with the "
                                                                 "context reward, 2^19 sampling keys with the batch reward)")

    @model_validator(mode="after")
    def _one_quality(self) -> "DataMaskParams":
        if (self.quality is None) == (self.quality_weights is None):
            raise ValueError("give exactly one of `quality` (a column) or `quality_weights` ({column: weight})")
        if self.quality_weights is not None and not self.quality_weights:
            raise ValueError("`quality_weights` is empty")
        if self.batch_reward == "context" and self.diversity != "pws" and self.lam < 1:
            raise ValueError(f"batch_reward: context is implemented for diversity: pws only (got {self.diversity!r}); "
                             "use batch_reward: batch or auto")
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
_TAG_STEP, _TAG_CALIB, _TAG_REF, _TAG_EPOCH = 1, 2, 3, 4


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
_LINEAR_SPREAD = 600.0  # float64: exp(600) and 745 * exp(600) stay finite
_LINEAR_SPREAD_F32 = 80.0  # float32: 88 * exp(80) < 3.4e38


def _linear_spread(dtype: torch.dtype) -> float:
    """Largest logit spread the linear-space sampler and gradient handle in ``dtype``."""
    return _LINEAR_SPREAD if dtype == torch.float64 else _LINEAR_SPREAD_F32


def _spread(logits: torch.Tensor) -> float:
    return float(logits.max() - logits.min()) if logits.numel() else 0.0


def _row_spread(logits: torch.Tensor) -> float:
    """Largest max - min over the last dimension (0 for empty)."""
    if not logits.numel():
        return 0.0
    return float((logits.amax(dim=-1) - logits.amin(dim=-1)).max())


def gumbel_topk(logits: torch.Tensor, n_masks: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Draw ``n_masks`` ordered samples of ``size`` items without replacement, P(i) ~ exp(logit).

    Gumbel-top-k: the ``size`` largest of logits + Gumbel(0,1) noise, in descending order, have
    exactly the sequential-softmax (Plackett-Luce) distribution, draw order included.
    ``logits`` (n,) -> (G, size); or a stack of independent batches (B, n) -> (B, G, size).

    Implemented as the equivalent exponential race: with E_i = -log U_i ~ Exp(1),
    L_i + Gumbel_i = L_i - log E_i, so the ranking is that of E_i / w_i ascending (w = exp(L - max)),
    i.e. of log(U_i) / w_i descending: one log per key instead of two, and no clamping.
    (For logit spreads above ``_LINEAR_SPREAD`` the keys are formed in log space.)
    """
    single = logits.dim() == 1
    lg = logits.unsqueeze(0) if single else logits  # (B, n)
    u = torch.rand((lg.shape[0], n_masks, lg.shape[1]), generator=gen, device=lg.device, dtype=lg.dtype)
    tiny = torch.finfo(lg.dtype).tiny
    if _row_spread(lg) <= _linear_spread(lg.dtype):
        inv_w = torch.exp(lg.amax(dim=1, keepdim=True) - lg).unsqueeze(1)  # 1 / w, in [1, e^600]
        keys = torch.log(u.clamp_(min=tiny)).mul_(inv_w)  # -E_i / w_i (U = 0 has probability ~2^-53)
    else:
        keys = lg.unsqueeze(1) - torch.log(-torch.log(u.clamp_(min=tiny, max=1 - torch.finfo(lg.dtype).eps)))
    order = torch.topk(keys, size, dim=2, largest=True, sorted=True).indices
    return order[0] if single else order


def sequential_draws(logits: torch.Tensor, n_masks: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """The Plackett-Luce draws of ``gumbel_topk`` made one draw at a time: (B, n) -> (B, G, size).

    This is the same exponential race run lazily: by memorylessness the race's next finisher
    is a softmax draw over the documents still running, so each draw is one uniform mapped
    through the batch's cumulative weights with the drawn documents' intervals skipped. It
    costs O(n + G * size^2) per batch instead of G * n keys and a top-k, which pays for the
    few-draws-per-batch case (the context reward's 3 of 32).

    Exact up to float64 rounding of the cumulative weights only while every weight stays
    resolvable against the batch's total: callers keep it to rows with a logit spread of at
    most ``_SEQUENTIAL_SPREAD`` (``draw_masks``).
    """
    b, n = logits.shape
    lg = logits.to(torch.float64)
    w = torch.exp(lg - lg.amax(dim=1, keepdim=True))  # (B, n), max 1
    cdf = torch.cumsum(w, dim=1)
    start = cdf - w  # left edge of each document's interval
    u = torch.rand((size, b, n_masks), generator=gen, dtype=torch.float64, device=logits.device)
    picks = torch.empty((size, b, n_masks), dtype=torch.long, device=logits.device)
    s_d, w_d = torch.empty_like(u), torch.empty_like(u)  # drawn intervals: left edge, width
    left = cdf[:, -1:].expand(b, n_masks).contiguous()  # mass still in the race, per mask
    for t in range(size):
        x = u[t].mul_(left)  # a point in the remaining mass, laid out without the drawn intervals
        y = x
        for _ in range(t):  # back onto the full layout: y = x + widths of the drawn intervals below y
            y = x + (w_d[:t] * (s_d[:t] <= y)).sum(dim=0)  # (a fixed point, reached in <= t rounds)
        pick = torch.searchsorted(cdf, y, right=True).clamp_(max=n - 1)
        picks[t] = pick
        torch.gather(w, 1, pick, out=w_d[t])
        torch.gather(start, 1, pick, out=s_d[t])
        left.sub_(w_d[t]).clamp_(min=0.0)
    return picks.permute(1, 2, 0)


# Largest logit spread (nats) for sequential draws: every weight is then >= e^-16 / n of the
# batch's mass, so float64 rounding of the cumulative sums moves a draw probability by < ~1e-7
# relative (the float32 Gumbel keys' own precision). After training, batches of the benchmark
# have spreads of 9-13 nats; wider rows use Gumbel-top-k.
_SEQUENTIAL_SPREAD = 16.0
_SEQUENTIAL_MAX_DRAWS = 8  # sequential draws loop over the draws: only for a few per batch


def draw_masks(logits: torch.Tensor, n_masks: int, size: int, gen: torch.Generator,
               sampler: str = "auto") -> torch.Tensor:
    """Ordered Plackett-Luce draws for a stack of batches: logits (B, n) -> (B, G, size).

    ``gumbel``: Gumbel-top-k on every batch (float32 keys). ``auto``: ``sequential_draws`` for
    up to ``_SEQUENTIAL_MAX_DRAWS`` draws per mask on the batches whose logit spread is at most
    ``_SEQUENTIAL_SPREAD``, Gumbel-top-k for the rest. Both have the same distribution.
    """
    if sampler == "gumbel" or size > _SEQUENTIAL_MAX_DRAWS:
        return gumbel_topk(logits.to(torch.float32), n_masks, size, gen)
    spread = logits.amax(dim=1) - logits.amin(dim=1)
    wide = spread > _SEQUENTIAL_SPREAD
    if not bool(wide.any()):
        return sequential_draws(logits, n_masks, size, gen)
    order = torch.empty((logits.shape[0], n_masks, size), dtype=torch.long, device=logits.device)
    narrow = ~wide
    if bool(narrow.any()):
        order[narrow] = sequential_draws(logits[narrow], n_masks, size, gen)
    order[wide] = gumbel_topk(logits[wide].to(torch.float32), n_masks, size, gen)
    return order


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

    Shapes: ``logits`` (N,), ``order`` (G, S) or (S,); ``weights`` None gives per-mask gradients
    (G, N), otherwise sum_g weights_g * grad_g (N,). A stack of independent batches works the
    same with a leading dimension: logits (B, N), order (B, G, S), weights (B, G) -> (B, N).
    """
    if logits.dim() == 1:
        order = order.unsqueeze(0) if order.dim() == 1 else order
        out = pl_grad(logits.unsqueeze(0), order.unsqueeze(0), None if weights is None else weights.unsqueeze(0))
        return out[0]
    if _row_spread(logits) > _linear_spread(logits.dtype):
        return torch.stack([pl_grad_log(lg, od, None if weights is None else wt)
                            for lg, od, wt in zip(logits, order, weights if weights is not None else [None] * len(order))])
    n_b, g_masks, _ = order.shape
    w = torch.exp(logits - logits.amax(dim=1, keepdim=True))  # (B, N), max 1
    undrawn = torch.ones((n_b, g_masks, logits.shape[1]), dtype=logits.dtype, device=logits.device)
    undrawn.scatter_(2, order, 0.0)
    unsel = torch.bmm(undrawn, w.unsqueeze(2)).squeeze(2)  # (B, G) mass never drawn
    ws = torch.gather(w.unsqueeze(1).expand(-1, g_masks, -1), 2, order)  # (B, G, S) drawn weights in draw order
    z = torch.cumsum(ws.flip(2), dim=2).flip(2).add_(unsel.unsqueeze(2))  # Z_k
    c = torch.cumsum(z.reciprocal_(), dim=2)  # sum_{t<=k} 1/Z_t
    drawn_part = 1.0 - ws * c  # selected j at position k: 1 - w_j sum_{t<=k} 1/Z_t
    c_last = c[:, :, -1]
    if weights is None:
        return (undrawn * c_last.unsqueeze(2)).mul_(-w.unsqueeze(1)).scatter_(2, order, drawn_part)
    a = weights.to(logits.dtype)
    grad = torch.bmm((a * c_last).unsqueeze(1), undrawn).squeeze(1).mul_(-w)  # -w_j sum_{g not drawing j} a_g C_g
    grad.scatter_add_(1, order.reshape(n_b, -1), (a.unsqueeze(2) * drawn_part).reshape(n_b, -1))
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
    sq_norms: torch.Tensor | None = None  # ||e_i||^2 of every block row (PWS), computed once

    def combine(self, qbar: torch.Tensor, div: torch.Tensor | None) -> torch.Tensor:
        f = self.lam * (qbar.to(torch.float64) - self.m_q) / self.s_q
        if self.lam < 1:
            assert div is not None
            f = f + (1 - self.lam) * (div.to(torch.float64) - self.m_d) / self.s_d
        return f


def calibrate(quality: torch.Tensor, emb: torch.Tensor, size: int, kind: DiversityKind, lam: float,
              gen: torch.Generator, draws: int = 32, ref_emb: torch.Tensor | None = None,
              sq_norms: torch.Tensor | None = None) -> Calibration:
    """Mean/std of each metric over random ``size``-subsets of the block.

    Quality and PWS: exact moments (closed forms); facility location and DiSF: estimated from
    ``draws`` random subsets.
    """
    n = quality.shape[0]
    q = quality.to(torch.float64)
    m_q = float(q.mean())
    s_q = float(q.std(unbiased=False)) * math.sqrt(max(n - size, 0) / max(size * (n - 1), 1))
    cal = Calibration(lam, kind, size, m_q, s_q if s_q > 0 else 1.0, ref_emb=ref_emb, sq_norms=sq_norms)
    if lam < 1 and kind == "pws":
        mean_sim, sd = pws_subset_moments(emb, size, sq_norms, gen)
        cal.m_d, cal.s_d = -mean_sim, (sd if sd > 0 else 1.0)  # diversity = -similarity
    elif lam < 1:
        idx = torch.stack([torch.randperm(n, generator=gen, device=emb.device)[:size] for _ in range(draws)])
        d = diversity(kind, emb, idx, ref_emb, sq_norms).to(torch.float64)
        cal.m_d = float(d.mean())
        sd = float(d.std(unbiased=False))
        cal.s_d = sd if sd > 0 else 1.0
    return cal


def objective(quality: torch.Tensor, emb: torch.Tensor, idx: torch.Tensor, cal: Calibration) -> torch.Tensor:
    """The block-standardised objective of each subset in ``idx`` (G, S) -> (G,)."""
    idx = idx.unsqueeze(0) if idx.dim() == 1 else idx
    qbar = quality[idx].to(torch.float64).mean(dim=1)
    div = diversity(cal.kind, emb, idx, cal.ref_emb, cal.sq_norms) if cal.lam < 1 else None
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
    sq_norms = torch.linalg.vector_norm(e_all, dim=1).square_()  # no (n, d) temporary
    return _Prepared(dev, len(quality), kept, q_all, e_all, ref_emb, sq_norms)


def block_calibration(prep: _Prepared, size: int, params: DataMaskParams, seed: int, block_id: int) -> Calibration:
    """Calibration of the block objective at subset size ``size`` (same for DATAMASK and greedy)."""
    gen = make_generator(prep.device, seed, block_id, _TAG_CALIB, size)
    return calibrate(prep.q_all, prep.e_all, max(size, 2 if params.lam < 1 else 1), params.diversity,
                     params.lam, gen, params.calibration_draws, prep.ref_emb, prep.sq_norms)


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


class ContextReadout:
    """The current readout R (top-S by logit) as sums, for the context batch reward.

    ``batch_reward: context`` scores a mask U_g drawn in a batch as the block subset it would
    produce: U_g plus (R minus the batch). A batch document is then judged against the whole
    block's current selection, not only against the few documents drawn with it (the batch
    reward); this is what lets small batches carry the block's diversity signal. R is taken
    afresh at every step. PWS only: the rest of the block enters through one summed embedding.

    The kept documents' embeddings are copied once into one matrix with a spare last row, which
    holds the sum of R at every step: gathering a batch together with that row lets one batched
    Gram product give both e_i.e_j and e_i.(sum of R). Positions are kept positions throughout.
    """

    def __init__(self, prep: _Prepared, kept_t: torch.Tensor, n_select: int) -> None:
        self.n_select = n_select
        n_keep, dev = kept_t.shape[0], kept_t.device
        self.q = prep.q_all[kept_t].to(torch.float64)
        self.sqn = prep.sq_norms[kept_t].to(torch.float64)
        self.emb = torch.empty((n_keep + 1, prep.e_all.shape[1]), dtype=prep.e_all.dtype, device=dev)
        torch.index_select(prep.e_all, 0, kept_t, out=self.emb[:n_keep])
        self.member = torch.zeros(n_keep, dtype=torch.bool, device=dev)
        self.count = 0
        self.q_sum = self.sq_sum = 0.0
        self.e_sum = torch.zeros(prep.e_all.shape[1], dtype=torch.float64, device=dev)
        self._eb = torch.empty(0, dtype=prep.e_all.dtype, device=dev)  # reused gather buffer

    def refresh(self, L: torch.Tensor) -> None:
        """R <- the top-S by the current logits; the sums follow the documents that entered or left."""
        new = torch.zeros_like(self.member)
        new[torch.topk(L, self.n_select, sorted=False).indices] = True
        for change, sign in ((new & ~self.member, 1.0), (self.member & ~new, -1.0)):
            at = change.nonzero().squeeze(1)
            if at.numel():
                self.q_sum += sign * float(self.q[at].sum())
                self.sq_sum += sign * float(self.sqn[at].sum())
                self.e_sum += sign * self.emb[at].sum(dim=0, dtype=torch.float64)
        self.member = new
        self.count = self.n_select
        self.emb[-1] = self.e_sum  # the spare row: gathered with every batch

    def metrics(self, pos: torch.Tensor, order: torch.Tensor,
                with_div: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean quality, -PWS) of U_g + (R minus its batch) for each mask of K batches: (K, G) each.

        ``pos`` (K, nb) kept positions of the batches, ``order`` (K, G, S_b) positions within them.
        """
        k, g, sb = order.shape
        nb = pos.shape[1]
        mem = self.member[pos].to(torch.float64)  # (K, nb): batch documents currently in R
        size = (self.count - mem.sum(dim=1) + sb).unsqueeze(1)  # (K, 1)
        flat_order = order.reshape(k, -1)
        qb = self.q[pos]
        q_rest = self.q_sum - (mem * qb).sum(dim=1, keepdim=True)
        qbar = (q_rest + torch.gather(qb, 1, flat_order).reshape(k, g, sb).sum(dim=2)) / size
        if not with_div:
            return qbar, None
        # With r = sum of R outside the batch and s_g = sum of the mask:
        # ||r + s_g||^2 = ||r||^2 + 2 sum_{i in U_g} r.e_i + sum_{i,j in U_g} e_i.e_j.
        # Everything a mask needs comes from the batch Gram matrix, extended by the spare row
        # (e_i . sum of R), so a mask costs O(S_b^2) gathered entries instead of O(S_b d).
        m = nb + 1
        idx = torch.cat([pos, pos.new_full((k, 1), self.emb.shape[0] - 1)], dim=1).reshape(-1)
        d = self.emb.shape[1]
        if self._eb.shape[0] < idx.shape[0]:  # grow only: a fresh large buffer per step costs page faults
            self._eb = torch.empty((idx.shape[0], d), dtype=self.emb.dtype, device=self.emb.device)
        eb = torch.index_select(self.emb, 0, idx, out=self._eb[: idx.shape[0]]).view(k, m, d)
        gram = torch.bmm(eb, eb[:, :nb].transpose(1, 2))  # (K, nb + 1, nb): the last row is (sum of R) . e_j
        e_sum_dot = gram[:, nb, :]  # (K, nb): e_i . (all of R)
        memf = mem.to(gram.dtype)
        in_r = (gram[:, :nb, :] * memf.unsqueeze(1)).sum(dim=2)  # (K, nb): e_i . (R within the batch)
        r_dot = e_sum_dot - in_r  # (K, nb): e_i . r
        # ||r||^2 is the same for every mask of a batch; it is formed in float64 from the sums
        r_sq = (float((self.e_sum * self.e_sum).sum()) - 2 * (memf * e_sum_dot).sum(dim=1).to(torch.float64)
                + (memf * in_r).sum(dim=1).to(torch.float64))
        cross = torch.gather(r_dot, 1, flat_order).reshape(k, g, sb).sum(dim=2)  # r . s_g
        pairs = (order.unsqueeze(3) * nb + order.unsqueeze(2)).reshape(k, -1)  # every (i, j) of each mask
        s_sq = torch.gather(gram.reshape(k, m * nb), 1, pairs).reshape(k, g, sb * sb).sum(dim=2)  # ||s_g||^2
        sq = r_sq.unsqueeze(1) + (2 * cross + s_sq).to(torch.float64)
        sqn = self.sqn[pos]
        diag = (self.sq_sum - (mem * sqn).sum(dim=1, keepdim=True)
                + torch.gather(sqn, 1, flat_order).reshape(k, g, sb).sum(dim=2))
        pws = (sq - diag) / (size * (size - 1))
        return qbar, -pws


def batch_schedule(n_keep: int, nb: int, per_step: int, updates: int, seed: int, block_id: int,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """Steps of at most ``per_step`` disjoint batches of ``nb`` positions, ``updates`` batches in all:
    (K, nb) per step. Batches are consecutive slices of a fresh random permutation per epoch, so
    every document takes part once per pass (the tail of an epoch that does not fill a batch waits
    for the next permutation); a step never spans two epochs, so its batches never overlap."""
    m = n_keep // nb
    done, epoch = 0, 0
    while done < updates:
        gen = make_generator(device, seed, block_id, _TAG_EPOCH, epoch)
        perm = torch.randperm(n_keep, generator=gen, device=device)[: m * nb].view(m, nb)
        for a in range(0, m, per_step):
            take = min(per_step, m - a, updates - done)
            yield perm[a:a + take]
            done += take
            if done >= updates:
                return
        epoch += 1


def reward_mode(p: DataMaskParams) -> Literal["context", "batch"]:
    """The batch reward in use: ``auto`` is ``context`` for pws and ``batch`` otherwise."""
    if p.batch_reward == "auto":
        return "context" if p.diversity == "pws" or p.lam >= 1 else "batch"
    return p.batch_reward


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


def _offsets(order: torch.Tensor, nb: int) -> torch.Tensor:
    """(K, G, S) positions within each of K batches -> (K*G, S) rows of the stacked batches."""
    k = order.shape[0]
    return (order + torch.arange(k, device=order.device).view(k, 1, 1) * nb).reshape(-1, order.shape[2])


def _batch_metrics(prep: _Prepared, rows_b: torch.Tensor, order: torch.Tensor, p: DataMaskParams
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean quality, diversity) of each mask drawn within its batch only: (K, G) each."""
    k, g, _ = order.shape
    nb = rows_b.shape[1]
    qb = prep.q_all[rows_b]  # (K, nb)
    qbar = torch.gather(qb, 1, order.reshape(k, -1)).reshape(order.shape).mean(dim=2)
    if p.lam >= 1:
        return qbar, None
    flat = rows_b.reshape(-1)
    sqb = prep.sq_norms[flat] if p.diversity == "pws" else None
    div = diversity(p.diversity, prep.e_all[flat], _offsets(order, nb), prep.ref_emb, sqb)
    return qbar, div.reshape(k, g)


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
            gen = make_generator(dev, seed, block_id, _TAG_STEP, step)
            lb = L[pos]
            if readout is not None:
                readout.refresh(L)
            order = draw_masks(lb, n_masks, sb, gen, p.sampler)  # (K, G, sb) positions in each batch
            lb32 = lb.to(torch.float32)  # the gradient in float32; L accumulates in float64
            if readout is not None:
                qbar, div = readout.metrics(pos, order, p.lam < 1)
                f = cal.combine(qbar, div)
            else:
                qbar, div = _batch_metrics(prep, kept_t[pos], order, p)
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
