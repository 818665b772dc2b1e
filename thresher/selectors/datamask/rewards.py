"""The batch rewards: how a mask drawn within a batch is scored (SPEC 1.5.4 leaves it open).

``batch``: the batch subset alone (``batch_metrics``). ``context`` (default for PWS): the block
subset the mask completes, U_g plus the current readout outside the batch (``ContextReadout``).
"""

from __future__ import annotations

from typing import Literal

import torch

from thresher.selectors.datamask.blocks import PreparedBlock
from thresher.selectors.datamask.params import DataMaskParams
from thresher.selectors.diversity import diversity


def reward_mode(p: DataMaskParams) -> Literal["context", "batch"]:
    """The batch reward in use: ``auto`` is ``context`` for pws and ``batch`` otherwise."""
    if p.batch_reward == "auto":
        return "context" if p.diversity == "pws" or p.lam >= 1 else "batch"
    return p.batch_reward


def _offsets(order: torch.Tensor, nb: int) -> torch.Tensor:
    """(K, G, S) positions within each of K batches -> (K*G, S) rows of the stacked batches."""
    k = order.shape[0]
    return (order + torch.arange(k, device=order.device).view(k, 1, 1) * nb).reshape(-1, order.shape[2])


def batch_metrics(prep: PreparedBlock, rows_b: torch.Tensor, order: torch.Tensor, p: DataMaskParams
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

    def __init__(self, prep: PreparedBlock, kept_t: torch.Tensor, n_select: int) -> None:
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
