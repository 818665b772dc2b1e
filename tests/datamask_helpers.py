"""Reference definitions for the DATAMASK tests (slow, explicit forms of what the package computes fast)."""

from __future__ import annotations

import numpy as np
import torch


def pl_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """log P(order | logits) of ordered draws without replacement (differentiable).

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


def pairwise_similarity_explicit(emb: np.ndarray, idx: np.ndarray) -> float:
    """The O(S^2.d) definition: mean of e_i.e_j over ordered pairs i != j."""
    x = np.asarray(emb, dtype=np.float64)[np.asarray(idx)]
    sim = x @ x.T
    s = len(idx)
    return float((sim.sum() - np.trace(sim)) / (s * (s - 1)))
