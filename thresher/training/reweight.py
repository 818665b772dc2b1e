"""Dynamic loss-based sample reweighting (SPEC section 4), online and offline.

Online, per step: per-sample mean token losses are pooled over the *global* batch
(all-gather when torch.distributed is initialised), min-max normalised to [-delta,
delta] (range floored at 1e-6), mapped by a strategy f, and turned into weights by a
softmax with temperature r. Each rank's loss folds in the per-device token shares as the
official GPT-2 trainer does: ``sum_local w_b * (n_b / sum_local n) * loss_b * world_size *
B_local`` (n_b = the sample's token count), which with uniform weights -- and during the
uniform burn-in -- is the rank's ordinary token mean, the loss of training without
reweighting. Without token counts it is ``sum_local w_b * loss_b * world_size`` (the
fms-fsdp form; the same thing when every sample has the same length, as in packed
pretraining). DDP then averages ranks.

Strategy names are the paper's: ``linupper`` = min(h + delta, delta), ``quadratic`` =
1 - h^2/delta^2, ``extremes`` = |h|, ``uniform`` = no reweighting (weights 1/B). The
code names ``upper`` and ``mid`` are refused: ``upper`` means LinUpper in one official
repo and a plain linear map in the other (SPEC 4.4).

Offline: :func:`write_offline_weights` scores shards with a proxy model and writes a
``weight`` column (mean 1 within each pool of ``pool_size`` rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from thresher.common.atomic import write_text_atomic
from thresher.common.templates import ALPACA_TEMPLATE
from thresher.training.options import STRATEGIES, ReweightConfig, check_strategy  # noqa: F401 (re-exported)

def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor,
                    token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy per sample and its token count.

    ``labels`` are unshifted (like the inputs, -100 = ignored); position t of the
    logits predicts label t+1. ``token_mask`` (aligned to labels, 1 = keep) restricts
    the tokens. Samples without any kept token get loss 0 and count 0.
    """
    tok = token_loss_matrix(logits, labels)
    keep = (labels[:, 1:] != -100)
    if token_mask is not None:
        keep = keep & token_mask[:, 1:].bool()
    keep_f = keep.to(tok.dtype)
    n = keep_f.sum(1)
    return (tok * keep_f).sum(1) / n.clamp(min=1), n


