"""Set-level quality and diversity metrics, vectorised over a group of masks.

Every metric takes the block's (or batch's) embeddings ``emb`` (n, d) and a group of
subsets ``idx`` (G, S) of row indices into ``emb``, and returns one value per subset
(G,). All diversity metrics are oriented so that **higher means more diverse**:

- ``pws``: minus the mean pairwise cosine similarity. With unit-norm rows,
  sum_{i,j in U} e_i.e_j = ||sum e_i||^2, so the off-diagonal mean is
  (||sum e||^2 - sum ||e_i||^2) / (S(S-1)), which is O(S.d) per subset instead of O(S^2.d)
  (SPEC 1.4). For unit rows sum ||e_i||^2 = S, giving (||sum e||^2 - S)/(S(S-1)).
- ``fl``: facility location, mean over a reference set V of max_{u in U} cos(e_v, e_u).
- ``disf``: minus the mean squared off-diagonal entry of the correlation matrix of the
  subset's embedding dimensions (DiSF's objective, divided by d(d-1): a constant rescale).

The helpers accept torch tensors (CPU or GPU); numpy arrays are converted.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

DiversityKind = Literal["pws", "fl", "disf"]

# memory cap (elements) for the gathered intermediates of fl/disf; the group is chunked
_CHUNK_ELEMS = 1 << 24


def _t(x: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(dtype) if dtype is not None else t


def _idx2d(idx: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = _t(idx).to(device=device, dtype=torch.long)
    return t.unsqueeze(0) if t.dim() == 1 else t


def pairwise_similarity(emb: np.ndarray | torch.Tensor, idx: np.ndarray | torch.Tensor,
                        sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Mean off-diagonal cosine similarity of each subset via the sum identity: (G,).

    Uses ``embedding_bag`` so the (G, S, d) gather is never materialised. ``sq_norms``: the
    precomputed ||e_i||^2 of every row (pass it in loops; computed here otherwise).
    """
    e = _t(emb)
    ix = _idx2d(idx, e.device)
    s = ix.shape[1]
    if s < 2:
        raise ValueError("pairwise similarity needs subsets of at least 2 documents")
    sums = torch.nn.functional.embedding_bag(ix, e, mode="sum")  # (G, d)
    sq = (e * e).sum(dim=1) if sq_norms is None else sq_norms.to(e.device)  # == 1 for unit rows
    diag = sq[ix].sum(dim=1).to(sums.dtype)
    return ((sums * sums).sum(dim=1) - diag) / (s * (s - 1))


def pool_pairwise_similarity(emb: np.ndarray) -> float:
    """Mean off-diagonal cosine similarity of a whole pool, O(N.d)."""
    x = np.asarray(emb)
    n = len(x)
    if n < 2:
        return float("nan")
    s = x.sum(axis=0, dtype=np.float64)  # accumulate in float64 without a float64 copy
    sq = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    return float((s @ s - sq) / (n * (n - 1)))


