"""The learning-rate schedule: linear warm-up, then cosine decay to a floor (a factor of the peak)."""

from __future__ import annotations

import math


def cosine_factor(progress: float, floor: float = 0.1) -> float:
    """Cosine decay from 1 at progress 0 to `floor` at progress >= 1."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def warmup_factor(step: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps ((step + 1) / warmup), then 1."""
    return (step + 1) / warmup if step < warmup else 1.0


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Warm-up for `warmup` steps, then cosine decay over the remaining `total - warmup`."""
    if step < warmup:
        return warmup_factor(step, warmup)
    return cosine_factor((step - warmup) / max(1, total - warmup), floor)
