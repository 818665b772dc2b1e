"""The Plackett-Luce policy: ordered draws without replacement and the exact score function.

One real logit per document; a mask of S documents is S draws without replacement, each a
softmax over the documents not yet drawn. ``gumbel_topk`` draws by Gumbel-top-k (as the
equivalent exponential race), ``sequential_draws`` runs the same race lazily for a few draws
per batch, ``draw_masks`` routes between them; ``pl_grad`` is the exact gradient of the
log-probability of the draws (linear space, ``pl_grad_log`` for wide logit spreads).
"""

from __future__ import annotations

import torch

# Largest logit spread (max - min, nats) for which the linear-space fast paths are used: every
# exp(L - max) >= e^-600 stays a normal float64 and every 1/Z <= e^600, so sums of up to ~1e45
# terms stay finite. Wider spreads fall back to the log-space forms (same results, slower).
_LINEAR_SPREAD = 600.0  # float64: exp(600) and 745 * exp(600) stay finite
_LINEAR_SPREAD_F32 = 80.0  # float32: 88 * exp(80) < 3.4e38


def _linear_spread(dtype: torch.dtype) -> float:
    """Largest logit spread the linear-space sampler and gradient handle in ``dtype``."""
    return _LINEAR_SPREAD if dtype == torch.float64 else _LINEAR_SPREAD_F32


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
