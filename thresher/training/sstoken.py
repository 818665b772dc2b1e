"""ssToken: self-modulated, semantic-aware token selection for SFT (SPEC section 3).

Per response token k (arrays are *aligned*: index k is about token k, index 0 is a
placeholder 0, the convention of the ``hist_token_loss`` column):

* REL_k = loss_history(k) - loss_current(k): large when the model improved on token k
  relative to its history (base model by default, an EMA copy, or a precomputed column);
* Attn_k = head-mean attention that token k (as the query, at its own position, while its
  loss is the prediction made at k - 1: the official code's alignment) pays to the prompt
  in the last layer. The layer's attention is recomputed from its input, captured by a
  forward pre-hook, so the main pass can use sdpa/flash kernels. ``attention=
  "prompt_sum_adjusted"`` (not in the paper or code; an ablated option) divides that share by
  the share uniform attention would give, n_prompt / n_keys, because the raw share falls
  with position (later queries have more response keys), so the last tokens and the end
  token are rarely kept on attention alone;
* Score_k = gamma * minmax(REL)_k + (1 - gamma) * Attn_k (min-max per sample, +1e-8);
  gamma is 0 (attention only) during ``warmup_steps`` steps and the first ``warmup_samples``
  samples (the official code: 10,000 samples of an unshuffled epoch);
* keep the top ceil(rho * L_resp) response tokens of each sample.

``mode="random"`` keeps ceil(rho * L_resp) random response tokens (the baseline), drawn anew
every step. :func:`write_token_masks` precomputes ``token_mask`` and ``hist_token_loss``
columns. docs/sstoken.md compares each choice with the official release.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from thresher.common.templates import ALPACA_TEMPLATE
from thresher.training.options import (  # noqa: F401 (re-exported)
    ATTENTION_SCORES, HISTORY_SOURCES, AttentionScore, HistorySource, SSTokenConfig)

# -- per-token quantities --------------------------------------------------------------------

def aligned_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) float32: index k = loss of token k given tokens < k; index 0 and ignored labels = 0."""
    b, t, v = logits.shape
    out = torch.zeros(b, t, dtype=torch.float32, device=logits.device)
    if t > 1:
        out[:, 1:] = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1),
                                     ignore_index=-100, reduction="none").view(b, t - 1)
    return out


def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: tokens that carry loss (label != -100), never position 0."""
    resp = labels != -100
    resp[:, 0] = False
    return resp


def prompt_positions(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: prompt tokens (label -100 and not padding)."""
    prompt = labels == -100
    if attention_mask is not None:
        prompt = prompt & attention_mask.bool()
    return prompt


def minmax_per_sample(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - min)/(max - min + eps) over the masked entries of each row; 0 elsewhere."""
    big = torch.finfo(x.dtype).max
    lo = torch.where(mask, x, torch.full_like(x, big)).min(1, keepdim=True).values
    hi = torch.where(mask, x, torch.full_like(x, -big)).max(1, keepdim=True).values
    lo = torch.where(mask.any(1, keepdim=True), lo, torch.zeros_like(lo))
    hi = torch.where(mask.any(1, keepdim=True), hi, torch.zeros_like(hi))
    return torch.where(mask, (x - lo) / (hi - lo + eps), torch.zeros_like(x))


def keep_counts(resp: torch.Tensor, rho: float) -> torch.Tensor:
    """ceil(rho * L_resp) per sample (rho*L rounded to 1e-6 first, so 0.7*10 gives 7)."""
    n = resp.sum(1).double()
    return torch.ceil(torch.round(n * rho * 1e6) / 1e6).long()


def top_tokens(score: torch.Tensor, resp: torch.Tensor, rho: float) -> torch.Tensor:
    """(B, T) bool: the top ceil(rho * L_resp) response tokens of each row by score (stable ties)."""
    masked = torch.where(resp, score.float(), torch.full_like(score, float("-inf"), dtype=torch.float32))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order).contiguous())
    return (ranks < keep_counts(resp, rho)[:, None]) & resp


def random_tokens(resp: torch.Tensor, rho: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) bool: ceil(rho * L_resp) uniformly random response tokens per row."""
    noise = torch.rand(resp.shape, generator=generator, device="cpu").to(resp.device)
    return top_tokens(noise, resp, rho)


def select_tokens(rel: torch.Tensor, attn: torch.Tensor | None, resp: torch.Tensor, rho: float,
                  gamma: float) -> torch.Tensor:
    """ssToken mask: top-rho response tokens by gamma * minmax(REL) + (1 - gamma) * Attn."""
    score = gamma * minmax_per_sample(rel.float(), resp)
    if gamma < 1:
        if attn is None:
            raise ValueError("gamma < 1 needs the attention score")
        score = score + (1 - gamma) * attn.float()
    return top_tokens(score, resp, rho)