def token_loss_matrix(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) float32 cross-entropy of predicting labels[:, 1:] (0 where ignored)."""
    b, t, v = logits.shape
    shift = logits[:, :-1].reshape(-1, v).float()
    target = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift, target, ignore_index=-100, reduction="none").view(b, t - 1)


def normalize_losses(losses: torch.Tensor, delta: float = 1.0, floor: float = 1e-6) -> torch.Tensor:
    """Min-max map to [-delta, delta]; equal losses give 0 (range floored at ``floor``)."""
    lo, hi = losses.min(), losses.max()
    rng = (hi - lo).clamp(min=floor)
    return 2 * delta * losses / rng - delta * (hi + lo) / rng


def strategy_values(h: torch.Tensor, strategy: str, delta: float = 1.0) -> torch.Tensor:
    """f(h) of the strategy (uniform: zeros, so the softmax gives 1/B)."""
    strategy = check_strategy(strategy)
    if strategy == "linupper":
        return torch.clamp(h + delta, max=delta)
    if strategy == "quadratic":
        return 1 - h.pow(2) / delta ** 2
    if strategy == "extremes":
        return h.abs()
    return torch.zeros_like(h)


def weights_from_losses(losses: torch.Tensor, strategy: str = "linupper", temperature: float = 1.0,
                        delta: float = 1.0) -> torch.Tensor:
    """Softmax((f(h) - max f)/r) over a pool of per-sample losses; sums to 1."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    losses = losses.detach()
    if losses.dtype not in (torch.float32, torch.float64):
        losses = losses.float()
    if strategy == "uniform" or losses.numel() == 0:
        return torch.full_like(losses, 1.0 / max(losses.numel(), 1))
    f = strategy_values(normalize_losses(losses, delta), strategy, delta)
    return torch.softmax((f - f.max()) / temperature, dim=0)


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_gather_losses(local: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, int]:
    """All-gather 1-D loss vectors of possibly different lengths; (global, my offset)."""
    dist = torch.distributed
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    n = torch.tensor([local.numel()], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes_i = [int(s.item()) for s in sizes]
    m = max(sizes_i)
    padded = torch.zeros(m, device=local.device, dtype=local.dtype)
    padded[:local.numel()] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    full = torch.cat([p[:s] for p, s in zip(parts, sizes_i)])
    return full, sum(sizes_i[:rank])


def rank_loss(weights: torch.Tensor, per_sample: torch.Tensor, world: int,
              counts: torch.Tensor | None = None) -> torch.Tensor:
    """One rank's reweighted loss from its slice of the global weights (no gradient through them).

    With ``counts`` (the samples' token counts): the official GPT-2 trainer's
    ``sum w_b * (n_b / sum n) * loss_b * world * B_local``, so uniform weights give the token
    mean; without: ``sum w_b * loss_b * world`` (uniform weights give the sample mean).
    """
    w = weights.detach().to(per_sample.dtype)
    if counts is None:
        return (w * per_sample).sum() * world
    n = counts.detach().to(per_sample.dtype)
    share = n / n.sum().clamp(min=1)
    return (w * share * per_sample).sum() * world * per_sample.numel()


class LossReweighter:
    """Per-step sample weights over the global batch, and the reweighted loss."""

    def __init__(self, config: ReweightConfig | None = None, group: Any = None) -> None:
        self.config = config or ReweightConfig()
        self.group = group
        self.last_weights: torch.Tensor | None = None  # global weights of the last step (for logging)

    def _params(self, step: int) -> tuple[str, float]:
        c = self.config
        if step < c.warmup_steps:
            return ("uniform", 1.0) if c.warmup == "uniform" else (c.strategy, c.warmup_temperature)
        return c.strategy, c.temperature

    def global_weights(self, all_losses: torch.Tensor, step: int) -> torch.Tensor:
        strategy, r = self._params(step)
        return weights_from_losses(all_losses, strategy, r, self.config.delta)

    def local_weights(self, local_losses: torch.Tensor, step: int) -> tuple[torch.Tensor, int]:
        """This rank's slice of the global weights, and the world size."""
        local = local_losses.detach()
        if _dist_ready():
            full, offset = all_gather_losses(local, self.group)
            world = torch.distributed.get_world_size(self.group)
        else:
            full, offset, world = local, 0, 1
        w = self.global_weights(full, step)
        self.last_weights = w
        return w[offset:offset + local.numel()], world

    def loss(self, per_sample: torch.Tensor, step: int, counts: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's reweighted loss (:func:`rank_loss`); pass the samples' token ``counts``
        for the official token-share scaling (the weights carry no gradient)."""
        w, world = self.local_weights(per_sample, step)
        return rank_loss(w, per_sample, world, counts)

    def emulate(self, losses_per_rank: Sequence[torch.Tensor], step: int,
                counts_per_rank: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Single-process emulation of W ranks: each rank's loss, as an all-gather run gives."""
        full = torch.cat([x.detach() for x in losses_per_rank])
        w = self.global_weights(full, step)
        world, out, off = len(losses_per_rank), [], 0
        for i, x in enumerate(losses_per_rank):
            n = None if counts_per_rank is None else counts_per_rank[i]
            out.append(rank_loss(w[off:off + x.numel()], x, world, n))
            off += x.numel()
        return out


# -- offline weights from a proxy model ------------------------------------------------------

@torch.no_grad()
def proxy_losses(model: torch.nn.Module, tokenizer: Any, rows: list[dict[str, Any]], instruction: bool, *,
                 max_length: int = 512, batch_size: int = 16, add_bos: bool = False,
                 template: str | None = None) -> np.ndarray:
    """Per-row mean token loss under ``model`` (response tokens only for instruction rows)."""
    from thresher.training.data import collate, tokenize_row

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.zeros(len(rows), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: len(str(rows[i].get("text") or rows[i].get("response") or "")))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        samples = []
        for i in idx:
            ids, plen = tokenize_row(tokenizer, rows[i], instruction, template=template or ALPACA_TEMPLATE,
                                     add_bos=add_bos)
            t = torch.tensor(ids[:max_length])
            lab = t.clone()
            lab[:plen] = -100
            samples.append({"input_ids": t, "labels": lab})
        batch = {k: v.to(device) for k, v in collate(samples, pad).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = per_sample_loss(logits, batch["labels"])
        out[idx] = loss.cpu().numpy()
    return out


def write_offline_weights(src: str | Path, dst: str | Path, model: torch.nn.Module, tokenizer: Any, *,
                          strategy: str = "linupper", temperature: float = 1.0, delta: float = 1.0,
                          pool_size: int = 256, seed: int = 0, max_length: int = 512, batch_size: int = 16,
                          mode: str = "auto") -> dict[str, Any]:
    """Write shards of ``src`` to ``dst`` with a ``weight`` column from proxy-model losses.

    Rows are split into random pools of ``pool_size`` (seeded, across shards, standing in
    for training batches); inside a pool the weights are the online formula times the
    pool size, so they average 1. ``dst`` may equal ``src`` (each file is replaced
    atomically). Returns a summary that is also written to ``dst/_reweight.json``.
    """
    from thresher.training.data import list_shards, write_shards_atomic

    files = list_shards(src)
    check_strategy(strategy)
    tables = {f.name: pq.read_table(f) for f in files}
    names = set(next(iter(tables.values())).column_names)
    instruction = mode == "instruction" or (mode == "auto" and {"prompt", "response"} <= names)
    eos = tokenizer.eos_token_id
    add_bos = tokenizer.bos_token_id is not None and tokenizer.bos_token_id != eos
    losses = []
    for t in tables.values():
        losses.append(proxy_losses(model, tokenizer, t.to_pylist(), instruction, max_length=max_length,
                                   batch_size=batch_size, add_bos=add_bos))
    all_losses = np.concatenate(losses) if losses else np.zeros(0)
    weights = np.ones_like(all_losses)
    perm = np.random.default_rng(seed).permutation(len(all_losses))
    for s in range(0, len(perm), pool_size):
        idx = perm[s:s + pool_size]
        w = weights_from_losses(torch.from_numpy(all_losses[idx]), strategy, temperature, delta)
        weights[idx] = w.double().numpy() * len(idx)
    out, off = {}, 0
    for name, t in tables.items():
        n = t.num_rows
        col = pa.array(weights[off:off + n], type=pa.float32())
        lcol = pa.array(all_losses[off:off + n], type=pa.float32())
        for cname, c in (("weight", col), ("proxy_loss", lcol)):
            t = t.set_column(t.column_names.index(cname), cname, c) if cname in t.column_names else t.append_column(cname, c)
        out[name] = t
        off += n
    dst_p = Path(dst)
    write_shards_atomic(out, dst_p)
    summary = {"rows": int(len(all_losses)), "strategy": strategy, "temperature": temperature, "delta": delta,
               "pool_size": pool_size, "seed": seed, "weight_min": float(weights.min()) if len(weights) else None,
               "weight_max": float(weights.max()) if len(weights) else None,
               "loss_mean": float(all_losses.mean()) if len(all_losses) else None}
    write_text_atomic(json.dumps(summary, indent=2), dst_p / "_reweight.json")
    return summary


__all__ = ["STRATEGIES", "ReweightConfig", "LossReweighter", "weights_from_losses", "normalize_losses",
           "strategy_values", "per_sample_loss", "token_loss_matrix", "write_offline_weights", "check_strategy",
           "all_gather_losses", "rank_loss"]
