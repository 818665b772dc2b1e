"""Per-worker caches: scorers are built and set up once per worker process.

The cache lives in an importable module (not in a driver script) so that Spark Python
workers, Beam DoFns and local pool processes all reuse one model per process across
tasks instead of reloading it for every shard.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

from thresher.common.atomic import PARENT_GONE_EXIT, guard_parent
from thresher.common.progress import set_worker_queue
from thresher.common.threads import limit_process_threads
from thresher.scorers.base import GlobalScorer, Scorer
from thresher.scorers.registry import build_scorer, scorer_class

_CACHE: dict[str, list[Scorer]] = {}
_TASK_DEVICE: str | None = None


def set_task_device(device: str | None) -> None:
    """Device for scorers whose `device` is "auto" in this process (Spark GPU tasks: "cuda:N")."""
    global _TASK_DEVICE
    _TASK_DEVICE = device


def _with_device(spec: dict[str, Any]) -> dict[str, Any]:
    if _TASK_DEVICE and spec.get("device") == "auto":
        return {**spec, "device": _TASK_DEVICE}
    return spec


def _is_global(spec: dict[str, Any]) -> bool:
    return issubclass(scorer_class(spec["type"]), GlobalScorer)  # type: ignore[arg-type]


def scorers_for(specs: list[dict[str, Any]]) -> list[Scorer]:
    """The per-batch scorers of a job, built once per process and reused."""
    key = json.dumps([specs, _TASK_DEVICE], sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = [build_scorer(_with_device(s)) for s in specs if not _is_global(s)]  # type: ignore[misc]
    return _CACHE[key]


def global_scorers(specs: list[dict[str, Any]]) -> list[GlobalScorer]:
    """The global (whole-table) scorers of a job, in job order."""
    return [build_scorer(s) for s in specs if _is_global(s)]  # type: ignore[misc]


def init_worker(torch_threads: int | None, parent_pid: int | None = None, progress_queue: Any = None) -> None:
    """Process-pool initialiser: cap math threads so workers do not oversubscribe cores.

    Only environment variables are set (torch reads them when a model scorer first imports
    it), so workers of jobs without model scorers never pay for importing torch.
    With `parent_pid` (the local engine's pool) the worker dies with that process
    (`die_with_parent`) and leaves Ctrl-C to it (the parent stops the pool).
    `progress_queue`: where this worker's progress counts go (`common.progress.Channel`)."""
    limit_process_threads(torch_threads)
    if parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(parent_pid)
    set_worker_queue(progress_queue)


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process die with `parent_pid`, its parent, and never write after it is gone.

    Linux: the kernel sends SIGKILL when the parent exits (`prctl(PR_SET_PDEATHSIG)`), even
    when it was SIGKILLed itself (strictly: when the parent's thread that started the worker
    ends; the pool starts its workers from the thread that runs the job). Everywhere: before
    every commit (`common.atomic.commit_point`) the worker checks that its parent is still
    `parent_pid`, and exits without writing if not."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the commit-time check still holds
            pass
    guard_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(PARENT_GONE_EXIT)
