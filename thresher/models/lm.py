"""Causal-LM token losses computed in fp32 from the logits (shared by scorers and selectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of a causal LM for a right-padded batch: shape (batch, length, vocab)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """Per row, the fp32 NLL of tokens 1..len-1 given their prefix (float32 tensors on CPU).

    Only real (unpadded) positions are computed; logits are upcast one row at a time so a
    bf16 batch never needs a full fp32 copy, and results leave the device in one transfer.
    """
    parts: list[torch.Tensor] = []
    for row, n in enumerate(lengths):
        if n < 2:
            parts.append(logits.new_zeros(0, dtype=torch.float32))
            continue
        parts.append(F.cross_entropy(logits[row, : n - 1].float(), input_ids[row, 1:n], reduction="none"))
    flat = torch.cat(parts).detach().to("cpu", torch.float32)
    return list(torch.split(flat, [max(0, n - 1) for n in lengths]))
