"""The block objective and its calibration (shared by DATAMASK and greedy).

Each metric is standardised against random subsets of the same size from the whole block,

    f(U) = lam * (qbar(U) - m_q) / s_q + (1 - lam) * (div(U) - m_d) / s_d,

so 0 = a random subset and 1 = one random-subset standard deviation better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from thresher.selectors.diversity import DiversityKind, diversity, pws_subset_moments


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
