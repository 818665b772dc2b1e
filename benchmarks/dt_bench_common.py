"""What the DataTrove-side benchmark scripts share (`datatrove_job.py`, `datatrove_minhash_job.py`).

Runs inside the DataTrove venv: no thresher imports. The scripts are started as
`python benchmarks/<script>.py`, so this folder is on `sys.path`.
"""

from __future__ import annotations

import json
import os
import resource

from datatrove.executor import LocalPipelineExecutor

DRIVER_PID_ENV = "DT_BENCH_DRIVER_PID"  # set by the driver before `run()`: workers re-import the script


class RecordingExecutor(LocalPipelineExecutor):
    """Each pool worker writes its own CPU seconds and peak RSS after every task it runs, to
    `record_dir/<pid>-<rank>.json` (cumulative per process: take the largest per pid).

    The pool workers are children of DataTrove's forkserver, not of the driver, so the driver's
    RUSAGE_CHILDREN never sees their CPU time; this fills that gap."""

    record_dir: str = ""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):  # type: ignore[override]
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            if str(os.getpid()) != os.environ.get(DRIVER_PID_ENV) and self.record_dir:
                r = resource.getrusage(resource.RUSAGE_SELF)
                with open(os.path.join(self.record_dir, f"{os.getpid()}-{rank}.json"), "w") as f:
                    json.dump({"pid": os.getpid(), "rank": rank, "cpu_s": r.ru_utime + r.ru_stime,
                               "maxrss_mb": vm_hwm_mb()}, f)


def worker_records(record_dir: str) -> dict[int, dict]:
    """The last (largest, cumulative) record of every worker process, by pid."""
    out: dict[int, dict] = {}
    for name in os.listdir(record_dir):
        if name.endswith(".json"):
            with open(os.path.join(record_dir, name)) as f:
                rec = json.load(f)
            if rec["pid"] not in out or rec["cpu_s"] > out[rec["pid"]]["cpu_s"]:
                out[rec["pid"]] = rec
    return out


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the RSS of the process it was forked
    from across an exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def version_of(name: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None
