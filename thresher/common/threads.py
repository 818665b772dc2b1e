"""CPU thread control for torch: per process (pool workers) and for a stretch of code.

torch is never imported here: workers of jobs without model scorers never pay for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

ENV_VAR = "THRESHER_TORCH_THREADS"


def limit_process_threads(n: int | None) -> None:
    """Cap this process's math threads at `n` (environment for libraries not yet loaded,
    and torch when it already is); None leaves everything as it is."""
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", ENV_VAR):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def apply_torch_threads(n: int | None = None) -> None:
    """Set torch's intra-op threads to `n` (None: `$THRESHER_TORCH_THREADS`, else leave torch's default)."""
    import torch

    if n is None:
        env = os.environ.get(ENV_VAR)
        n = int(env) if env else None
    if n is not None and n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (no-op for None)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
