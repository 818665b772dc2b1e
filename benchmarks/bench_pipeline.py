"""End-to-end pipeline throughput: thresher vs raw pyarrow vs DataTrove, same data, same cores.

    .venv/bin/python benchmarks/bench_pipeline.py                 # 200k docs, 2 workers
    .venv/bin/python benchmarks/bench_pipeline.py --docs 20000 --datatrove-docs 8000   # quick

Steps (each one a subprocess, timed by wall clock and by the CPU seconds of the process
tree, so numbers from a busy machine can still be compared):
1. corpus: `benchmarks/corpus.py` writes N deterministic English-like documents (about a
   quarter junk) as `--files` Parquet files (reused with `--corpus DIR` / `--keep`).
2. baseline: raw pyarrow, read every file and write every row back as Parquet (zstd),
   one process per file, `--workers` at a time. The floor for any Parquet -> Parquet job.
3. thresher: `thresher run` (local engine, `--workers` processes), scorer `heuristics`,
   filter `heuristics_pass == true`, selector `all`; again with selector `topk` by
   `heuristics_non_alnum_ratio` (lowest first, budget 0.5); and `thresher select` of that
   top-k on the saved scores of the first run (score once, select many). Stage split from
   the manifest timings.
4. DataTrove (its own venv, created when missing): ParquetReader -> GopherRepetitionFilter
   -> GopherQualityFilter -> ParquetWriter (zstd), LocalPipelineExecutor(tasks = files,
   workers = `--workers`). DataTrove tokenises with spaCy and runs about 100x slower than
   thresher here, so by default it gets the first `--datatrove-docs` rows of every file (a
   subset with the same mix of kinds, same number of files); thresher is run on the same
   subset, and ratio and kept-document agreement (by id) are computed on it. Use
   `--datatrove-docs 0` for the whole corpus.

Writes benchmarks/results/pipeline.json and pipeline.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from corpus import write_corpus  # noqa: E402

DEFAULT_DT_VENV = HERE / ".venv-datatrove"
DT_REQUIREMENTS = ["datatrove[io,processing]", "spacy"]
TOPK_COLUMN = "heuristics_non_alnum_ratio"


# -- timing --------------------------------------------------------------------------


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run cmd to completion; wall seconds, CPU seconds of its process tree, stdout."""
    load = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "cpu_s": cpu, "load_before": round(load, 2), "stdout": proc.stdout}


def git_state() -> dict[str, Any]:
    """Commit and number of changed files of the checkout (read-only git calls)."""
    def git(*a: str) -> str:
        p = subprocess.run(["git", "--no-optional-locks", *a], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "changed_files": len([ln for ln in git("status", "--porcelain").splitlines() if ln.strip()])}


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


# -- baseline: raw pyarrow -------------------------------------------------------------


def _copy_one(args: tuple[str, str]) -> int:
    src, dst = args
    table = pq.read_table(src)
    pq.write_table(table, dst, compression="zstd")
    return table.num_rows


def baseline_main(argv: list[str]) -> int:
    """`bench_pipeline.py _baseline IN OUT WORKERS`: read every file, write every row (zstd)."""
    src, dst, workers = Path(argv[0]), Path(argv[1]), int(argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), str(dst / p.name)) for p in sorted(src.glob("*.parquet"))]
    t0 = time.perf_counter()
    if workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            rows = sum(pool.map(_copy_one, jobs))
    else:
        rows = sum(_copy_one(j) for j in jobs)
    print(json.dumps({"rows": rows, "run_seconds": time.perf_counter() - t0,
                      "output_bytes": sum(os.path.getsize(d) for _, d in jobs)}))
    return 0


# -- thresher ------------------------------------------------------------------------------


def thresher_bin() -> str:
    cand = Path(sys.executable).with_name("thresher")
    return str(cand) if cand.exists() else shutil.which("thresher") or "thresher"


def thresher_job(data: Path, out: Path, workers: int, selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "bench_pipeline",
        "seed": 0,
        "input": {"path": str(data), "format": "parquet", "id_column": "id"},
        "scorers": [{"type": "heuristics"}],
        "filters": [{"column": "heuristics_pass", "op": "==", "value": True}],
        "selector": selector,
        "engine": {"name": "local", "local": {"workers": workers}},
        "output": {"path": str(out), "compression": "zstd"},
    }


def run_thresher(name: str, data: Path, work: Path, workers: int, selector: dict[str, Any]) -> dict[str, Any]:
    import yaml

    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    job_path = work / f"job-{name}.yaml"
    job_path.write_text(yaml.safe_dump(thresher_job(data, out, workers, selector), sort_keys=False))
    res = timed([thresher_bin(), "run", str(job_path), "--quiet"], work / f"log-{name}.txt")
    return {**res, **manifest_info(out), "output": str(out)}


def run_thresher_select(name: str, src: Path, work: Path, selector: dict[str, Any]) -> dict[str, Any]:
    import yaml

    out = work / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    sel_path = work / f"selector-{name}.yaml"
    sel_path.write_text(yaml.safe_dump(selector))
    res = timed([thresher_bin(), "select", str(src), "--selector", str(sel_path), "--output", str(out), "--quiet"],
                work / f"log-{name}.txt")
    return {**res, **manifest_info(out), "output": str(out)}


def manifest_info(out: Path) -> dict[str, Any]:
    m = json.loads((out / "_manifest.json").read_text())
    counts = m["counts"]
    return {
        "docs_in": counts["input_rows"],
        "kept": counts["selected"],
        "timings": m["timings"],
        "scorer_seconds": {k: round(v["seconds"], 3) for k, v in (m.get("scorers") or {}).items()},
        "scorer_rows": {k: v["rows"] for k, v in (m.get("scorers") or {}).items()},
        "rejected": counts["rejected"],
        "not_selected": counts["not_selected"],
        "output_bytes": sum(s.get("bytes", 0) for s in m.get("shards", [])),
    }


def kept_ids(folder: Path, pattern: str) -> set[str]:
    ids: set[str] = set()
    for p in sorted(folder.glob(pattern)):
        ids.update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


# -- DataTrove -----------------------------------------------------------------------------


def ensure_datatrove(venv: Path, install: bool) -> tuple[Path | None, str]:
    """The venv's python (created with DataTrove when missing), or None and why not."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import datatrove, spacy, pyarrow; print(datatrove.__file__)"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, "ok"
    if not install:
        return None, f"{venv}: no DataTrove venv and --no-datatrove-install given"
    print(f"creating DataTrove venv {venv} (pip install {' '.join(DT_REQUIREMENTS)}) ...", flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [[base, "-m", "venv", str(venv)],
             [str(py), "-m", "pip", "install", "-q", *DT_REQUIREMENTS]]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed ({p.returncode}): {(p.stderr or p.stdout)[-2000:]}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, f"{venv}: DataTrove installed but `import datatrove, spacy, pyarrow` fails"
    return py, "created"


def run_datatrove(py: Path, data: Path, work: Path, tasks: int, workers: int) -> dict[str, Any]:
    out, logs = work / "out-datatrove", work / "logs-datatrove"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)  # fresh: DataTrove skips tasks it finished before
    cmd = [str(py), str(HERE / "datatrove_job.py"), "--input", str(data), "--output", str(out), "--logs", str(logs),
           "--tasks", str(tasks), "--workers", str(workers), "--compression", "zstd"]
    res = timed(cmd, work / "log-datatrove.txt")
    info = json.loads(res.pop("stdout").strip().splitlines()[-1])
    # pool workers are children of DataTrove's forkserver: add the CPU they recorded themselves
    res["cpu_s"] += info.get("worker_cpu_seconds") or 0.0
    reader = next(s for s in info["steps"] if "READER" in (s["name"] or ""))
    dropped: dict[str, int] = {}
    for s in info["steps"]:
        for k, v in s["stats"].items():
            if k.startswith("dropped_"):
                dropped[k[len("dropped_"):]] = v
    return {**res, "docs_in": reader["stats"].get("documents"), "kept": info["kept"], "dropped": dropped,
            "step_seconds": {s["name"]: round(s["seconds_total"] or 0.0, 2) for s in info["steps"]},
            "run_seconds": info["run_seconds"], "import_seconds": info["import_seconds"],
            "datatrove_version": info["datatrove_version"], "output_bytes": info["output_bytes"],
            "output": str(out)}


def make_subset(data: Path, dst: Path, per_file: int) -> int:
    """The first `per_file` rows of every file (same file count, same mix of kinds)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    rows = 0
    for p in sorted(data.glob("*.parquet")):
        pf = pq.ParquetFile(p)
        batches, n = [], 0
        for rb in pf.iter_batches(batch_size=min(per_file, 10_000)):
            batches.append(rb.slice(0, per_file - n))
            n += batches[-1].num_rows
            if n >= per_file:
                break
        pq.write_table(pa.Table.from_batches(batches), dst / p.name, compression="zstd", row_group_size=10_000)
        rows += n
    return rows


def agreement(th_out: Path, dt_out: Path, data: Path) -> dict[str, Any]:
    """Kept-set overlap by id, the disagreements by corpus kind, and thresher's failing rules."""
    a = kept_ids(th_out, "part-*.parquet")
    b = kept_ids(dt_out, "*.parquet")
    kinds: dict[str, str] = {}
    for p in sorted(data.glob("*.parquet")):
        t = pq.read_table(p, columns=["id", "kind"])
        kinds.update(zip(t.column("id").to_pylist(), t.column("kind").to_pylist()))
    scores = pq.read_table(th_out / "_scores", columns=["id", "heuristics_reason"])
    reason = dict(zip(scores.column("id").to_pylist(), scores.column("heuristics_reason").to_pylist()))

    def count(ids: set[str], key: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in ids:
            k = str(key.get(i))
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    both = a & b
    union = a | b
    failed = {i for i, r in reason.items() if r is not None}
    return {"thresher_kept": len(a), "datatrove_kept": len(b), "both": len(both),
            "only_thresher": len(a - b), "only_datatrove": len(b - a),
            "jaccard": round(len(both) / len(union), 4) if union else 1.0,
            "only_thresher_by_kind": count(a - b, kinds), "only_datatrove_by_kind": count(b - a, kinds),
            "only_datatrove_thresher_reason": count(b - a, reason),
            "thresher_reasons": count(failed, reason)}


# -- report -------------------------------------------------------------------------------


def row(name: str, docs: int, r: dict[str, Any], base: dict[str, Any] | None, extra: str = "") -> dict[str, Any]:
    d = {"name": name, "docs": docs, "kept": r.get("kept"), "wall_s": round(r["wall_s"], 2),
         "cpu_s": round(r["cpu_s"], 2), "docs_per_s": round(rate(docs, r["wall_s"]), 1),
         "docs_per_cpu_s": round(rate(docs, r["cpu_s"]), 1), "load_before": r.get("load_before"), "note": extra}
    if base is not None:
        d["vs_baseline"] = round(d["docs_per_s"] / base["docs_per_s"], 3)
    return d


def markdown(res: dict[str, Any]) -> str:
    env, c = res["environment"], res["corpus"]
    lines = [
        "# Pipeline throughput: thresher vs raw pyarrow vs DataTrove",
        "",
        f"Generated by `benchmarks/bench_pipeline.py` on {res['date']}: {env['cpus']} CPUs, "
        f"{env['platform']}, Python {env['python']}, pyarrow {env['pyarrow']}, thresher {env['thresher']}, "
        f"DataTrove {res.get('datatrove', {}).get('version') or 'n/a'}; workers = {res['args']['workers']}; "
        f"git {env['git']['commit']} ({env['git']['changed_files']} changed files); "
        f"load average at the end {env['load_at_end']}.",
        "",
        f"Corpus: {c['rows']:,} synthetic documents in {c['files']} Parquet files "
        f"({c['bytes'] / 1e6:.0f} MB zstd, seed {c['seed']}); kinds {c['kinds']}.",
        "",
        "docs/s = input documents / wall seconds of the whole command (interpreter start and imports "
        "included); docs/CPU-s = input documents / CPU seconds of its process tree (less sensitive "
        "to other load on the machine; load = 1-min load average before the run).",
        "",
        "| run | docs | kept | wall s | docs/s | CPU s | docs/CPU-s | vs baseline | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        vb = f"{r['vs_baseline']:.3f}x" if "vs_baseline" in r else ""
        lines.append(f"| {r['name']} | {r['docs']:,} | {r['kept'] or 0:,} | "
                     f"{r['wall_s']:.1f} | {r['docs_per_s']:,.0f} | {r['cpu_s']:.1f} | {r['docs_per_cpu_s']:,.0f} | "
                     f"{vb} | {r['load_before']} |")
    lines += ["", "## thresher stage split (manifest timings, seconds)", "",
              "| run | plan | score | select | write | total | manifest `scorers.heuristics.seconds` (as reported) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in res["thresher_stages"].items():
        lines.append(f"| {name} | {t.get('plan', 0):.2f} | {t.get('score', 0):.2f} | {t.get('select', 0):.2f} | "
                     f"{t.get('write', 0):.2f} | {t.get('total', 0):.2f} | {t.get('heuristics_s', '')} |")
    dt = res.get("datatrove")
    lines += ["", "## thresher vs DataTrove (same documents)", ""]
    if dt and dt.get("status") == "ran":
        lines += [
            f"Subset: {dt['docs']:,} documents ({dt['per_file'] or 'all'} per file x {c['files']} files), "
            f"tasks = {dt['tasks']}, workers = {res['args']['workers']}.",
            "",
            f"- thresher / DataTrove speed (wall docs/s): **{dt['speed_ratio_wall']:.1f}x**; "
            f"by CPU seconds: **{dt['speed_ratio_cpu']:.1f}x** (> 1: thresher faster).",
            f"- kept: thresher {dt['agreement']['thresher_kept']:,}, DataTrove {dt['agreement']['datatrove_kept']:,}; "
            f"both {dt['agreement']['both']:,}, only thresher {dt['agreement']['only_thresher']:,} "
            f"{dt['agreement']['only_thresher_by_kind']}, only DataTrove {dt['agreement']['only_datatrove']:,} "
            f"{dt['agreement']['only_datatrove_by_kind']}; Jaccard {dt['agreement']['jaccard']}.",
            f"- DataTrove drop reasons: {dt['dropped']}",
            f"- thresher's first failing rule (heuristics_reason): {dt['agreement']['thresher_reasons']}",
            f"- thresher's rule for the documents only DataTrove kept: "
            f"{dt['agreement']['only_datatrove_thresher_reason']}",
            f"- DataTrove step time (summed over tasks, s): {dt['step_seconds']}",
        ]
        if dt.get("full_corpus_ratio_wall"):
            lines.append(f"- thresher on the full corpus vs DataTrove on the subset (docs/s): "
                         f"{dt['full_corpus_ratio_wall']:.1f}x")
    else:
        lines.append(f"DataTrove not run: {dt.get('reason') if dt else 'skipped'}")
    lines += ["", "Notes:", *[f"- {n}" for n in res["notes"]], ""]
    return "\n".join(lines)


def print_table(res: dict[str, Any]) -> None:
    hdr = f"{'run':<42}{'docs':>9}{'kept':>9}{'wall s':>9}{'docs/s':>10}{'CPU s':>9}{'docs/CPU-s':>12}{'vs base':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in res["runs"]:
        vb = f"{r['vs_baseline']:.3f}x" if "vs_baseline" in r else ""
        print(f"{r['name']:<42}{r['docs']:>9,}{(r['kept'] or 0):>9,}{r['wall_s']:>9.1f}{r['docs_per_s']:>10,.0f}"
              f"{r['cpu_s']:>9.1f}{r['docs_per_cpu_s']:>12,.0f}{vb:>9}")
    dt = res.get("datatrove") or {}
    if dt.get("status") == "ran":
        a = dt["agreement"]
        print(f"\nthresher vs DataTrove on {dt['docs']:,} docs: {dt['speed_ratio_wall']:.1f}x (wall), "
              f"{dt['speed_ratio_cpu']:.1f}x (CPU); kept thresher {a['thresher_kept']:,} / DataTrove "
              f"{a['datatrove_kept']:,}, both {a['both']:,}, Jaccard {a['jaccard']}")
    else:
        print(f"\nDataTrove not run: {dt.get('reason')}")


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_baseline":
        return baseline_main(argv[1:])
    ap = argparse.ArgumentParser(description="thresher vs pyarrow vs DataTrove, end to end")
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (corpus and outputs)")
    ap.add_argument("--workdir", help="work folder (default: a new temp folder)")
    ap.add_argument("--corpus", help="corpus folder to write or reuse (default: WORKDIR/corpus)")
    ap.add_argument("--datatrove-docs", type=int, default=20_000,
                    help="documents DataTrove gets (first rows of every file); 0 = whole corpus, -1 = skip")
    ap.add_argument("--datatrove-venv", default=str(DEFAULT_DT_VENV))
    ap.add_argument("--no-datatrove-install", action="store_true")
    ap.add_argument("--no-topk", action="store_true", help="skip the topk run and the reselect")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder for pipeline.json / pipeline.md")
    args = ap.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="thresher-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(args.corpus) if args.corpus else work / "corpus"
    notes: list[str] = []
    t_all = time.perf_counter()
    try:
        print(f"work folder: {work}", flush=True)
        meta = write_corpus(corpus_dir, args.docs, args.files, args.seed, workers=args.workers)
        data = corpus_dir / "data"
        n = meta["rows"]
        how = "reused" if meta["reused"] else f"generated in {meta['seconds']} s"
        print(f"corpus: {n:,} docs, {meta['bytes'] / 1e6:.0f} MB, {how}", flush=True)
        runs: list[dict[str, Any]] = []
        stages: dict[str, dict[str, Any]] = {}

        print("baseline (pyarrow read + write) ...", flush=True)
        b = timed([sys.executable, str(Path(__file__).resolve()), "_baseline", str(data), str(work / "out-baseline"),
                   str(args.workers)], work / "log-baseline.txt")
        b_info = json.loads(b["stdout"].strip().splitlines()[-1])
        base = row("pyarrow read+write (baseline)", n, {**b, "kept": b_info["rows"]}, None)
        runs.append(base)

        def add_thresher(name: str, r: dict[str, Any], docs: int, label: str) -> dict[str, Any]:
            rr = row(label, docs, r, base)
            rr["timings"] = r["timings"]
            runs.append(rr)
            stages[label] = {**r["timings"], "heuristics_s": r["scorer_seconds"].get("heuristics"),
                             "heuristics_rows": r["scorer_rows"].get("heuristics"), "docs": docs}
            return rr

        print("thresher run (heuristics, filter pass, selector all) ...", flush=True)
        sel_all = {"type": "all"}
        t_all_r = run_thresher("all", data, work, args.workers, sel_all)
        all_row = add_thresher("all", t_all_r, n, "thresher run: heuristics + all")
        topk_sel = {"type": "topk", "column": TOPK_COLUMN, "descending": False, "budget": 0.5}
        if not args.no_topk:
            print("thresher run (heuristics, filter pass, selector topk) ...", flush=True)
            t_topk = run_thresher("topk", data, work, args.workers, topk_sel)
            add_thresher("topk", t_topk, n, "thresher run: heuristics + topk")
            print("thresher select (topk on saved scores) ...", flush=True)
            t_resel = run_thresher_select("reselect", Path(t_all_r["output"]), work, topk_sel)
            add_thresher("reselect", t_resel, n, "thresher select: topk, saved scores")

        dt_res: dict[str, Any] = {"status": "skipped", "reason": "--datatrove-docs -1"}
        if args.datatrove_docs >= 0:
            py, why = ensure_datatrove(Path(args.datatrove_venv), not args.no_datatrove_install)
            if py is None:
                dt_res = {"status": "failed", "reason": why}
                print(f"DataTrove unavailable: {why}", flush=True)
            else:
                per_file = None
                sub = data
                docs_dt = n
                if args.datatrove_docs and args.datatrove_docs < n:
                    per_file = -(-args.datatrove_docs // args.files)
                    sub = work / "subset" / "data"
                    docs_dt = make_subset(data, sub, per_file)
                print(f"thresher run on the DataTrove set ({docs_dt:,} docs) ...", flush=True)
                if sub == data:
                    th_sub = t_all_r
                    th_sub_row = all_row
                else:
                    th_sub = run_thresher("subset", sub, work, args.workers, sel_all)
                    th_sub_row = add_thresher("subset", th_sub, docs_dt, "thresher run: heuristics + all [DT set]")
                print(f"DataTrove ({docs_dt:,} docs, tasks={args.files}, workers={args.workers}) ...", flush=True)
                d = run_datatrove(py, sub, work, args.files, args.workers)
                d_row = row("DataTrove: Gopher rep+quality [DT set]", docs_dt, d, base)
                runs.append(d_row)
                agree = agreement(Path(th_sub["output"]), Path(d["output"]), sub)
                dt_res = {
                    "status": "ran", "version": d["datatrove_version"], "docs": docs_dt, "per_file": per_file,
                    "tasks": args.files, "kept": d["kept"], "dropped": d["dropped"],
                    "step_seconds": d["step_seconds"], "run_seconds": d["run_seconds"],
                    "import_seconds": d["import_seconds"],
                    "speed_ratio_wall": round(th_sub_row["docs_per_s"] / d_row["docs_per_s"], 2),
                    "speed_ratio_cpu": round(th_sub_row["docs_per_cpu_s"] / d_row["docs_per_cpu_s"], 2),
                    "agreement": agree,
                }
                if sub != data:
                    dt_res["full_corpus_ratio_wall"] = round(all_row["docs_per_s"] / d_row["docs_per_s"], 2)
        if dt_res.get("status") == "ran" and dt_res.get("per_file"):
            notes.append(f"DataTrove ran on the first {dt_res['per_file']:,} rows of each file "
                         f"({dt_res['docs']:,} docs) to keep the default run near 10 minutes; thresher was run "
                         "on the same subset for the ratio and the agreement.")
        over = next((v for v in stages.values() if (v.get("heuristics_rows") or 0) > v["docs"]), None)
        if over:
            notes.append(f"The manifest's per-scorer rows/seconds are over-counted by thresher ({over['heuristics_rows']:,} "
                         f"rows for {over['docs']:,} documents): each shard's marker stores the worker's cumulative "
                         "scorer stats and the manifest sums them. Shown as reported; do not read them as CPU time.")
        load = [r["load_before"] for r in runs]
        if max(load) > (os.cpu_count() or 1):
            notes.append(f"The machine was shared while this ran (1-min load average {min(load)}-{max(load)} on "
                         f"{os.cpu_count()} CPUs), so wall times are inflated; docs/CPU-s is the fairer comparison.")
        notes += [
            "thresher's `heuristics_pass` applies all Gopher quality + repetition rules (same thresholds as "
            "DataTrove's GopherQualityFilter + GopherRepetitionFilter). Definitions differ: DataTrove counts spaCy "
            "tokens (punctuation are tokens; stop words are matched case-sensitively as a set of distinct words; "
            "character fractions are over len(text)), thresher counts whitespace words with edge punctuation "
            "stripped (character fractions over word characters). Disagreements are near thresholds, mostly the "
            "`footer` kind (boilerplate repeated 1-4 times).",
            "DataTrove's ParquetWriter keeps its defaults (content-defined chunking, page index) except "
            "compression = zstd, like thresher and the baseline.",
            "thresher output rows carry all heuristics columns (~30 score columns), so it writes more bytes "
            "than DataTrove or the baseline.",
        ]
        import pyarrow

        import thresher

        res = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "args": vars(args),
            "environment": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                            "pyarrow": pyarrow.__version__, "thresher": thresher.__version__,
                            "load_at_end": [round(x, 2) for x in os.getloadavg()], "git": git_state()},
            "corpus": {"rows": n, "files": args.files, "seed": args.seed, "bytes": meta["bytes"], "kinds": meta["kinds"],
                       "generate_s": meta["seconds"], "reused": meta["reused"]},
            "runs": runs,
            "thresher_stages": stages,
            "datatrove": dt_res,
            "notes": notes,
            "bench_seconds": round(time.perf_counter() - t_all, 1),
        }
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / "pipeline.json").write_text(json.dumps(res, indent=1) + "\n")
        (results / "pipeline.md").write_text(markdown(res))
        print()
        print_table(res)
        print(f"\nwrote {results / 'pipeline.json'} and {results / 'pipeline.md'} "
              f"({res['bench_seconds']:.0f} s in all)")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            for p in work.glob("out-*"):
                shutil.rmtree(p, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
