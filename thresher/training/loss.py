"""The training objective: weighted and token-masked next-token loss for any loop.

:func:`masked_loss` is the stateless function (logits, labels, optional token mask and
sample weights). :class:`Objective` wraps a model call and adds the online methods:
ssToken token selection and loss-based sample reweighting; it is what the reference
trainer and the Hugging Face ``Trainer`` mix-in both call.

Reduction rules:
* no weights: mean over all kept tokens of the batch (the usual SFT/pretraining loss);
* offline ``weight`` column: sum_b w_b * loss_b / sum_b w_b over per-sample mean losses;
* online reweighting: sum_local w_b * (n_b / sum_local n) * loss_b * world_size * B_local
  (SPEC 4.2 step 6, the official GPT-2 trainer's token-share form: uniform weights give the
  token mean above).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from thresher.training.reweight import LossReweighter, ReweightConfig, per_sample_loss, token_loss_matrix
from thresher.training.sstoken import SSToken, SSTokenConfig

MODEL_INPUTS = ("input_ids", "attention_mask")


def kept_tokens(labels: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T-1) bool: shifted targets that carry loss (label != -100 and mask set)."""
    keep = labels[:, 1:] != -100
    if token_mask is not None:
        keep = keep & token_mask[:, 1:].bool()
    return keep


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, token_mask: torch.Tensor | None = None,
                sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token loss for a plain PyTorch loop.

    ``labels`` are unshifted (-100 = ignore); ``token_mask`` (B, T) is aligned to labels
    (1 = token k carries loss); ``sample_weights`` (B,) give a weighted mean of per-sample
    mean losses. Without weights: mean over all kept tokens.
    """
    if sample_weights is None:
        keep = kept_tokens(labels, token_mask)
        tok = token_loss_matrix(logits, labels)
        return (tok * keep).sum() / keep.sum().clamp(min=1)
    per, n = per_sample_loss(logits, labels, token_mask)
    w = sample_weights.to(per.dtype) * (n > 0)
    return (w * per).sum() / w.sum().clamp(min=1e-12)


@dataclass
class Objective:
    """Model call + loss with optional ssToken and online reweighting.

    Args:
        reweight: online reweighting (config or reweighter); None = off.
        sstoken: online token selection (config or selector); None = off.
        use_weight_column: use a batch ``weight`` (offline) when online reweighting is off.
        use_token_mask_column: use a batch ``token_mask`` (offline ssToken masks).
        seed: the random-token baseline's stream (the run's seed).
    """

    reweight: ReweightConfig | LossReweighter | None = None
    sstoken: SSTokenConfig | SSToken | None = None
    use_weight_column: bool = True
    use_token_mask_column: bool = True
    seed: int = 0
    last: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.reweight, ReweightConfig):
            self.reweight = LossReweighter(self.reweight)
        if isinstance(self.sstoken, SSTokenConfig):
            self.sstoken = SSToken(self.sstoken, seed=self.seed)
        self._ready = False
        self._last_step: int | None = None

    def setup(self, model: nn.Module) -> "Objective":
        """Prepare history models (ssToken); call once before training."""
        if isinstance(self.sstoken, SSToken):
            self.sstoken.setup(model)
        self._ready = True
        return self

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, Any]:
        """Loss for ``batch`` at optimizer step ``step``, and the model outputs."""
        if not self._ready:
            self.setup(model)
        sst = self.sstoken if isinstance(self.sstoken, SSToken) else None
        if sst is not None and self._last_step is not None and step > self._last_step:
            sst.update_history(model)  # EMA after each optimizer step (no-op otherwise)
        self._last_step = step
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if sst is not None and sst.needs_attention(step):
            with sst.capture(model) as cap:
                outputs = model(**inputs)
        else:
            cap = None
            outputs = model(**inputs)
        logits = outputs.logits
        labels = batch["labels"]
        mask = batch.get("token_mask") if self.use_token_mask_column else None
        if sst is not None:
            sel = sst.token_mask(batch, logits, cap, step)
            mask = sel if mask is None else (mask.bool() & sel)
        info: dict[str, Any] = {}
        if isinstance(self.reweight, LossReweighter):
            per, n = per_sample_loss(logits, labels, mask)
            valid = n > 0
            # every rank calls the all-gather, even with no valid sample (else ranks deadlock)
            loss = self.reweight.loss(per[valid], step, n[valid]) + per.sum() * 0
            w = self.reweight.last_weights
            if w is not None and w.numel():
                info["weight_max_over_min"] = float(w.max() / w.min().clamp(min=1e-30))
        else:
            weights = batch.get("weight") if self.use_weight_column else None
            loss = masked_loss(logits, labels, mask, weights)
        if mask is not None:
            info["kept_fraction"] = float(kept_tokens(labels, mask).sum() / kept_tokens(labels).sum().clamp(min=1))
        self.last = info
        return loss, outputs