# -- last-layer attention via a hook ---------------------------------------------------------

def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def find_attention(model: nn.Module, layer: int = -1) -> nn.Module:
    """The self-attention module of decoder layer ``layer`` (GPT-2 or Llama-style)."""
    while isinstance(getattr(model, "module", None), nn.Module):  # DDP / FSDP wrappers
        model = model.module
    base = getattr(model, "base_model", model)
    for path in ("transformer.h", "model.layers", "layers", "h", "model.decoder.layers"):
        node: Any = base
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node):
            block = node[layer]
            for name in ("self_attn", "attn", "attention"):
                if hasattr(block, name):
                    return getattr(block, name)
    raise NotImplementedError(f"cannot find decoder layers in {type(model).__name__}: supported are GPT-2 "
                              "(transformer.h[i].attn) and Llama-style (model.layers[i].self_attn) models")


class LastLayerAttention:
    """Capture one attention layer's input during a forward pass and recompute its map.

    Use as a context manager around the model call; :meth:`probs` then returns the
    (B, H, T, T) float32 attention probabilities (causal, padding keys masked), computed
    from the captured hidden states, whatever kernel the model ran.
    """

    def __init__(self, model: nn.Module, layer: int = -1) -> None:
        self.module = find_attention(model, layer)
        if not (hasattr(self.module, "c_attn") or hasattr(self.module, "q_proj")):
            raise NotImplementedError(f"{type(self.module).__name__}: need GPT-2 (c_attn) or Llama-style "
                                      "(q_proj/k_proj) attention")
        self._handle: Any = None
        self.hidden: torch.Tensor | None = None
        self.position_embeddings: Any = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hidden = args[0] if args else kwargs.get("hidden_states")
        self.position_embeddings = kwargs.get("position_embeddings")

    def __enter__(self) -> "LastLayerAttention":
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def probs(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.hidden is None:
            raise RuntimeError("no forward pass was captured; call the model inside `with LastLayerAttention(...)`")
        m, h = self.module, self.hidden.detach()
        b, t, _ = h.shape
        if hasattr(m, "c_attn"):  # GPT-2
            q, k, _v = m.c_attn(h).split(m.split_size, dim=2)
            q = q.view(b, t, -1, m.head_dim).transpose(1, 2)
            k = k.view(b, t, -1, m.head_dim).transpose(1, 2)
            scaling = float(getattr(m, "scaling", m.head_dim ** -0.5))
        else:  # Llama-style
            hd = m.head_dim
            q = m.q_proj(h).view(b, t, -1, hd)
            k = m.k_proj(h).view(b, t, -1, hd)
            if hasattr(m, "q_norm"):
                q, k = m.q_norm(q), m.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            if self.position_embeddings is not None:
                cos, sin = (x.unsqueeze(1) for x in self.position_embeddings)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            rep = q.shape[1] // k.shape[1]
            if rep > 1:
                k = k.repeat_interleave(rep, dim=1)
            scaling = float(getattr(m, "scaling", hd ** -0.5))
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
        allowed = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(probs, nan=0.0)


def prompt_attention_score(probs: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """(B, T): head-mean attention of each query position to the prompt keys, in [0, 1]."""
    return (probs * prompt[:, None, None, :].to(probs.dtype)).sum(-1).mean(1)


def adjusted_prompt_attention(score: torch.Tensor, prompt: torch.Tensor, resp: torch.Tensor,
                              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T): the prompt share over the share uniform attention would give it, scaled to max 1.

    A query at position i sees n_keys(i) unpadded keys, n_prompt(i) of them prompt keys;
    uniform attention would put n_prompt / n_keys on the prompt, a share that falls as the
    response grows. The ratio removes that trend; dividing by each sample's largest ratio
    over its response tokens keeps the score in [0, 1] like REL's min-max. 0 off ``resp``.
    """
    keys = torch.ones_like(prompt, dtype=torch.float32) if attention_mask is None else attention_mask.float()
    n_keys = keys.cumsum(1).clamp(min=1)
    n_prompt = prompt.float().cumsum(1).clamp(min=1)
    ratio = torch.where(resp, score.float() * n_keys / n_prompt, torch.zeros_like(score, dtype=torch.float32))
    top = ratio.max(1, keepdim=True).values.clamp(min=1e-12)
    return ratio / top


def attention_score(probs: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None,
                    kind: str = "prompt_sum") -> torch.Tensor:
    """(B, T) attention term of the token score (``kind``: see :class:`SSTokenConfig`)."""
    prompt = prompt_positions(labels, attention_mask)
    score = prompt_attention_score(probs, prompt)
    if kind == "prompt_sum":
        return score
    if kind == "prompt_sum_adjusted":
        return adjusted_prompt_attention(score, prompt, response_positions(labels), attention_mask)
    raise ValueError(f"attention {kind!r}: expected one of {list(ATTENTION_SCORES)}")


# -- the selector ----------------------------------------------------------------------------

class SSToken:
    """Online token selection. Call :meth:`setup` once with the model to train.

    Per step: run the model inside ``self.capture(model)``, then :meth:`token_mask`.
    With ``history="ema"`` call :meth:`update_history` after each optimizer step.
    """

    def __init__(self, config: SSTokenConfig | None = None, history_model: nn.Module | None = None,
                 seed: int = 0) -> None:
        self.config = config or SSTokenConfig()
        self.history_model = history_model
        self.seed = seed  # the random baseline's stream
        self.last_stats: dict[str, float] = {}
        self.samples_seen: int | None = None  # samples before the current batch (all ranks)

    def setup(self, model: nn.Module) -> "SSToken":
        """Freeze a copy of ``model`` as the history model unless one was given or a column is used."""
        c = self.config
        if c.mode == "sstoken" and c.history in ("model", "ema") and c.gamma > 0 and self.history_model is None:
            self.history_model = copy.deepcopy(model)
        if self.history_model is not None:
            self.history_model.eval()
            for p in self.history_model.parameters():
                p.requires_grad_(False)
        return self

    def capture(self, model: nn.Module) -> LastLayerAttention:
        return LastLayerAttention(model)

    @torch.no_grad()
    def update_history(self, model: nn.Module) -> None:
        """EMA: theta_his <- alpha * theta_his + (1 - alpha) * theta (no-op unless history='ema')."""
        if self.config.history != "ema" or self.history_model is None:
            return
        a = self.config.ema_alpha
        for ph, p in zip(self.history_model.parameters(), model.parameters()):
            ph.mul_(a).add_(p.detach().to(ph.dtype), alpha=1 - a)

    @torch.no_grad()
    def history_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Aligned history losses, from the column or from the history model."""
        if self.config.history == "column":
            if "hist_token_loss" not in batch:
                raise KeyError("history='column' needs a hist_token_loss column in the shards")
            return batch["hist_token_loss"].float()
        if self.history_model is None:
            raise RuntimeError("SSToken.setup(model) was not called (no history model)")
        out = self.history_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        return aligned_token_losses(out.logits, batch["labels"])

    def _count_samples(self, rows: int, step: int) -> int:
        """Samples trained before this batch (all ranks), counting the batches this selector sees.

        The first call assumes every earlier step had this batch's size, so a run resumed at
        ``step`` continues the count (exact for one micro-batch per step and a fixed batch size)."""
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
        if self.samples_seen is None:
            self.samples_seen = int(step) * rows * world
        before = self.samples_seen
        self.samples_seen += rows * world
        return before

    def needs_attention(self, step: int) -> bool:
        """Whether the next batch's selection uses the attention term (run the model in :meth:`capture`)."""
        c = self.config
        seen = self.samples_seen or 0
        return c.mode == "sstoken" and (c.gamma < 1 or step < c.warmup_steps or seen < c.warmup_samples)

    def gamma_at(self, step: int, samples_before: int) -> float:
        """gamma, or 0 during the attention-only warm-up (by steps and by samples seen)."""
        c = self.config
        return 0.0 if step < c.warmup_steps or samples_before < c.warmup_samples else c.gamma

    @torch.no_grad()
    def token_mask(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, capture: LastLayerAttention | None,
                   step: int) -> torch.Tensor:
        """(B, T) bool mask of kept tokens, aligned to ``batch['labels']``."""
        c = self.config
        labels = batch["labels"]
        resp = response_positions(labels)
        if c.mode == "random":
            g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(step))
            return random_tokens(resp, c.rho, g)
        gamma = self.gamma_at(step, self._count_samples(labels.shape[0], step))
        rel = torch.zeros_like(labels, dtype=torch.float32)
        if gamma > 0:
            rel = self.history_losses(batch) - aligned_token_losses(logits.detach(), labels)
        attn = None
        if gamma < 1:
            if capture is None:
                raise ValueError("gamma < 1 or an attention-only warm-up needs the captured attention (run the "
                                 "model inside capture(), when needs_attention(step)); with gamma 1 set "
                                 "warmup_samples: 0 for a REL-only selection")
            mask = batch.get("attention_mask")
            attn = attention_score(capture.probs(mask), labels, mask, c.attention)
        keep = select_tokens(rel, attn, resp, c.rho, gamma)
        self.last_stats = {"kept": float(keep.sum()), "response": float(resp.sum()), "gamma": gamma}
        return keep


# -- offline masks -------------------------------------------------------------------------

@torch.no_grad()
def write_token_masks(src: str | Path, dst: str | Path, current_model: nn.Module, tokenizer: Any, *,
                      history_model: nn.Module | None = None, config: SSTokenConfig | None = None,
                      batch_size: int = 8, max_length: int = 1024, template: str | None = None) -> dict[str, Any]:
    """Write ``token_mask`` (list<int8>) and ``hist_token_loss`` (list<float>) into shards.

    History = ``history_model`` (the base model; default: ``current_model`` itself,
    which makes REL 0 and the selection attention-only), current = ``current_model``
    (a checkpoint). Both lists are aligned to the ids of
    :func:`thresher.training.data.tokenize_row`; tokens beyond ``max_length`` get mask 1
    and loss 0. Files are replaced atomically (``dst`` may equal ``src``).
    """
    from thresher.training.data import collate, list_shards, tokenize_row, write_shards_atomic

    cfg = config or SSTokenConfig()
    history_model = history_model if history_model is not None else current_model
    current_model.eval()
    history_model.eval()
    device = next(current_model.parameters()).device
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    add_bos = bos is not None and bos != eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    files = list_shards(src)
    out: dict[str, pa.Table] = {}
    kept = total = 0
    step = max(cfg.warmup_steps, 0)  # offline masks use the post-warm-up gamma
    selector = SSToken(cfg.model_copy(update={"history": "column", "warmup_samples": 0}))
    for f in files:
        table = pq.read_table(f)
        if not {"prompt", "response"} <= set(table.column_names):
            raise ValueError(f"{f}: ssToken masks need instruction data (prompt and response columns)")
        rows = table.to_pylist()
        masks: list[list[int]] = [[] for _ in rows]
        hists: list[list[float]] = [[] for _ in rows]
        for s in range(0, len(rows), batch_size):
            idx = list(range(s, min(s + batch_size, len(rows))))
            full, samples = [], []
            for i in idx:
                ids, plen = tokenize_row(tokenizer, rows[i], True, template=template or ALPACA_TEMPLATE,
                                         add_bos=add_bos)
                full.append(len(ids))
                t = torch.tensor(ids[:max_length])
                lab = t.clone()
                lab[:plen] = -100
                samples.append({"input_ids": t, "labels": lab})
            batch = {k: v.to(device) for k, v in collate(samples, pad).items()}
            hist = aligned_token_losses(history_model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).logits, batch["labels"])
            batch["hist_token_loss"] = hist
            with LastLayerAttention(current_model) as cap:
                logits = current_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            keep = selector.token_mask(batch, logits, cap, step)
            # prompt tokens get mask 1: the labels already exclude them; 1 keeps "not dropped" semantics
            for j, i in enumerate(idx):
                n = min(full[j], max_length)
                m = keep[j, :n].to(torch.int8).cpu().numpy()
                resp = response_positions(batch["labels"][j:j + 1])[0, :n].cpu().numpy()
                m = np.where(resp, m, 1).astype(np.int8)
                kept += int(keep[j].sum())
                total += int(resp.sum())
                masks[i] = m.tolist() + [1] * (full[j] - n)
                hists[i] = hist[j, :n].cpu().tolist() + [0.0] * (full[j] - n)
        for name, col in (("token_mask", pa.array(masks, type=pa.list_(pa.int8()))),
                          ("hist_token_loss", pa.array(hists, type=pa.list_(pa.float32())))):
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, col)
            else:
                table = table.append_column(name, col)
        out[f.name] = table
    write_shards_atomic(out, Path(dst))
    return {"files": len(files), "kept_tokens": kept, "response_tokens": total,
            "kept_fraction": kept / total if total else None}


__all__ = ["SSTokenConfig", "SSToken", "LastLayerAttention", "aligned_token_losses", "select_tokens",
           "top_tokens", "random_tokens", "minmax_per_sample", "prompt_attention_score", "write_token_masks",
           "response_positions", "prompt_positions", "keep_counts", "attention_score", "adjusted_prompt_attention"]
