"""In-context contribution (ICon / RICo, SPEC section 2): perplexity of assessment responses
with and without a candidate as a one-shot demonstration, scored with prefix sharing.

Layout of one scored sequence (SPEC 2.4): ``[bos] context "\\n\\n\\n" x_i y_i`` where the context
is the candidate ``x_j‖y_j`` (or a random-character string of the same character length, the
RICo control), ``x_i`` is the templated assessment prompt and ``y_i`` its response. Every piece
is tokenised on its own without special tokens (the tokenizer's BOS, if it adds one, appears
once at the very start), and only the ``y_i`` tokens are scored.

Speed (``ICLEngine.continuation_nll``; ``full_sequence_nll`` is the naive one-pair-at-a-time
reference with the same results):

- prefix sharing: the context is the *prefix*; it runs once, its KV cache is kept and every
  assessment continuation is scored against it in right-padded batches (the cache enters each
  batch as expanded views of the one prefix run);
- shared item head: the token prefix common to all assessment items (the template header,
  e.g. Alpaca's "Below is an instruction ... ### Instruction:\n") joins the prefix, so each
  continuation only runs its item-specific tokens. It is found on the token ids the items
  already have (their longest common prefix), so tokenisation is unchanged and the scored
  sequence is token-for-token the naive one;
- length-sorted batches (longest first) keep padding low; batch rows are bounded by
  continuation tokens and by the expanded prefix cache (``max_cache_tokens``);
- logits only where needed: the LM head runs on the positions from the batch's first scored
  token on (``logits_to_keep``), and only on the last position of the prefix.

Log-probabilities are float32 whatever the model dtype.
"""

from __future__ import annotations

import inspect
import string
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from thresher.common.seeds import stable_hash
from thresher.common.templates import ALPACA_TEMPLATE

SEPARATOR = "\n\n\n"
RANDOM_CHARS = string.ascii_letters + string.digits + string.punctuation + " "
EPS = 1e-6
PHI_SLOPE = 50.0
PHI_CLAMP = 0.5


# -- pure functions ---------------------------------------------------------------------------
def phi(x: np.ndarray | float) -> np.ndarray:
    """Significance map: 2/(1+exp(-50x)) - 1 for |x| <= 0.5, sign(x) beyond (odd, monotone)."""
    x = np.asarray(x, dtype=np.float64)
    inner = 2.0 / (1.0 + np.exp(-PHI_SLOPE * np.clip(x, -PHI_CLAMP, PHI_CLAMP))) - 1.0
    return np.where(np.abs(x) <= PHI_CLAMP, inner, np.sign(x))


def in_sample(ids: Sequence[str], seed: int, fraction: float) -> np.ndarray:
    """Which ids are in the ICL-scored sample: hash(seed, id) / 2^63 < fraction (all when >= 1)."""
    if fraction >= 1.0:
        return np.ones(len(ids), dtype=bool)
    return np.array([stable_hash("icon-sample", seed, i) / float(1 << 63) < fraction for i in ids], dtype=bool)


def random_context(n_chars: int, seed: int, key: str) -> str:
    """`n_chars` characters uniform over letters, digits, punctuation and space, seeded by (seed, key)."""
    rng = np.random.default_rng(stable_hash("icon-random-context", seed, key))
    return "".join(np.array(list(RANDOM_CHARS))[rng.integers(0, len(RANDOM_CHARS), n_chars)])


def contributions(real_ppl: np.ndarray, base_ppl: np.ndarray, rand_ppl: np.ndarray | None) -> np.ndarray:
    """c_ij = (PPL(S_i|random) - PPL(S_i|T_j)) / (PPL(S_i) + 1e-6); without control the random
    term is replaced by the base PPL (the v1-style ablation)."""
    ref = base_ppl if rand_ppl is None else rand_ppl
    return (np.asarray(ref, np.float64) - np.asarray(real_ppl, np.float64)) / (np.asarray(base_ppl, np.float64) + EPS)


def summarize(c: np.ndarray) -> dict[str, float]:
    """Per-candidate statistics over assessment items: score (mean), consistency, stability, coverage."""
    c = np.asarray(c, dtype=np.float64)
    return {"score": float(c.mean()), "consistency": float((c > 0).mean()),
            "stability": float(c.var()), "coverage": float((c > 0.5).mean())}


