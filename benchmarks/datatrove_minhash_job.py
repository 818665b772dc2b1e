"""The DataTrove side of benchmarks/bench_dedup.py (run inside the DataTrove venv).

DataTrove's MinHash deduplication, all four stages, each a LocalPipelineExecutor run after the
previous one (as in DataTrove's examples/minhash_deduplication.py):

1. MinhashDedupSignature: ParquetReader -> signatures, one task per input file;
2. MinhashDedupBuckets: one task per bucket (DataTrove needs a multiple of num_buckets);
3. MinhashDedupCluster: one task (union-find in one process), with `save_cluster_id` so every
   clustered document's cluster can be scored against the planted truth;
4. MinhashDedupFilter: ParquetReader -> filter -> ParquetWriter (zstd), one task per input file.

`--workers` tasks run at a time. Prints one JSON line: seconds and CPU seconds of the four
stages (this process plus every pool worker: the workers are children of DataTrove's
forkserver, not of this process, so each records its own CPU time and peak RSS (VmHWM) after
every task it runs), the peak RSS of this process and of the largest worker, documents in and kept.
After the timed part it writes `--found` (Parquet: id, cluster (-1 outside a cluster),
removed), read from DataTrove's own `.clusters` and `.remove` files, so the caller can score
DataTrove's clusters. Not imported by thresher; no thresher imports (it runs with DataTrove's
interpreter and packages).

    python benchmarks/datatrove_minhash_job.py --input DATA --work WORK --found FOUND.parquet \
        --buckets 25 --rows 5 --ngram 5 --workers 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import struct
import sys
import time

_T_IMPORT = time.perf_counter()

import datatrove  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,  # noqa: E402
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import ParquetReader  # noqa: E402
from datatrove.pipeline.writers import ParquetWriter  # noqa: E402
from dt_bench_common import DRIVER_PID_ENV, RecordingExecutor, version_of, vm_hwm_mb, worker_records  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _T_IMPORT


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def reader(folder: str) -> ParquetReader:
    return ParquetReader(folder, text_key="text", id_key="id", glob_pattern="*.parquet")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="folder of Parquet files (id, text)")
    ap.add_argument("--work", required=True, help="fresh folder for signatures, buckets, clusters, output, logs")
    ap.add_argument("--found", required=True, help="Parquet file to write (id, cluster, removed)")
    ap.add_argument("--buckets", type=int, required=True)
    ap.add_argument("--rows", type=int, required=True, help="hashes per bucket")
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ[DRIVER_PID_ENV] = str(os.getpid())
    files = sorted(glob.glob(os.path.join(args.input, "*.parquet")))
    w = args.work
    record = os.path.join(w, "_worker_records")
    os.makedirs(record, exist_ok=True)
    config = MinhashConfig(n_grams=args.ngram, num_buckets=args.buckets, hashes_per_bucket=args.rows)

    stages = [
        ("signatures", [reader(args.input), MinhashDedupSignature(output_folder=f"{w}/signatures", config=config)],
         len(files)),
        ("buckets", [MinhashDedupBuckets(input_folder=f"{w}/signatures", output_folder=f"{w}/buckets", config=config)],
         args.buckets),
        ("cluster", [MinhashDedupCluster(input_folder=f"{w}/buckets", output_folder=f"{w}/remove_ids", config=config,
                                         save_cluster_id=True)], 1),
        ("filter", [reader(args.input), MinhashDedupFilter(input_folder=f"{w}/remove_ids"),
                    ParquetWriter(f"{w}/deduped", compression="zstd")], len(files)),
    ]
    seconds: dict[str, float] = {}
    cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for name, pipeline, tasks in stages:
        t = time.perf_counter()
        ex = RecordingExecutor(pipeline=pipeline, tasks=tasks, workers=min(args.workers, tasks),
                               logging_dir=f"{w}/logs/{name}")
        ex.record_dir = record
        ex.run()
        seconds[name] = round(time.perf_counter() - t, 3)
    run_s = time.perf_counter() - t0
    own_cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu0
    driver_rss = vm_hwm_mb()
    workers = worker_records(record)

    # -- after the timed part: DataTrove's clusters and removals, by document id --------------
    ids, clusters, removed = [], [], []
    for rank, path in enumerate(files):  # rank r reads file r (one file per task)
        file_ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        cl = [-1] * len(file_ids)
        rm = [False] * len(file_ids)
        cpath = f"{w}/remove_ids/{rank:06d}.clusters"
        if os.path.exists(cpath):
            with open(cpath, "rb") as f:
                data = f.read()
            for doc, cid in struct.iter_unpack("<2I", data):
                cl[doc] = cid
        rpath = f"{w}/remove_ids/{rank:06d}.remove"
        if os.path.exists(rpath):
            with open(rpath, "rb") as f:
                data = f.read()
            for (doc,) in struct.iter_unpack("<I", data):
                rm[doc] = True
        ids += file_ids
        clusters += cl
        removed += rm
    pq.write_table(pa.table({"id": ids, "cluster": pa.array(clusters, pa.int64()), "removed": removed}), args.found)
    out_files = sorted(glob.glob(f"{w}/deduped/*.parquet"))
    kept_ids = [i for p in out_files for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    expected = {i for i, r in zip(ids, removed) if not r}
    print(json.dumps({
        "datatrove_version": getattr(datatrove, "__version__", None) or version_of("datatrove"),
        "python": sys.version.split()[0],
        "import_seconds": round(IMPORT_SECONDS, 3),
        "run_seconds": round(run_s, 3),
        "stage_seconds": seconds,
        "cpu_seconds": round(own_cpu + sum(r["cpu_s"] for r in workers.values()), 3),
        "driver_cpu_seconds": round(own_cpu, 3),
        "worker_processes": len(workers),
        "driver_peak_rss_mb": round(driver_rss, 1),
        "worker_peak_rss_mb": round(max([r["maxrss_mb"] for r in workers.values()] or [0.0]), 1),
        "docs_in": len(ids),
        "kept": len(kept_ids),
        "kept_matches_remove_files": set(kept_ids) == expected and len(kept_ids) == len(expected),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
