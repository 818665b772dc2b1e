"""Engine throughput: local vs Spark local[2] vs Beam DirectRunner on the same job and data.

    .venv/bin/python benchmarks/bench_engines.py                  # 200k docs in 8 files
    .venv/bin/python benchmarks/bench_engines.py --docs 40000     # quick

Job: scorer `heuristics`, filter `heuristics_pass == true`, selector top-k by `n_words`
(budget 0.5); every engine uses 2 workers (local: 2 processes; Spark: local[2]; Beam:
DirectRunner multi_processing, direct_num_workers=2).

Each engine runs in its own subprocess (`--child ENGINE`), which measures separately:
- start-up: Spark session (JVM) start; for every engine a warm-up job on a small corpus
  (2 files, `--warmup-docs` rows), whose stage times are the per-job / per-pipeline
  start-up cost (Spark: first Python workers and imports; Beam: SDK worker processes,
  started again for each pipeline, i.e. each map stage);
- the main job: stage timings from the manifest. Steady-state throughput is
  rows / (score + write) of the main job; for Beam also with the warm-up job's per-stage
  time subtracted (its pipeline start-up recurs in every stage).
Outputs are checked equal across engines (selected ids). Wall-clock numbers on a shared
machine: the load average is recorded next to them.

Writes benchmarks/results/engines.json and engines.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from corpus import write_corpus  # noqa: E402

ENGINES = {
    "local": {"name": "local", "local": {"workers": 2}},
    "spark": {"name": "spark", "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": "false",
                                                                        "spark.ui.showConsoleProgress": "false"}}},
    "beam": {"name": "beam", "beam": {"runner": "DirectRunner",
                                      "options": {"direct_num_workers": 2, "direct_running_mode": "multi_processing"}}},
}


def job(input_path: str, out: str, engine: str) -> dict[str, Any]:
    return {"name": f"bench-{engine}", "seed": 0, "input": {"path": input_path},
            "scorers": [{"type": "heuristics"}], "filters": [{"column": "heuristics_pass", "value": True}],
            "selector": {"type": "topk", "column": "n_words", "budget": 0.5},
            "engine": ENGINES[engine], "output": {"path": out, "overwrite": True}}


class TreeCPU:
    """CPU seconds (user + system) of this process and all its descendants (JVM, Python
    workers, Beam SDK workers), sampled every 0.2 s by a thread; a process keeps its last
    sample after it exits (the slice since that sample is lost: small for long-lived workers)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._me = psutil.Process()
        self._seen: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        procs = [self._me]
        try:
            procs += self._me.children(recursive=True)
        except psutil.Error:
            pass
        for p in procs:
            try:
                t = p.cpu_times()
                key = (p.pid, p.create_time())
            except psutil.Error:
                continue
            with self._lock:
                self._seen[key] = max(self._seen.get(key, 0.0), t.user + t.system)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def total(self) -> float:
        self._sample()
        with self._lock:
            return sum(self._seen.values())

    def stop(self) -> None:
        self._stop.set()


def child(engine: str, corpus: str, warmup: str, out: str) -> dict[str, Any]:
    """Run in a fresh process: start-up, warm-up job, main job; return the measurements."""
    from thresher import run

    cpu = TreeCPU()
    res: dict[str, Any] = {"engine": engine}
    session = None
    if engine == "spark":
        from thresher.config import SparkEngineSpec
        from thresher.pipelines.spark_engine import get_session

        t = time.perf_counter()
        spec = SparkEngineSpec(**ENGINES["spark"]["spark"])
        session, _ = get_session(spec, progress=False)
        res["session_start_s"] = round(time.perf_counter() - t, 2)
    try:
        t = time.perf_counter()
        w = run(job(warmup, os.path.join(out, "warmup"), engine), progress=False)
        res["warmup_job_s"] = round(time.perf_counter() - t, 2)
        res["warmup_timings"] = w.manifest["timings"]
        res["warmup_rows"] = w.manifest["counts"]["input_rows"]
        c0 = cpu.total()
        res["startup_cpu_s"] = round(c0, 2)
        t = time.perf_counter()
        m = run(job(corpus, os.path.join(out, "main"), engine), progress=False)
        res["main_job_s"] = round(time.perf_counter() - t, 2)
        res["main_cpu_s"] = round(cpu.total() - c0, 2)
        res["timings"] = m.manifest["timings"]
        res["rows"] = m.manifest["counts"]["input_rows"]
        res["selected"] = m.manifest["counts"]["selected"]
        import pyarrow.parquet as pq

        ids = sorted(i for p in sorted(Path(out, "main").glob("part-*.parquet"))
                     for i in pq.read_table(p, columns=["id"]).column("id").to_pylist())
        import hashlib

        res["selected_ids_sha256"] = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    finally:
        if session is not None:
            session.stop()
        cpu.stop()
    return res


def derive(r: dict[str, Any]) -> dict[str, Any]:
    t, w = r["timings"], r["warmup_timings"]
    map_s = t["score"] + t["write"]
    d = {"map_s": round(map_s, 2), "steady_docs_s": round(r["rows"] / map_s)}
    if r["engine"] == "beam":
        startup = w["score"] + w["write"]  # two pipelines' start-up (+ a tiny amount of work)
        d["pipeline_startup_per_stage_s"] = round(startup / 2, 2)
        d["steady_docs_s_minus_startup"] = round(r["rows"] / max(map_s - startup, 1e-9))
    if r["engine"] == "spark":
        d["first_job_startup_s"] = round(w["score"] + w["write"], 2)
    d["end_to_end_docs_s"] = round(r["rows"] / (r["main_job_s"] + r.get("session_start_s", 0)))
    d["main_docs_per_cpu_s"] = round(r["rows"] / max(r["main_cpu_s"], 1e-9))
    return d


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    local = next(r for r in rows if r["engine"] == "local")
    lines = [
        "# Engine throughput: local vs Spark vs Beam",
        "",
        f"Corpus: {meta['docs']:,} docs in {meta['files']} Parquet files ({meta['bytes'] / 1e6:.0f} MB); job: "
        "heuristics scorer, filter heuristics_pass, top-k n_words 0.5; 2 workers per engine.",
        f"Machine: {meta['machine']}; load average before/after: {meta['load_before']} / {meta['load_after']}"
        " (a shared machine: compare ratios, expect +-20%).",
        "",
        "| engine | start-up | main job (s) | score (s) | write (s) | steady docs/s | vs local | "
        "main job CPU-s | docs/CPU-s (vs local) | end-to-end docs/s | same selection |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["derived"]
        if r["engine"] == "spark":
            start = f"session {r['session_start_s']} s + first job {d['first_job_startup_s']} s"
        elif r["engine"] == "beam":
            start = f"{d['pipeline_startup_per_stage_s']} s per pipeline (each map stage)"
        else:
            start = f"pool {r['warmup_job_s']} s (warm-up job)"
        steady = f"{d['steady_docs_s']:,}"
        ratio = f"{d['steady_docs_s'] / local['derived']['steady_docs_s']:.2f}x"
        if "steady_docs_s_minus_startup" in d:
            steady += f" ({d['steady_docs_s_minus_startup']:,} without start-up)"
            ratio += f" ({d['steady_docs_s_minus_startup'] / local['derived']['steady_docs_s']:.2f}x)"
        same = "yes" if r["selected_ids_sha256"] == local["selected_ids_sha256"] else "NO"
        per_cpu = d["main_docs_per_cpu_s"]
        cpu_ratio = per_cpu / local["derived"]["main_docs_per_cpu_s"]
        lines.append(f"| {r['engine']} | {start} | {r['main_job_s']} | {r['timings']['score']:.2f} | "
                     f"{r['timings']['write']:.2f} | {steady} | {ratio} | {r['main_cpu_s']} | "
                     f"{per_cpu:,} ({cpu_ratio:.2f}x) | {d['end_to_end_docs_s']:,} | {same} |")
    lines += [
        "",
        "- steady docs/s = input docs / (score + write stage time) of the main job, after a warm-up job in "
        "the same process (Spark: session and Python workers already up).",
        "- main job CPU-s: user + system CPU seconds of the engine's whole process tree (driver, JVM, "
        "Python/SDK workers) during the main job; docs/CPU-s is the load-independent efficiency figure.",
        "- end-to-end docs/s includes the Spark session start and every pipeline start-up (a fresh process).",
        "- Beam starts its SDK worker processes again for each pipeline (one per map stage); the figure in "
        "brackets subtracts the warm-up job's per-stage time.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--warmup-docs", type=int, default=2_000)
    ap.add_argument("--engines", default="local,spark,beam")
    ap.add_argument("--corpus", help="corpus folder (reused when it matches)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        c = json.loads(args.child_args)
        print("RESULT " + json.dumps(child(args.child, c["corpus"], c["warmup"], c["out"])))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    corpus_dir = Path(args.corpus) if args.corpus else Path(tempfile.gettempdir()) / f"thresher-corpus-{args.docs}"
    meta = write_corpus(corpus_dir, args.docs, args.files, seed=0)
    if "local" not in args.engines.split(","):
        ap.error("--engines must include local (the reference)")
    write_corpus(work / "warmup", args.warmup_docs, 2, seed=1)
    info = {"docs": meta["rows"], "files": args.files, "bytes": meta["bytes"],
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    rows = []
    for engine in args.engines.split(","):
        cargs = json.dumps({"corpus": str(corpus_dir / "data"), "warmup": str(work / "warmup" / "data"),
                            "out": str(work / engine)})
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", engine, "--child-args", cargs],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{engine}: failed")
        r = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        r["process_s"] = round(time.perf_counter() - t, 2)
        r["derived"] = derive(r)
        rows.append(r)
        print(f"{engine}: {r['derived']} (process {r['process_s']} s)", flush=True)
    info["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    shutil.rmtree(work, ignore_errors=True)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps({"meta": info, "runs": rows}, indent=1))
    text = render(info, rows)
    (out / "engines.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
