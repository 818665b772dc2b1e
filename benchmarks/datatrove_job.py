"""The DataTrove side of benchmarks/bench_pipeline.py (run inside the DataTrove venv).

ParquetReader -> GopherRepetitionFilter -> GopherQualityFilter -> ParquetWriter (zstd),
LocalPipelineExecutor with one task per input file. Prints one JSON line on stdout:
seconds for `executor.run()` (imports excluded), documents in / kept, drop reasons and
the per-step time the executor recorded. Not imported by thresher; keep it free of
thresher imports (it runs with DataTrove's own interpreter and packages).

    python benchmarks/datatrove_job.py --input DATA --output OUT --logs LOGS --tasks 8 --workers 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

_T_IMPORT = time.perf_counter()

import datatrove  # noqa: E402
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from datatrove.pipeline.readers import ParquetReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402
from dt_bench_common import DRIVER_PID_ENV, RecordingExecutor, version_of, worker_records  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _T_IMPORT


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="folder of Parquet files")
    ap.add_argument("--output", required=True)
    ap.add_argument("--logs", required=True, help="DataTrove logging dir (must be fresh: done tasks are skipped)")
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--filters", default="repetition,quality",
                    help="comma list, in order: repetition, quality")
    args = ap.parse_args()
    os.environ[DRIVER_PID_ENV] = str(os.getpid())

    steps = [ParquetReader(args.input, text_key="text", id_key="id", glob_pattern="*.parquet")]
    for name in [f for f in args.filters.split(",") if f]:
        steps.append({"repetition": GopherRepetitionFilter, "quality": GopherQualityFilter}[name]())
    steps.append(ParquetWriter(args.output, compression=args.compression))
    cpu_dir = os.path.join(args.logs, "_worker_cpu")
    os.makedirs(cpu_dir, exist_ok=True)

    executor = RecordingExecutor(pipeline=steps, tasks=args.tasks, workers=args.workers, logging_dir=args.logs)
    executor.record_dir = cpu_dir
    t0 = time.perf_counter()
    executor.run()
    run_s = time.perf_counter() - t0

    stats_path = os.path.join(args.logs, "stats.json")
    with open(stats_path) as f:
        stats = json.load(f)
    steps_out = []
    for st in stats:
        entry = {"name": st.get("name"), "seconds_total": None, "stats": {}}
        time_stats = st.get("time_stats") or {}
        entry["seconds_total"] = time_stats.get("total")
        for k, v in (st.get("stats") or {}).items():
            entry["stats"][k] = v.get("total") if isinstance(v, dict) else v
        steps_out.append(entry)
    per_pid = {pid: rec["cpu_s"] for pid, rec in worker_records(cpu_dir).items()}
    out_files = sorted(glob.glob(os.path.join(args.output, "*.parquet")))
    try:
        import pyarrow.parquet as pq

        kept = sum(pq.ParquetFile(p).metadata.num_rows for p in out_files)
    except Exception:  # pragma: no cover - pyarrow is a datatrove[io] dependency
        kept = None
    print(json.dumps({
        "datatrove_version": getattr(datatrove, "__version__", None) or version_of("datatrove"),
        "python": sys.version.split()[0],
        "import_seconds": round(IMPORT_SECONDS, 3),
        "run_seconds": round(run_s, 3),
        "kept": kept,
        "worker_cpu_seconds": round(sum(per_pid.values()), 3),
        "worker_pids": len(per_pid),
        "output_files": [os.path.basename(p) for p in out_files],
        "output_bytes": sum(os.path.getsize(p) for p in out_files),
        "steps": steps_out,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
