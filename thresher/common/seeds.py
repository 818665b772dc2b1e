"""Deterministic randomness: every stream is derived from the job seed and named parts.

- `derive_seed(*ints)`: a seed for a numpy/torch generator from integers (job seed, block
  id, purpose tag, step); streams with different parts never overlap.
- `stable_hash(*parts)`: a 63-bit hash of printable parts (ids, names), the same in every
  process and on every machine: membership decisions such as "is this id in the sample"
  are a pure function of (seed, id), so any worker computes them and engines agree.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (job seed, block id, purpose, step)."""
    ss = np.random.SeedSequence([abs(int(p)) for p in parts])
    return int(ss.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))


def stable_hash(*parts: Any) -> int:
    """A 63-bit hash of any printable parts (stable across processes and machines)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(device: Any, *parts: int) -> Any:
    """A torch.Generator on `device` seeded with `derive_seed(*parts)`."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen
