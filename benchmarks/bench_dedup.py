"""Planted near-duplicate benchmark of the dedup stage (issue 15), side by side with DataTrove.

    make bench-dedup                                   # 10k and 100k documents, DataTrove at 10k
    .venv/bin/python benchmarks/bench_dedup.py --quick # ~600 documents, thresher only (seconds)

Corpus (`benchmarks/dedup_corpus.py`): BBC News articles (2,225, real text), composites of
article thirds beyond that, and planted clusters of copies (case/whitespace-only `exact`
copies, 1-5% of words edited, a boilerplate line at the top or bottom, the last 5-10% cut,
combinations); Parquet files of `--rows-per-file` documents in a shuffled order.

Runs, same documents, same worker processes (`--workers`), word `--ngram`-shingles, the same
bands x rows on both sides (default: thresher's S-curve optimum for the threshold with
verification, `num_perm` = bands x rows):
- thresher: `thresher dedup JOB -o OUT` (a job with `dedup: {exact: true, minhash: {...}}`,
  `selector: {type: all}`, the local engine), with `verify: true` and `verify: false`, in a
  child process that reports its peak RSS (VmHWM of the driver; the largest pool worker's RSS
  sampled every 50 ms with `bench_scale.TreeMemory`) and the CPU seconds of itself and its workers;
- DataTrove: `benchmarks/datatrove_minhash_job.py` in DataTrove's own venv
  (`bench_pipeline.ensure_datatrove`), its four MinHash stages.

Scores against the planted truth (`dedup_corpus.truth_labels`): a pair of documents is
predicted when both are in one found cluster and true when both are in one planted cluster
(planted clusters merged where a document of one and a document of the other are near-duplicates
by themselves, at exact Jaccard >= the threshold: re-published BBC articles, composites sharing
two thirds):
pair precision and recall, cluster purity (found clusters of 2+: the share of members in
their cluster's largest true cluster), documents removed vs the ideal, true clusters left
with no kept document. `reachable recall` scores against the pairs a perfect dedup at the
threshold finds (the transitive closure of pairs at exact Jaccard >= threshold inside a true
cluster). Every found pair that is false by the truth is checked by exact Jaccard
(`false pairs >= t`: a truth that missed a natural near-duplicate would show here).

Docs per CPU-second = documents / (user + sys seconds of every process of the run, pool
workers included). Results: benchmarks/results/dedup.{json,md}.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks import dedup_corpus as dc  # noqa: E402
from benchmarks.bench_pipeline import DEFAULT_DT_VENV, ensure_datatrove, git_state, timed  # noqa: E402

RESULTS = HERE / "results"
WORK = RESULTS / "tmp" / "dedup"


# -- scoring ----------------------------------------------------------------------------------


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def pair_scores(truth: np.ndarray, found: np.ndarray) -> dict[str, float | int]:
    """Pair precision and recall: a pair is predicted when both documents have the same `found`
    label, true when both have the same `truth` label. Precision is 1.0 with no predicted pair,
    recall 1.0 with no true pair."""
    truth, found = np.asarray(truth), np.asarray(found)
    _, t_inv = np.unique(truth, return_inverse=True)
    _, f_inv = np.unique(found, return_inverse=True)
    both = t_inv.astype(np.int64) * (f_inv.max() + 1 if len(f_inv) else 1) + f_inv
    tp = _pairs(np.unique(both, return_counts=True)[1])
    predicted = _pairs(np.bincount(f_inv))
    true = _pairs(np.bincount(t_inv))
    return {"true_pairs": true, "found_pairs": predicted, "correct_pairs": tp,
            "precision": tp / predicted if predicted else 1.0, "recall": tp / true if true else 1.0}


def purity(truth: np.ndarray, found: np.ndarray) -> float:
    """Over found clusters of two or more documents: the share of their members that lie in their
    cluster's largest true cluster (1.0 when no such cluster)."""
    truth, found = np.asarray(truth), np.asarray(found)
    _, f_inv, f_cnt = np.unique(found, return_inverse=True, return_counts=True)
    multi = f_cnt[f_inv] > 1
    if not multi.any():
        return 1.0
    _, t_inv = np.unique(truth[multi], return_inverse=True)
    cells, n = np.unique(np.stack([f_inv[multi], t_inv]), axis=1, return_counts=True)
    best = np.zeros(f_inv.max() + 1, dtype=np.int64)
    np.maximum.at(best, cells[0], n)
    return float(best.sum() / multi.sum())


def removal_scores(truth: np.ndarray, removed: np.ndarray) -> dict[str, int]:
    """Documents removed, the ideal number (documents minus true clusters), and true clusters left
    with no kept document (content lost by a false merge)."""
    truth, removed = np.asarray(truth), np.asarray(removed, dtype=bool)
    kept = set(truth[~removed].tolist())
    n_true = len(np.unique(truth))
    return {"removed": int(removed.sum()), "ideal_removed": int(len(truth) - n_true),
            "lost_clusters": int(n_true - len(kept))}


def false_pairs_above(corpus: dc.Corpus, truth: np.ndarray, found: np.ndarray, threshold: float, n: int,
                      limit: int = 2000, seed: int = 0) -> dict[str, int]:
    """Found pairs that the truth calls false, and how many of (up to `limit` of) them have an exact
    Jaccard >= threshold (near-duplicates the truth missed)."""
    _, f_inv, f_cnt = np.unique(found, return_inverse=True, return_counts=True)
    members: dict[int, list[int]] = {}
    for d in np.flatnonzero(f_cnt[f_inv] > 1).tolist():
        members.setdefault(int(f_inv[d]), []).append(d)
    false: list[tuple[int, int]] = []
    total = 0
    rng = np.random.default_rng(seed)
    for docs in members.values():
        for x in range(len(docs)):
            for y in range(x + 1, len(docs)):
                if truth[docs[x]] != truth[docs[y]]:
                    total += 1
                    if len(false) < limit:
                        false.append((docs[x], docs[y]))
                    elif rng.random() < limit / total:  # reservoir sample
                        false[int(rng.integers(limit))] = (docs[x], docs[y])
    above = sum(dc.jaccard(dc.shingle_set(corpus.texts[a], n), dc.shingle_set(corpus.texts[b], n)) >= threshold
                for a, b in false)
    return {"false_pairs": total, "checked": len(false), "above_threshold": int(above)}


def copies_found(corpus: dc.Corpus, found: np.ndarray) -> dict[str, float]:
    """Per copy kind: the share of planted copies found in their base's cluster."""
    base_doc = {c: d for d, (c, k) in enumerate(zip(corpus.cluster, corpus.kind)) if k == "base"}
    hits: dict[str, list[bool]] = {}
    for d, (c, k) in enumerate(zip(corpus.cluster, corpus.kind)):
        if k != "base":
            hits.setdefault(k, []).append(bool(found[d] == found[base_doc[c]]))
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(hits.items())}


def score(corpus: dc.Corpus, truth: np.ndarray, reach: np.ndarray, found: np.ndarray, removed: np.ndarray,
          threshold: float, n: int) -> dict[str, Any]:
    p = pair_scores(truth, found)
    return {**p, "reachable_recall": pair_scores(reach, found)["recall"], "purity": purity(truth, found),
            "copies_found": copies_found(corpus, found),
            **removal_scores(truth, removed), "false_check": false_pairs_above(corpus, truth, found, threshold, n)}


# -- corpus on disk ----------------------------------------------------------------------------


def write_corpus(corpus: dc.Corpus, folder: Path, rows_per_file: int) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for f, start in enumerate(range(0, len(corpus), rows_per_file)):
        p = folder / f"part-{f:05d}.parquet"
        pq.write_table(pa.table({"id": corpus.ids[start:start + rows_per_file],
                                 "text": corpus.texts[start:start + rows_per_file]}), p, compression="zstd")
        paths.append(p)
    return paths


# -- thresher ------------------------------------------------------------------------------------


def thresher_job(data: Path, out: Path, workers: int, threshold: float, bands: int, rows: int, n: int,
                 verify: bool) -> dict[str, Any]:
    """The job a user writes to deduplicate a Parquet folder (`thresher dedup JOB -o OUT`)."""
    return {
        "name": "bench_dedup", "seed": 0,
        "input": {"path": str(data), "format": "parquet", "id_column": "id"},
        "dedup": {"exact": True, "minhash": {"threshold": threshold, "num_perm": bands * rows, "shingle": "word",
                                             "n": n, "verify": verify, "bands": bands, "rows": rows}},
        "selector": {"type": "all"},
        "engine": {"name": "local", "local": {"workers": workers}},
        "output": {"path": str(out), "compression": "zstd"},
    }


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def child_thresher(job_path: str, out: str) -> int:
    """In a fresh process: `thresher dedup JOB -o OUT -q`; prints one JSON line: CPU seconds of this
    process and its joined pool workers, wall, peak RSS of this process (VmHWM) and of the largest
    pool worker (`bench_scale.TreeMemory`, sampled every 50 ms: a worker's VmHWM is gone once the
    pool is joined, and ru_maxrss of a forked-and-exec'd process starts at its parent's RSS)."""
    from benchmarks.bench_scale import TreeMemory, proc_status
    from thresher.commands.cli import main

    mem = TreeMemory(interval=0.05)
    start = mem.start()
    cpu0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = main(["dedup", job_path, "-o", out, "-q", "--overwrite"])
    wall = time.perf_counter() - t0
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu0
    peaks = mem.finish()
    mem.stop()
    print(json.dumps({"rc": rc, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "rss_at_start_mb": start["rss_at_start_mb"], "hwm_reset": start["hwm_reset"],
                      "driver_peak_rss_mb": round(proc_status(os.getpid()).get("VmHWM", 0) / 1024.0, 1),
                      "worker_peak_rss_mb": peaks["sampled"]["worker"],
                      "worker_processes": peaks["worker_processes"]}))
    return rc


def run_thresher(name: str, data: Path, work: Path, job: dict[str, Any]) -> dict[str, Any]:
    import yaml

    out = Path(job["output"]["path"])
    shutil.rmtree(out, ignore_errors=True)
    job_path = work / f"job-{name}.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    res = timed([sys.executable, str(Path(__file__).resolve()), "--child-thresher", str(job_path), str(out)],
                work / f"log-{name}.txt", env=env)
    child = json.loads(res.pop("stdout").strip().splitlines()[-1])
    manifest = json.loads((out / "_manifest.json").read_text())
    return {"process_wall_s": round(res["wall_s"], 3), "process_cpu_s": round(res["cpu_s"], 3), **child,
            "dedup": manifest.get("dedup"), "output": str(out)}


def thresher_found(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, found cluster label, removed) of every row of a thresher output, in shard and row order."""
    scores = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in sorted((out / "_scores").glob("*.parquet"))])
    sel = pa.concat_tables([pq.read_table(p, columns=["dup_cluster", "dup_keep"])
                            for p in sorted((out / "_selection").glob("part-*.parquet"))])
    ids = scores.column("id").to_pylist()
    cl = sel.column("dup_cluster").to_pylist()
    label = np.array([c if c is not None else f"\0{i}" for i, c in zip(ids, cl)], dtype=object)
    return ids, label, ~np.asarray(sel.column("dup_keep").to_numpy(zero_copy_only=False), dtype=bool)


# -- DataTrove -------------------------------------------------------------------------------------


def run_datatrove(py: Path, data: Path, work: Path, bands: int, rows: int, n: int, workers: int) -> dict[str, Any]:
    dt_work = work / "datatrove"
    shutil.rmtree(dt_work, ignore_errors=True)
    dt_work.mkdir(parents=True)
    found = work / "datatrove-found.parquet"
    cmd = [str(py), str(HERE / "datatrove_minhash_job.py"), "--input", str(data), "--work", str(dt_work),
           "--found", str(found), "--buckets", str(bands), "--rows", str(rows), "--ngram", str(n),
           "--workers", str(workers)]
    res = timed(cmd, work / "log-datatrove.txt")
    info = json.loads(res.pop("stdout").strip().splitlines()[-1])
    return {"process_wall_s": round(res["wall_s"], 3), "process_cpu_s": round(res["cpu_s"], 3), **info,
            "found": str(found)}


def datatrove_found(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    t = pq.read_table(path)
    ids = t.column("id").to_pylist()
    cl = t.column("cluster").to_pylist()
    label = np.array([f"c{c}" if c >= 0 else f"\0{i}" for i, c in zip(ids, cl)], dtype=object)
    return ids, label, np.asarray(t.column("removed").to_numpy(zero_copy_only=False), dtype=bool)


# -- one size ------------------------------------------------------------------------------------


def run_size(n_docs: int, args: argparse.Namespace, dt_py: Path | None) -> dict[str, Any]:
    work = WORK / f"n{n_docs}"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    corpus, facts = dc.build(n_docs, seed=args.seed, n=args.ngram)
    truth, reach, tfacts = dc.truth_labels(corpus, args.threshold, args.ngram)
    data = work / "data"
    files = write_corpus(corpus, data, args.rows_per_file)
    facts.update(tfacts, files=len(files), true_clusters_2plus=int((np.unique(truth, return_counts=True)[1] > 1).sum()),
                 build_seconds=round(time.perf_counter() - t, 1))
    print(f"[{n_docs}] corpus: {facts}", flush=True)
    index = {d: k for k, d in enumerate(corpus.ids)}
    runs: list[dict[str, Any]] = []

    def scored(tool: str, verify: bool | None, perf: dict[str, Any], ids: list[str], label: np.ndarray,
               removed: np.ndarray) -> None:
        order = np.array([index[i] for i in ids])
        f = np.empty(len(corpus), dtype=object)
        r = np.zeros(len(corpus), dtype=bool)
        f[order], r[order] = label, removed
        q = score(corpus, truth, reach, f, r, args.threshold, args.ngram)
        cpu = perf.get("cpu_s") or perf.get("cpu_seconds")
        runs.append({"tool": tool, "verify": verify, "docs": len(corpus), **q, "cpu_s": cpu,
                     "docs_per_cpu_s": len(corpus) / cpu if cpu else None, "perf": perf})
        print(f"[{n_docs}] {tool} verify={verify}: precision {q['precision']:.4f} recall {q['recall']:.4f} "
              f"purity {q['purity']:.4f} removed {q['removed']}/{q['ideal_removed']} cpu {cpu:.1f}s "
              f"driver {perf.get('driver_peak_rss_mb')} MB worker {perf.get('worker_peak_rss_mb')} MB", flush=True)

    for verify in args.verify:
        name = f"thresher-{'verify' if verify else 'noverify'}"
        out = work / f"out-{name}"
        job = thresher_job(data, out, args.workers, args.threshold, args.bands, args.rows, args.ngram, verify)
        perf = run_thresher(name, data, work, job)
        scored("thresher", verify, perf, *thresher_found(out))
        if not args.keep_outputs:
            shutil.rmtree(out, ignore_errors=True)
    if dt_py is not None and n_docs in args.datatrove_docs:
        perf = run_datatrove(dt_py, data, work, args.bands, args.rows, args.ngram, args.workers)
        scored("datatrove", None, perf, *datatrove_found(Path(perf["found"])))
        if not args.keep_outputs:
            shutil.rmtree(work / "datatrove", ignore_errors=True)
    if not args.keep_outputs:
        shutil.rmtree(data, ignore_errors=True)
    return {"target_docs": n_docs, "corpus": facts, "runs": runs}


# -- report --------------------------------------------------------------------------------------


def _f(x: Any, d: int = 3) -> str:
    return "-" if x is None else f"{x:.{d}f}" if isinstance(x, float) else str(x)


def goals(res: dict[str, Any]) -> list[str]:
    """The issue's three goals, checked on the results."""
    lines = []
    sizes = res["sizes"]
    for s in sizes:
        for r in s["runs"]:
            if r["tool"] == "thresher":
                ok = r["recall"] >= 0.95 and r["precision"] >= 0.99
                lines.append(f"- recall >= 0.95 at precision >= 0.99, thresher verify={r['verify']}, {r['docs']:,} "
                             f"docs: recall {r['recall']:.4f}, precision {r['precision']:.4f}: "
                             f"**{'met' if ok else 'missed'}**")
        th = {r["verify"]: r for r in s["runs"] if r["tool"] == "thresher"}
        dt = next((r for r in s["runs"] if r["tool"] == "datatrove"), None)
        if dt is not None and dt.get("docs_per_cpu_s"):
            for v, r in th.items():
                ratio = r["docs_per_cpu_s"] / dt["docs_per_cpu_s"]
                lines.append(f"- >= 3x DataTrove's docs per CPU-second, thresher verify={v}, {r['docs']:,} docs: "
                             f"{ratio:.2f}x: **{'met' if ratio >= 3 else 'missed'}**")
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        for v in {r["verify"] for r in a["runs"] if r["tool"] == "thresher"}:
            ra = next(r for r in a["runs"] if r["tool"] == "thresher" and r["verify"] == v)
            rb = next((r for r in b["runs"] if r["tool"] == "thresher" and r["verify"] == v), None)
            if rb is None:
                continue
            pa_ = max(ra["perf"]["driver_peak_rss_mb"], ra["perf"]["worker_peak_rss_mb"])
            pb = max(rb["perf"]["driver_peak_rss_mb"], rb["perf"]["worker_peak_rss_mb"])
            grow = rb["docs"] / ra["docs"]
            ok = pb <= 1.5 * pa_
            lines.append(f"- peak RSS of any one process, thresher verify={v}, {ra['docs']:,} -> {rb['docs']:,} docs "
                         f"({grow:.1f}x): {pa_:.0f} -> {pb:.0f} MB ({pb / pa_:.2f}x; bounded = at most 1.5x): "
                         f"**{'met' if ok else 'missed'}**")
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [
        "# Dedup benchmark: planted near-duplicates in BBC News, thresher vs DataTrove", "",
        f"Command: `{m['command']}`", "",
        f"Machine: {m['machine']}; {m['workers']} worker processes on both sides; commit {m['git'].get('commit')}. "
        "Timings are upper bounds on a shared machine; CPU-seconds (user + sys of every process, pool "
        "workers included) are the fair measure.", "",
        f"Settings (both sides): word {m['ngram']}-gram shingles, {m['bands']} bands x {m['rows']} rows "
        f"({m['bands'] * m['rows']} permutations), threshold {m['threshold']} (thresher's S-curve optimum with "
        f"verification: P(candidate) = 1 - (1 - s^{m['rows']})^{m['bands']}). thresher: `dedup: {{exact: true, "
        f"minhash: {{threshold: {m['threshold']}, num_perm: {m['bands'] * m['rows']}, n: {m['ngram']}, bands: "
        f"{m['bands']}, rows: {m['rows']}, verify: ...}}}}` + `selector: {{type: all}}`, `thresher dedup JOB -o OUT`, "
        f"local engine. DataTrove {m.get('datatrove_version') or '-'}: MinhashDedupSignature -> Buckets -> Cluster "
        "(save_cluster_id) -> Filter (ParquetWriter), default text normalisation and spaCy word tokenizer.", "",
        "| docs | tool | verify | pair precision | pair recall | reachable recall | purity | removed / ideal | "
        "lost clusters | CPU s | docs / CPU-s | wall s | driver peak MB | largest worker peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in res["sizes"]:
        for r in s["runs"]:
            p = r["perf"]
            wall = p.get("wall_s") if r["tool"] == "thresher" else p.get("run_seconds")
            lines.append(
                f"| {r['docs']:,} | {r['tool']} | {'-' if r['verify'] is None else r['verify']} | {r['precision']:.4f} | "
                f"{r['recall']:.4f} | {r['reachable_recall']:.4f} | {r['purity']:.4f} | {r['removed']:,} / "
                f"{r['ideal_removed']:,} | {r['lost_clusters']} | {_f(r['cpu_s'], 1)} | {_f(r['docs_per_cpu_s'], 0)} | "
                f"{_f(wall, 1)} | {_f(p.get('driver_peak_rss_mb'), 0)} | {_f(p.get('worker_peak_rss_mb'), 0)} |")
    lines += ["", "Goals (issue 15):", "", *goals(res), "", "Corpora:", ""]
    for s in res["sizes"]:
        c = s["corpus"]
        lines.append(f"- {c['docs']:,} docs in {c['files']} Parquet files: {c['bases']:,} bases ({c['originals']:,} "
                     f"articles, {c['composites']:,} composites), {c['planted_clusters']:,} planted clusters, copies "
                     f"{c['copies']}; {c['natural_pairs']} document pairs across planted clusters at exact Jaccard >= "
                     f"{m['threshold']} (counted as true: {c['merged_clusters']} planted clusters merged into "
                     f"others); copy-vs-base Jaccard {c['copy_vs_base_jaccard']}")
    lines += ["", "Planted copies found in their base's cluster, by kind:", ""]
    for s in res["sizes"]:
        for r in s["runs"]:
            lines.append(f"- {r['docs']:,} {r['tool']} verify={r['verify']}: {r['copies_found']}")
    lines += ["", "Found pairs that the truth calls false, checked by exact Jaccard (a missed natural near-duplicate "
              "would show as `above`):", ""]
    for s in res["sizes"]:
        for r in s["runs"]:
            fc = r["false_check"]
            lines.append(f"- {r['docs']:,} {r['tool']} verify={r['verify']}: {fc['false_pairs']} false pairs, "
                         f"{fc['above_threshold']} of {fc['checked']} checked at >= {m['threshold']}")
    lines += ["", "Step seconds (thresher's manifest `dedup.step_seconds`; DataTrove's stages):", ""]
    for s in res["sizes"]:
        for r in s["runs"]:
            p = r["perf"]
            st = (p.get("dedup") or {}).get("step_seconds") if r["tool"] == "thresher" else p.get("stage_seconds")
            extra = ""
            if r["tool"] == "thresher" and p.get("dedup"):
                d = p["dedup"]
                extra = f"; candidate edges {d.get('candidate_edges')}, rounds {d.get('rounds')}"
            lines.append(f"- {r['docs']:,} {r['tool']} verify={r['verify']}: {st}{extra}")
    lines += ["", "Definitions: a pair is predicted when both documents are in one found cluster, true when both "
              "are in one planted cluster (merged where documents of two planted clusters have exact Jaccard >= the "
              "threshold); reachable "
              "recall counts only the pairs linked inside a true cluster by pairs at exact Jaccard >= the "
              "threshold (what a perfect dedup at this threshold finds); purity: in found clusters of two or "
              "more, the share of members in their cluster's largest true cluster; lost clusters: true "
              "clusters with no kept document.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-thresher":
        return child_thresher(argv[1], argv[2])
    from thresher.dedup.minhash import optimal_param

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", default="10000,100000", help="corpus sizes (comma list)")
    ap.add_argument("--datatrove-docs", default="10000", help="sizes at which DataTrove also runs ('' = none)")
    ap.add_argument("--quick", action="store_true", help="~600 documents, thresher only (unless --datatrove)")
    ap.add_argument("--datatrove", action="store_true", help="with --quick: run DataTrove too")
    ap.add_argument("--no-datatrove-install", action="store_true")
    ap.add_argument("--datatrove-venv", default=str(DEFAULT_DT_VENV))
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--bands", type=int, default=None, help="default: thresher's optimum for the threshold (verify)")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--verify", default="true,false", help="thresher runs: comma list of true/false")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows-per-file", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument("--out", default=None, help="results basename (default benchmarks/results/dedup, "
                                                "--quick: benchmarks/results/tmp/dedup-quick)")
    args = ap.parse_args(argv)
    if (args.bands is None) != (args.rows is None):
        ap.error("give both --bands and --rows, or neither")
    if args.bands is None:
        args.bands, args.rows = optimal_param(args.threshold, 128, 0.1, 0.9)
    args.verify = [v.strip().lower() in ("1", "true", "yes") for v in args.verify.split(",") if v.strip()]
    sizes = [600] if args.quick else [int(x) for x in args.docs.split(",") if x]
    if args.quick:
        args.rows_per_file = min(args.rows_per_file, 200)
    args.datatrove_docs = set(sizes) if (args.quick and args.datatrove) else set() if args.quick else \
        {int(x) for x in args.datatrove_docs.split(",") if x}
    dt_py, dt_version = None, None
    if args.datatrove_docs & set(sizes):
        dt_py, why = ensure_datatrove(Path(args.datatrove_venv), not args.no_datatrove_install)
        if dt_py is None:
            print(f"DataTrove side skipped: {why}", file=sys.stderr)
        else:
            dt_version = subprocess.run([str(dt_py), "-c", "import importlib.metadata as m; print(m.version('datatrove'))"],
                                        capture_output=True, text=True).stdout.strip() or None
    res: dict[str, Any] = {"meta": {
        "command": "make bench-dedup" if argv == [] else ".venv/bin/python benchmarks/bench_dedup.py " + " ".join(argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "git": git_state(), "threshold": args.threshold, "bands": args.bands, "rows": args.rows, "ngram": args.ngram,
        "workers": args.workers, "rows_per_file": args.rows_per_file, "seed": args.seed,
        "datatrove_version": dt_version, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "sizes": []}
    for n in sizes:
        res["sizes"].append(run_size(n, args, dt_py))
    base = Path(args.out) if args.out else (RESULTS / "tmp" / "dedup-quick" if args.quick else RESULTS / "dedup")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = markdown(res)
    base.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