def facility_location(emb: np.ndarray | torch.Tensor, idx: np.ndarray | torch.Tensor,
                      ref_emb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean over reference rows ``ref_emb`` (V, d) of the best similarity in each subset: (G,).

    O(|V|.S.d) per subset; when the pool is smaller than G.S the (n, V) similarity table is
    computed once and gathered instead.
    """
    e = _t(emb)
    ix = _idx2d(idx, e.device)
    ev = _t(ref_emb).to(device=e.device, dtype=e.dtype)
    g, s = ix.shape
    v = ev.shape[0]
    chunk = max(1, _CHUNK_ELEMS // max(1, s * v))
    use_table = e.shape[0] <= g * s and e.shape[0] * v <= 4 * _CHUNK_ELEMS
    table = e @ ev.T if use_table else None
    out = []
    for a in range(0, g, chunk):
        part = ix[a:a + chunk]
        sim = table[part] if table is not None else e[part] @ ev.T  # (c, S, V)
        out.append(sim.amax(dim=1).mean(dim=1))
    return torch.cat(out)


def disf_correlation(emb: np.ndarray | torch.Tensor, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation between embedding dimensions per subset: (G,).

    Features are standardised within the subset (DiSF). With Z the standardised (S, d) subset
    scaled so that Z^T Z is the correlation matrix, ||Z^T Z||_F = ||Z Z^T||_F, so the cost is
    O(S.d.min(S, d)) per subset. Zero-variance features count as uncorrelated.
    """
    e = _t(emb)
    ix = _idx2d(idx, e.device)
    g, s = ix.shape
    if s < 2:
        raise ValueError("the DiSF correlation needs subsets of at least 2 documents")
    d = e.shape[1]
    chunk = max(1, _CHUNK_ELEMS // max(1, s * d + min(s, d) ** 2))
    out = []
    for a in range(0, g, chunk):
        x = e[ix[a:a + chunk]].to(torch.float64)  # (c, S, d)
        x = x - x.mean(dim=1, keepdim=True)
        ss = (x * x).sum(dim=1, keepdim=True)  # (c, 1, d) = (S-1) var
        ok = ss > 1e-12 * s
        z = torch.where(ok, x * ss.clamp_min(1e-300).rsqrt(), torch.zeros_like(x))
        gram = z @ z.transpose(1, 2) if s <= d else z.transpose(1, 2) @ z
        total = (gram * gram).sum(dim=(1, 2))
        out.append((total - ok.sum(dim=(1, 2)).to(total.dtype)) / (d * (d - 1)))
    return torch.cat(out)


_EXACT_PAIR_SQUARES_ROWS = 2048  # up to this many rows, sum (e_i.e_j)^2 comes from E^T E exactly
_PAIR_SQUARES_SAMPLE = 1 << 13  # beyond: estimated from this many random pairs


def pws_subset_moments(emb: torch.Tensor, size: int, sq_norms: torch.Tensor | None,
                       gen: torch.Generator) -> tuple[float, float]:
    """Mean and standard deviation of ``pairwise_similarity`` over uniformly random subsets of
    ``size`` rows of ``emb``, in closed form (no subsets are drawn). ``sq_norms``: ||e_i||^2 per
    row, computed here when None.

    With h_ij = e_i.e_j, c_i = sum_{j != i} h_ij, T = sum_i c_i and A = sum_{i != j} h_ij^2, the
    subset's sum P over ordered pairs has E[P] = p2 T and
    E[P^2] = 2 p2 A + 4 p3 (sum_i c_i^2 - A) + p4 (T^2 - 4 sum_i c_i^2 + 2 A),
    where p_k is the chance that k given rows are all in the subset; similarity = P / (S(S-1)).
    T and c cost O(n.d). A needs E^T E (O(n.d^2)): exact up to ``_EXACT_PAIR_SQUARES_ROWS`` rows,
    above that estimated from random pairs. Its term is a small share of the variance (about 12%
    at 10k rows and 1% at 100k on the DATAMASK benchmark), so the estimate moves the std by about
    0.2% at 10k and 0.03% at 100k there (sampling 32 random subsets, as before: about 10%).
    """
    n = emb.shape[0]
    if not 2 <= size <= n:
        raise ValueError(f"subset size must be in [2, {n}], got {size}")
    sq = ((emb * emb).sum(dim=1) if sq_norms is None else sq_norms).to(torch.float64)  # as pairwise_similarity
    total = emb.sum(dim=0).to(torch.float64)  # torch sums in cascade, accurate in float32 (no float64 copy)
    c = (emb @ total.to(emb.dtype)).to(torch.float64) - sq  # c_i = e_i . (sum of the others)
    t = float(total @ total - sq.sum())
    c2 = float((c * c).sum())
    if n <= _EXACT_PAIR_SQUARES_ROWS:
        gram = (emb.T @ emb).to(torch.float64)
        a = float((gram * gram).sum() - (sq * sq).sum())
    else:
        x = torch.randint(0, n, (_PAIR_SQUARES_SAMPLE,), generator=gen, device=emb.device)
        y = torch.randint(0, n - 1, (_PAIR_SQUARES_SAMPLE,), generator=gen, device=emb.device)
        y = y + (y >= x).to(y.dtype)  # uniform over ordered pairs with y != x
        h = (emb[x] * emb[y]).sum(dim=1).to(torch.float64)
        a = n * (n - 1) * float((h * h).mean())
    p2 = size * (size - 1) / (n * (n - 1))
    p3 = p2 * (size - 2) / (n - 2) if n > 2 else 0.0
    p4 = p3 * (size - 3) / (n - 3) if n > 3 else 0.0
    second = (p4 - p2 * p2) * t * t + 4 * (p3 - p4) * c2 + 2 * (p2 - 2 * p3 + p4) * a  # E[P^2] - E[P]^2
    pairs = size * (size - 1)
    return t / (n * (n - 1)), math.sqrt(max(second, 0.0)) / pairs


def diversity(kind: DiversityKind, emb: np.ndarray | torch.Tensor, idx: np.ndarray | torch.Tensor,
              ref_emb: np.ndarray | torch.Tensor | None = None,
              sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Diversity of each subset, higher = more diverse: (G,).

    ``ref_emb`` is the facility-location reference set V (defaults to all of ``emb``).
    """
    if kind == "pws":
        return -pairwise_similarity(emb, idx, sq_norms)
    if kind == "fl":
        return facility_location(emb, idx, emb if ref_emb is None else ref_emb)
    if kind == "disf":
        return -disf_correlation(emb, idx)
    raise ValueError(f"unknown diversity metric {kind!r}; use pws, fl or disf")