def top_k_labels(values: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """Labels y = values >= the (1-k) quantile (SPEC 2.4) and that threshold."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no scored candidates to label")
    threshold = float(np.quantile(values, 1.0 - k))
    return values >= threshold, threshold


# -- scoring ----------------------------------------------------------------------------------
@dataclass
class Item:
    """One assessment continuation: ids = x_i + y_i; the last `n_scored` ids (y_i) are scored."""

    ids: list[int]
    n_scored: int

    @property
    def start(self) -> int:
        return len(self.ids) - self.n_scored


def shared_prefix_len(items: Sequence[Item]) -> int:
    """Length of the token prefix shared by all items that leaves every scored token, and at
    least one token per item, to the continuation (0 for no items)."""
    if not items:
        return 0
    ref = items[0].ids
    k = min(min(it.start for it in items), min(len(it.ids) for it in items) - 1)
    for it in items[1:]:
        if k <= 0:
            return 0
        if it.ids[:k] != ref[:k]:
            k = next(t for t, (a, b) in enumerate(zip(it.ids[:k], ref[:k])) if a != b)
    return max(k, 0)


def _cache_arg(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _keep_arg(model: torch.nn.Module) -> str | None:
    """The forward keyword that limits the LM head to the last positions, if the model has one."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


@dataclass
class ICLEngine:
    """Tokenisation and batched prefix-shared scoring for one causal LM."""

    model: Any
    tokenizer: Any
    device: torch.device
    template: str = ALPACA_TEMPLATE
    separator: str = SEPARATOR
    max_prompt_tokens: int = 1024
    max_context_tokens: int = 2040
    max_target_tokens: int = 1024
    max_tokens_per_batch: int = 2048
    max_positions: int | None = None
    bos: list[int] = field(default_factory=list)
    max_cache_tokens: int | None = None
    share_items_prefix: bool = True
    trim_logits: bool = True

    def __post_init__(self) -> None:
        if "{prompt}" not in self.template:
            raise ValueError("template must contain '{prompt}'")
        from thresher.models.batching import special_frame

        if not self.bos:
            self.bos = list(special_frame(self.tokenizer)[0])
        self.sep_ids = self.encode(self.separator)
        self._cache_kw = _cache_arg(self.model)
        self._keep_kw = _keep_arg(self.model)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def candidate_text(self, prompt: str, response: str) -> str:
        """x_j‖y_j: the templated prompt followed by the response."""
        return self.template.format(prompt=prompt) + response

    def item(self, prompt: str, response: str) -> Item:
        """An assessment item: templated prompt (truncated) then response (truncated)."""
        x = self.encode(self.template.format(prompt=prompt))[: self.max_prompt_tokens]
        y = self.encode(response)[: self.max_target_tokens]
        if not y:
            raise ValueError(f"assessment response {response[:40]!r} has no tokens")
        return Item(x + y, len(y))

    def context_ids(self, text: str, items: Sequence[Item]) -> list[int]:
        """[bos] + context (truncated to fit the model with the longest item) + separator."""
        budget = self.max_context_tokens
        if self.max_positions is not None:
            longest = max((len(it.ids) for it in items), default=0)
            room = self.max_positions - longest - len(self.sep_ids) - len(self.bos)
            if room < 1:
                raise ValueError(f"assessment items of {longest} tokens leave no room for a context in a model "
                                 f"of {self.max_positions} positions; lower max_prompt_tokens/max_target_tokens")
            budget = min(budget, room)
        return self.bos + self.encode(text)[:budget] + self.sep_ids

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any = None, use_cache: bool = False,
                 keep: int | None = None) -> Any:
        """One model call; `keep` > 0 limits the logits to the last `keep` positions (when supported)."""
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": use_cache}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if keep and self.trim_logits and self._keep_kw is not None and keep < ids.shape[1]:
            kwargs[self._keep_kw] = keep
        return self.model(**kwargs)

    def _plan(self, items: Sequence[Item], extra: int) -> list[list[int]]:
        """Item indices per batch, longest first: rows x width within `max_tokens_per_batch` and
        rows x (width + extra), the expanded prefix cache and attention span, within
        `max_cache_tokens` (default `max_tokens_per_batch`). On an idle CPU larger cache budgets
        were no faster (benchmarks/results/icon.md); under heavy CPU contention they were."""
        cache_budget = self.max_cache_tokens or self.max_tokens_per_batch
        order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
        batches: list[list[int]] = []
        for i in order:
            if batches:
                cur = batches[-1]
                width = len(items[cur[0]].ids)
                rows = len(cur) + 1
                if rows * width <= self.max_tokens_per_batch and rows * (width + extra) <= cache_budget:
                    cur.append(i)
                    continue
            batches.append([i])
        return batches

    @torch.inference_mode()
    def continuation_nll(self, prefix: Sequence[int], items: Sequence[Item],
                         share_items_prefix: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed fp32 NLL of each item's scored tokens given `prefix`, and their counts.

        The prefix, extended by the tokens all items share (`shared_prefix_len`; off with
        `share_items_prefix=False`), runs once; its KV cache is shared (expanded) across
        right-padded batches of the item-specific continuations. An empty prefix with nothing
        shared scores the items alone (their first token is then never scored).
        """
        share = self.share_items_prefix if share_items_prefix is None else share_items_prefix
        h = shared_prefix_len(items) if share else 0
        if h:
            prefix = list(prefix) + items[0].ids[:h]
            items = [Item(it.ids[h:], it.n_scored) for it in items]
        return self._batched_nll(list(prefix), items)

    def _batched_nll(self, prefix: list[int], items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        n = len(items)
        total, count = np.zeros(n, np.float64), np.zeros(n, np.int64)
        last_logits = None
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if prefix:
            p = torch.tensor([prefix], dtype=torch.long, device=self.device)
            out = self._forward(p, torch.ones_like(p), use_cache=True, keep=1)
            cache = out.get("cache", None) if hasattr(out, "get") else None
            cache = cache if cache is not None else out.past_key_values
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            last_logits = out.logits[0, -1:, :]
            del out, cache
        plen = len(prefix)
        for group in self._plan(items, plen):
            rows = [items[i] for i in group]
            width = max(len(r.ids) for r in rows)
            # first scored token per row (position 0 has no prediction without a prefix)
            lo = [max(it.start, 0 if prefix else 1) for it in rows]
            first = min(min(lo), width)
            keep = max(width - max(first - 1, 0), 1)  # logits for positions first-1 .. width-1
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), plen + width), dtype=torch.long)
            mask[:, :plen] = 1
            for r, it in enumerate(rows):
                ids[r, : len(it.ids)] = torch.tensor(it.ids)
                mask[r, plen: plen + len(it.ids)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            if prefix:
                from transformers import DynamicCache

                b = len(rows)
                shared = DynamicCache([(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layers],
                                      config=self.model.config)
                logits = self._forward(ids, mask, cache=shared, use_cache=True, keep=keep).logits
                del shared
            else:
                logits = self._forward(ids, mask[:, plen:], keep=keep).logits
            off = width - logits.shape[1]  # position of logits[:, 0]
            for r, (i, it) in enumerate(zip(group, rows)):
                a, z = lo[r], len(it.ids)
                if z <= a:
                    continue
                # token t is predicted at position t-1; the prefix's last position predicts t = 0
                pred = logits[r, max(a - 1, 0) - off: z - 1 - off]
                if a == 0:
                    pred = torch.cat([last_logits, pred], dim=0)
                total[i] = float(F.cross_entropy(pred.float(), ids[r, a:z], reduction="sum"))
                count[i] = z - a
            del logits
        return total, count

    @torch.inference_mode()
    def full_sequence_nll(self, prefix: Sequence[int], items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        """The naive reference: one full forward of prefix + item per pair (same outputs)."""
        total, count = np.zeros(len(items), np.float64), np.zeros(len(items), np.int64)
        for i, it in enumerate(items):
            seq = list(prefix) + it.ids
            ids = torch.tensor([seq], dtype=torch.long, device=self.device)
            logits = self._forward(ids, torch.ones_like(ids)).logits[0]
            lo = max(len(prefix) + it.start, 1)
            if lo >= len(seq):
                continue
            total[i] = float(F.cross_entropy(logits[lo - 1: len(seq) - 1].float(), ids[0, lo:], reduction="sum"))
            count[i] = len(seq) - lo
        return total, count

    def ppl(self, prefix: Sequence[int], items: Sequence[Item], naive: bool = False) -> np.ndarray:
        """Perplexity of each item's response given `prefix` (exp of the mean token NLL)."""
        total, count = (self.full_sequence_nll if naive else self.continuation_nll)(prefix, items)
        mean = total / np.maximum(count, 1)
        return np.exp(np.minimum(mean, 700.0))

    def base_ppl(self, items: Sequence[Item]) -> np.ndarray:
        """PPL(S_i): the items alone (after the BOS when the tokenizer adds one)."""
        return self.ppl(self.bos, items)

    def candidate_c(self, key: str, text: str, items: Sequence[Item], base: np.ndarray, seed: int,
                    random_control: bool = True, naive: bool = False) -> np.ndarray:
        """c_ij for one candidate (its context text) against every item (SPEC 2.4)."""
        real = self.ppl(self.context_ids(text, items), items, naive=naive)
        rand = None
        if random_control:
            noise = random_context(len(text), seed, key)
            rand = self.ppl(self.context_ids(noise, items), items, naive=naive)
        return contributions(real, base, rand)
