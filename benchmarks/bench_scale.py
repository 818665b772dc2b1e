"""Scale of the select stage: wall time and peak memory of the driver and of one block task, 1M vs 10M.

    .venv/bin/python benchmarks/bench_scale.py                          # 1M and 10M, local + Spark, 64-d
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000          # one size; results merge into scale.json
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000 --dim 384 --selectors datamask
    .venv/bin/python benchmarks/bench_scale.py --quick                  # 20k and 200k, a smoke run (~1-2 min)
    make bench-scale                                                    # the first command

DESIGN.md, "Scale": the driver holds only small things and never a per-document column, so its
peak memory stays flat as N grows; a block task's memory is bounded by its block. This measures
exactly that, on the select stage alone (no model scoring):

- Synthetic input, generated once and cached (`--data`, default `out/bench_scale/data/N-D/`):
  Parquet files of `--rows-per-file` rows (250k) in row groups of `--row-group` rows (50k),
  columns `id` (unique string), `text` ("doc <i>"), `quality` (float32) and `emb`
  (fixed_size_list<float32, D>, unit norm, drawn around 50 centres; quality depends on the centre).
  Written one row group at a time (memory bounded by a row group), seeded per (file, row group).
- Score stage once per (N, D, scorer set), in its own process, not measured:
  `scorers: []` (or `[clusters]`), `input.score_columns: [quality, emb]` (the input columns copied
  into the score table). On a thresher without `input.score_columns` a pass-through scorer copies
  them instead (columns `pt_quality`, `pt_emb`; registered in every process of a measurement by a
  `sitecustomize.py` on PYTHONPATH, since Spark's Python workers validate the job again); the
  result rows say which (`columns_via`).
- Then the select stage alone, for each selector and engine, each in a fresh process
  (`--child`): the folder's select and write stages are cleared, `thresher.run(job, reselect=True)`
  runs, and a wrapper around `thresher.pipelines.stages.select` measures the stage and stops the
  job after it (the write stage is not run). Selectors:
  `datamask` ({type: datamask, quality, embedding, budget 0.1, block_size 1,000,000}),
  `topk` (quality, budget 0.1) and `clusters` (global scorer k-means + SemDeDup flags, then topk on
  quality, budget 0.1; k = max(100, N / 10,000) by default so a cluster holds ~10k documents: the
  SemDeDup pass is quadratic in the cluster size). Engines: `local` (2 workers) and Spark `local[2]`.

Memory, for the select stage only (Linux: the peak-RSS counter of every process is reset when the
stage starts, `/proc/PID/clear_refs` = 5, and VmHWM read when it ends; plus RSS sampled every
0.1 s for processes that come and go):
- driver: the Python process that runs the job; for Spark also the JVM (the Spark driver; in
  local[N] mode it holds the executors too) reported separately;
- task: the largest peak of one worker process (local pool workers; Spark's Python workers), and
  the selector's own `*peak_rss*` stats from the manifest when the select stage reports them
  (`block_peak_rss_mb`).
Ratios are between the largest and smallest N of each (engine, selector, dimension, code) group:
driver peak RSS (goal <= 1.2x), time (goal ~ N ratio: linear) and docs/s.

Results merge into benchmarks/results/scale.json (a run replaces the row of the same code label,
N, D, engine and selector) and scale.md is rendered from all rows. `--label` names the code
measured (default `after` for the distributed select stage, `before` for the older one that held
every column in the driver; each row also records its commit). The "before" rows come from a source
tree of the commit before the distributed select stage, measured with --code:

    git archive 599db70 thresher | tar -x -C /tmp/thresher-before
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000000 --code /tmp/thresher-before
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # appended: a --code tree on PYTHONPATH must come first
    sys.path.append(str(ROOT))

SELECTORS = ("datamask", "topk", "clusters")
ENGINES = {
    "local": {"name": "local", "local": {"workers": 2}},
    "spark": {"name": "spark", "spark": {"master": "local[2]", "conf": {
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}}},
}
BUDGET = 0.1
N_CENTRES = 50
PT_TYPE = "bench_passthrough"
# modules whose `select` is the select stage: the distributed stage, then the older in-driver one
SELECT_STAGES = ("thresher.pipelines.selection.stage", "thresher.pipelines.stages")  # the stand-in for input.score_columns on older code


# -- the stand-in for input.score_columns ---------------------------------------------


def _passthrough_class() -> type:
    """Copies input columns into the score table as `<prefix>_<column>` (older code only). Built on
    first use, so that this script imports no thresher code in the parent process (the children may
    measure another source tree, --code)."""
    import pyarrow as pa
    from thresher.scorers.base import Scorer, ScorerParams

    class PassThroughParams(ScorerParams):
        columns: list[str] = ["quality", "emb"]
        dim: int = 64

    class PassThrough(Scorer):
        name = PT_TYPE
        Params = PassThroughParams

        def output_schema(self) -> pa.Schema:
            types = {"quality": pa.float32(), "emb": pa.list_(pa.float32(), self.params.dim)}
            return pa.schema([(self.col(c), types[c]) for c in self.params.columns])

        def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
            return {self.col(c): batch.column(c) for c in self.params.columns}

    PassThrough.__module__ = __name__
    PassThrough.__qualname__ = "PassThrough"
    return PassThrough


def __getattr__(name: str) -> Any:  # the registry's "benchmarks.bench_scale:PassThrough"
    if name == "PassThrough":
        cls = _passthrough_class()
        globals()["PassThrough"] = cls
        return cls
    raise AttributeError(name)


def has_score_columns() -> bool:
    from thresher.config import InputSpec

    return "score_columns" in InputSpec.model_fields


def register_passthrough() -> None:
    from thresher.scorers import registry

    registry.SCORERS.setdefault(PT_TYPE, "benchmarks.bench_scale:PassThrough")


SITECUSTOMIZE = f"""# written by benchmarks/bench_scale.py: registers its pass-through scorer in every Python
# process of a measurement (Spark's Python workers validate the job again)
import os
if os.environ.get("BENCH_SCALE_PASSTHROUGH"):
    try:
        from thresher.scorers import registry
        registry.SCORERS.setdefault("{PT_TYPE}", "benchmarks.bench_scale:PassThrough")
    except Exception:
        pass
"""


def passthrough_site(work_root: Path) -> Path:
    """A folder holding a sitecustomize.py that registers the pass-through scorer (put on PYTHONPATH)."""
    d = work_root / "_passthrough_site"
    d.mkdir(parents=True, exist_ok=True)
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


# -- synthetic input --------------------------------------------------------------------


def generate(folder: Path, n: int, dim: int, rows_per_file: int, row_group: int, seed: int = 0) -> dict[str, Any]:
    """Write the input shards once (reused when `_meta.json` matches); one row group in memory at a time."""
    import pyarrow.parquet as pq

    meta = {"rows": n, "dim": dim, "rows_per_file": rows_per_file, "row_group": row_group, "seed": seed,
            "centres": N_CENTRES, "version": 1}
    mpath = folder / "_meta.json"
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text())
            if {k: old.get(k) for k in meta} == meta:
                return old
        except (OSError, ValueError):
            pass
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    centres = np.random.default_rng([seed, 0xC]).normal(size=(N_CENTRES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("quality", pa.float32()),
                        ("emb", pa.list_(pa.float32(), dim))])
    n_files = max(1, math.ceil(n / rows_per_file))
    total_bytes = 0
    for f in range(n_files):
        lo, hi = f * rows_per_file, min(n, (f + 1) * rows_per_file)
        path = folder / f"part-{f:05d}.parquet"
        tmp = folder / f".part-{f:05d}.parquet.tmp"
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for g, start in enumerate(range(lo, hi, row_group)):
                stop = min(hi, start + row_group)
                w.write_table(row_group_table(start, stop, dim, centres, seed, f, g, schema), row_group_size=row_group)
        tmp.rename(path)
        total_bytes += path.stat().st_size
    meta.update(files=n_files, bytes=total_bytes, seconds=round(time.perf_counter() - t0, 1))
    mpath.write_text(json.dumps(meta, indent=1))
    return meta


def row_group_table(start: int, stop: int, dim: int, centres: np.ndarray, seed: int, f: int, g: int,
                    schema: pa.Schema) -> pa.Table:
    rng = np.random.default_rng([seed, f, g])
    m = stop - start
    lab = rng.integers(0, len(centres), m)
    emb = centres[lab] + (1.8 / math.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    quality = (rng.standard_normal(m) + 0.5 * (lab % 5)).astype(np.float32)
    idx = range(start, stop)
    return pa.table([pa.array([f"d{i:010d}" for i in idx], pa.string()),
                     pa.array([f"doc {i}" for i in idx], pa.string()),
                     pa.array(quality, pa.float32()),
                     pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)],
                    schema=schema)


# -- the jobs --------------------------------------------------------------------------


def clusters_k(n: int) -> int:
    return max(100, n // 10_000)


def job(data: str, out: str, n: int, dim: int, selector: str, engine: str, via: str,
        clusters_extra: dict[str, Any] | None = None, k: int | None = None,
        shard_rows: int | None = None) -> dict[str, Any]:
    """The job of one measurement. `via`: "input" (input.score_columns) or "scorer" (pass-through)."""
    q, e = ("quality", "emb") if via == "input" else ("pt_quality", "pt_emb")
    inp: dict[str, Any] = {"path": data, "id_column": "id"}
    if shard_rows:
        inp["shard_rows"] = shard_rows
    scorers: list[dict[str, Any]] = []
    if via == "input":
        inp["score_columns"] = ["quality", "emb"]
    else:
        scorers.append({"type": PT_TYPE, "name": "pt", "dim": dim})
    if selector == "clusters":
        scorers.append({"type": "clusters", "embedding_column": e, "k": k or clusters_k(n), "use_gpu": False,
                        **(clusters_extra or {})})
    sel = {
        "datamask": {"type": "datamask", "quality": q, "embedding": e, "budget": BUDGET, "block_size": 1_000_000},
        "topk": {"type": "topk", "column": q, "budget": BUDGET},
        "clusters": {"type": "topk", "column": q, "budget": BUDGET},
    }[selector]
    return {"name": f"bench-scale-{selector}", "seed": 0, "input": inp, "scorers": scorers, "selector": sel,
            "engine": ENGINES[engine], "output": {"path": out}}


# -- memory of a process tree ----------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB ({} when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class TreeMemory:
    """Peak RSS of this process, its JVM (a descendant named java) and its other descendants
    (workers), sampled every `interval` s while `active`; `hwm()` reads VmHWM after a reset."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._me = psutil.Process()
        self.interval = interval
        self.active = False
        self.peaks: dict[str, float] = {"driver": 0.0, "jvm": 0.0, "worker": 0.0, "workers_sum": 0.0}
        self.worker_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def tree(self) -> tuple[list[int], list[int]]:
        """(java pids, worker pids) among the descendants."""
        import psutil

        java, workers = [], []
        try:
            kids = self._me.children(recursive=True)
        except psutil.Error:
            return java, workers
        for p in kids:
            try:
                name = p.name()
            except psutil.Error:
                continue
            if "java" in name:
                java.append(p.pid)
            elif "python" in name:
                workers.append(p.pid)
        return java, workers

    def _sample(self) -> None:
        java, workers = self.tree()
        mib = 1024.0
        self.peaks["driver"] = max(self.peaks["driver"], proc_status(os.getpid()).get("VmRSS", 0) / mib)
        for pid in java:
            self.peaks["jvm"] = max(self.peaks["jvm"], proc_status(pid).get("VmRSS", 0) / mib)
        total = 0.0
        for pid in workers:
            rss = proc_status(pid).get("VmRSS", 0) / mib
            total += rss
            self.peaks["worker"] = max(self.peaks["worker"], rss)
            self.worker_pids.add(pid)
        self.peaks["workers_sum"] = max(self.peaks["workers_sum"], total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.active:
                self._sample()

    def start(self) -> dict[str, Any]:
        java, workers = self.tree()
        ok = all(reset_hwm(p) for p in [os.getpid(), *java, *workers])
        for k in self.peaks:
            self.peaks[k] = 0.0
        self.active = True
        self._sample()
        return {"hwm_reset": ok, "rss_at_start_mb": round(proc_status(os.getpid()).get("VmRSS", 0) / 1024.0, 1)}

    def finish(self) -> dict[str, Any]:
        self._sample()
        self.active = False
        java, workers = self.tree()
        mib = 1024.0
        res: dict[str, Any] = {"driver_hwm_mb": proc_status(os.getpid()).get("VmHWM", 0) / mib}
        if java:
            res["jvm_hwm_mb"] = max(proc_status(p).get("VmHWM", 0) for p in java) / mib
        res["worker_hwm_mb"] = max([proc_status(p).get("VmHWM", 0) for p in workers] or [0]) / mib
        res["sampled"] = {k: round(v, 1) for k, v in self.peaks.items()}
        res["worker_processes"] = len(self.worker_pids)
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}

    def stop(self) -> None:
        self._stop.set()


# -- the child processes --------------------------------------------------------------


class StopAfterSelect(Exception):
    pass


def find_rss_stats(obj: Any, path: str = "") -> dict[str, Any]:
    """Every `*rss*` entry of the selector stats (e.g. `block_peak_rss_mb`), by its key path."""
    found: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if "rss" in str(k).lower() and not isinstance(v, dict):
                found[p] = v
            else:
                found.update(find_rss_stats(v, p))
    return found


def child_score(c: dict[str, Any]) -> dict[str, Any]:
    import thresher

    if c["via"] == "scorer":
        register_passthrough()
    spec = job(c["data"], c["out"], c["n"], c["dim"], c["selector"], "local", c["via"], c.get("clusters_extra"),
               c.get("clusters_k"), c.get("shard_rows"))
    t = time.perf_counter()
    # reselect: the folder may hold another selector's selection from an earlier measurement
    r = thresher.run(spec, progress=False, score_only=True, reselect=True)
    return {"score_s": round(time.perf_counter() - t, 2), "rows": r.manifest["counts"].get("input_rows")}


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def child_probe(c: dict[str, Any]) -> dict[str, Any]:
    import thresher

    return {"score_columns": has_score_columns(), "thresher": str(Path(thresher.__file__).parent),
            "distributed_select": _importable(SELECT_STAGES[0]),
            "version": getattr(thresher, "__version__", "?")}


def child_select(c: dict[str, Any]) -> dict[str, Any]:
    """Clear the folder's selection, run the job as a re-selection and measure its select stage."""
    import importlib

    import thresher
    from thresher.io.output import OutputLayout

    if c["via"] == "scorer":
        register_passthrough()
    spec = job(c["data"], c["out"], c["n"], c["dim"], c["selector"], c["engine"], c["via"], c.get("clusters_extra"),
               c.get("clusters_k"), c.get("shard_rows"))
    layout = OutputLayout(c["out"])
    for stage in ("write", "select"):
        layout.clear_stage(stage)
    mem = TreeMemory()
    res: dict[str, Any] = {}
    depth = [0]

    def hook(original: Any, where: str) -> Any:
        @functools.wraps(original)
        def measured(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:  # called from inside the measured stage
                return original(*args, **kwargs)
            depth[0] += 1
            if len(args) > 2 and isinstance(args[2], int):  # select(job, layout, n_shards, ...)
                res["shards"] = args[2]
            res.update(mem.start())
            t = time.perf_counter()
            out = original(*args, **kwargs)
            res["select_s"] = round(time.perf_counter() - t, 3)
            res.update(mem.finish())
            res["window"] = "select stage"
            res["hooked"] = where
            res["select_marker"] = {k: v for k, v in out.items() if k != "selector_stats"}
            res["selector_stats"] = _small(out.get("selector_stats") or {})
            res["selected"] = out.get("selected")
            raise StopAfterSelect
        return measured

    patched = []
    for mod_name in SELECT_STAGES:  # the select stage: the distributed one, or the older in-driver one
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        if callable(getattr(mod, "select", None)):
            patched.append((mod, mod.select))
            mod.select = hook(mod.select, f"{mod_name}.select")
    t = time.perf_counter()
    try:
        r = thresher.run(spec, progress=False, reselect=True)
        # the runner called none of the hooked functions: the manifest's timing, the whole job's peak
        import resource

        res.update(mem.finish())
        res.update(select_s=round(r.manifest["timings"]["select"], 3), window="whole job (select not hooked)",
                   selected=r.manifest["counts"]["selected"],
                   driver_hwm_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
                   selector_stats=_small(r.manifest.get("selection", {})))
    except StopAfterSelect:
        pass
    finally:
        for mod, original in patched:
            mod.select = original
        mem.stop()
    res["job_s"] = round(time.perf_counter() - t, 2)
    res["task_rss_stats"] = find_rss_stats(res.get("selector_stats"))
    if not res["task_rss_stats"]:  # the rest of the stage's marker
        res["task_rss_stats"] = find_rss_stats(res.get("select_marker"))
    return res


def _small(stats: dict[str, Any]) -> dict[str, Any]:
    """Selector stats without long lists (reward curves, per-block seconds are summarised)."""
    out: dict[str, Any] = {}
    for k, v in stats.items():
        if isinstance(v, list) and len(v) > 8:
            nums = [x for x in v if isinstance(x, (int, float))]
            out[k] = {"len": len(v), "max": max(nums)} if nums else {"len": len(v)}
        elif isinstance(v, dict):
            out[k] = _small(v)
        else:
            out[k] = v
    return out


def run_child(kind: str, cfg: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    paths = [str(ROOT)]
    if cfg.get("code"):
        paths.insert(0, cfg["code"])
    env = dict(os.environ)
    if cfg.get("site"):
        paths.insert(0, cfg["site"])
        env["BENCH_SCALE_PASSTHROUGH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind,
                               "--child-args", json.dumps(cfg)], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-1500:]}
    r = json.loads(lines[-1][7:])
    r["process_s"] = round(time.perf_counter() - t, 2)
    return r


# -- results ----------------------------------------------------------------------------


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_key(r: dict[str, Any]) -> tuple:
    return (r["label"], r["n"], r["dim"], r["engine"], r["selector"])


def merge(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    old: dict[str, Any] = {"runs": []}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    new_keys = {run_key(r) for r in rows}
    runs = [r for r in old.get("runs", []) if run_key(r) not in new_keys] + rows
    runs.sort(key=lambda r: (r["label"], r["dim"], r["engine"], r["selector"], r["n"]))
    metas = old.get("meta_by_label", {})
    note = meta.get("note") or metas.get(meta["label"], {}).get("note")
    metas[meta["label"]] = {**meta, **({"note": note} if note else {})}
    return {"meta_by_label": metas, "runs": runs}


def _fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _mb(x: Any) -> str:
    return "-" if x is None else f"{x:,.0f}"


def task_peak(r: dict[str, Any]) -> tuple[float | None, str]:
    """One block task's peak RSS: the select stage's own stat when it reports one, else the largest worker."""
    stats = r.get("task_rss_stats") or {}
    nums = [v for v in stats.values() if isinstance(v, (int, float))]
    if nums:
        return float(max(nums)), "stats"
    w = max(r.get("worker_hwm_mb") or 0, (r.get("sampled") or {}).get("worker", 0))
    return (w or None), "worker"


def _growth(r: dict[str, Any]) -> float | None:
    """The driver's peak over its RSS when the select stage started (what the stage itself held)."""
    if r.get("driver_hwm_mb") is None or r.get("rss_at_start_mb") is None:
        return None
    return max(0.0, r["driver_hwm_mb"] - r["rss_at_start_mb"])


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    lines = ["# Select stage at scale", "",
             "`benchmarks/bench_scale.py`: the select stage alone (scores already saved, write stage not run), "
             "synthetic `quality` + unit `emb` columns copied into the score table. Peaks are RSS of the select "
             "stage only (VmHWM reset at its start). driver = the Python process running the job; JVM = Spark's "
             "driver JVM (local[2]: it runs the executors too); task = the largest worker process "
             "(local pool worker / Spark Python worker), or the select stage's own `*rss*` stat when it "
             "reports one (marked *).", ""]
    for label, meta in sorted(data.get("meta_by_label", {}).items()):
        commits = sorted({str(r.get("commit", meta.get("commit"))) for r in runs if r["label"] == label})
        lines.append(f"- `{label}`: {', '.join(commits) or meta.get('commit')}; last run {meta.get('date')}, "
                     f"{meta.get('machine')}, "
                     f"columns via {meta.get('columns_via')}; load average {meta.get('load_before')} -> "
                     f"{meta.get('load_after')}" + (f"; {meta['note']}" if meta.get("note") else ""))
    lines += ["", "| code | engine | selector | D | N | shards | select (s) | docs/s | driver peak MB (+ over start) | "
                  "JVM peak MB | task peak MB | selected | budget |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("error"):
            lines.append(f"| {r['label']} | {r['engine']} | {r['selector']} | {r['dim']} | {_fmt_n(r['n'])} | "
                         f"{r.get('shards', '-')} | failed: {r['error'][:160]} | | | | | | |")
            continue
        tp, src = task_peak(r)
        lines.append(
            f"| {r['label']} | {r['engine']} | {r['selector']} | {r['dim']} | {_fmt_n(r['n'])} | {r.get('shards', '-')} | "
            f"{r['select_s']:.1f} | "
            f"{r['docs_per_s']:,.0f} | {_mb(r.get('driver_hwm_mb'))} (+{_mb(_growth(r))}) | {_mb(r.get('jvm_hwm_mb'))} | "
            f"{_mb(tp)}{'*' if src == 'stats' else ''} | {r.get('selected')} | {r['expected_selected']} |")
    ratio_rows = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if not r.get("error"):
            groups.setdefault((r["label"], r["engine"], r["selector"], r["dim"]), []).append(r)
    for (label, engine, selector, dim), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r["n"])
        a, b = rs[0], rs[-1]
        nr = b["n"] / a["n"]
        drv = b["driver_hwm_mb"] / a["driver_hwm_mb"] if a.get("driver_hwm_mb") else float("nan")
        jvm = (f"{b['jvm_hwm_mb'] / a['jvm_hwm_mb']:.2f}x" if a.get("jvm_hwm_mb") and b.get("jvm_hwm_mb") else "-")
        tr = b["select_s"] / a["select_s"]
        ratio_rows.append(
            f"| {label} | {engine} | {selector} | {dim} | {_fmt_n(b['n'])}/{_fmt_n(a['n'])} | "
            f"{drv:.2f}x {'ok' if drv <= 1.2 else 'over'} | {jvm} | {tr:.1f}x (linear: {nr:.0f}x) | "
            f"{a['docs_per_s']:,.0f} -> {b['docs_per_s']:,.0f} |")
    if ratio_rows:
        lines += ["", "Ratios, largest N over smallest N (goals: driver peak <= 1.2x; time ~ the N ratio):", "",
                  "| code | engine | selector | D | N ratio | driver peak | JVM peak | time | docs/s |",
                  "|---|---|---|---|---|---|---|---|---|", *ratio_rows]
    cmp_rows = []
    ok = {run_key(r): r for r in runs if not r.get("error")}
    for (label, n, dim, engine, selector), a in sorted(ok.items()):
        b = ok.get(("after", n, dim, engine, selector))
        if label != "before" or b is None:
            continue
        jvm = (f"{_mb(a.get('jvm_hwm_mb'))} -> {_mb(b.get('jvm_hwm_mb'))}" if a.get("jvm_hwm_mb") else "-")
        ta, tb = task_peak(a)[0], task_peak(b)[0]
        cmp_rows.append(
            f"| {engine} | {selector} | {dim} | {_fmt_n(n)} | {_mb(a['driver_hwm_mb'])} -> {_mb(b['driver_hwm_mb'])} "
            f"(+{_mb(_growth(a))} -> +{_mb(_growth(b))}) | {jvm} | {_mb(ta)} -> {_mb(tb)} | "
            f"{a['select_s']:.1f} -> {b['select_s']:.1f} |")
    if cmp_rows:
        lines += ["", "Before -> after at the same N (driver peak, and in brackets what the stage added over the "
                      "driver's RSS at its start):", "",
                  "| engine | selector | D | N | driver peak MB | JVM peak MB | task peak MB | select (s) |",
                  "|---|---|---|---|---|---|---|---|", *cmp_rows]
    lines += ["", "- select (s): the select stage's wall time (`thresher.pipelines.selection.stage.select`; before: "
                  "`thresher.pipelines.stages.select`), no score, no write; docs/s = N / that.",
              "- clusters: the `clusters` global scorer (k-means on k = max(100, N/10k) centroids, SemDeDup flags) "
                  "and then topk on quality.",
              "- `before` (the select stage that read the whole score table into the driver): with one DATAMASK "
                  "block (N <= block_size) the local engine solves it in the driver process itself, so the task "
                  "column shows an idle pool worker there; on Spark the block went to a Python worker through the JVM.",
              "- a shared 2-core machine: wall times move with the neighbours (the load average is in the header); "
                  "the memory figures do not."]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", help="documents (default 1000000 10000000; --quick 20000 200000)")
    ap.add_argument("--quick", action="store_true", help="small sizes, files of 10k rows (smoke run)")
    ap.add_argument("--dim", type=int, default=64, help="embedding width (default 64)")
    ap.add_argument("--engines", default="local,spark")
    ap.add_argument("--selectors", default=",".join(SELECTORS))
    ap.add_argument("--rows-per-file", type=int, help="rows per input file (default 250000; --quick 10000)")
    ap.add_argument("--row-group", type=int, help="rows per row group (default 50000; --quick 2000)")
    ap.add_argument("--data", help="input cache folder (default out/bench_scale/data)")
    ap.add_argument("--work", help="scored folders (default out/bench_scale/work)")
    ap.add_argument("--results", default=str(HERE / "results"), help="where scale.json / scale.md go")
    ap.add_argument("--results-name", default="scale", help="results file stem (default scale)")
    ap.add_argument("--label", help="names the code measured (default: `after` where the select stage is the "
                                    "distributed one, thresher.pipelines.selection.stage, else `before`); "
                                    "ratios compare sizes within one label")
    ap.add_argument("--code", help="measure the thresher package under this folder (e.g. a `git archive` of an "
                                   "older commit) instead of the installed one; put first on the children's PYTHONPATH")
    ap.add_argument("--note", help="a note for this label in the table header")
    ap.add_argument("--shard-rows", type=int, help="input.shard_rows (default: thresher's own default)")
    ap.add_argument("--clusters-k", type=int, help="clusters scorer k (default max(100, N / 10,000))")
    ap.add_argument("--clusters-extra", default="{}", help="JSON: more clusters scorer params, e.g. "
                                                           "'{\"max_fit_rows\": 100000}'")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--keep-work", action="store_true", help="keep the scored folders (default: removed per size)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fn = {"score": child_score, "select": child_select, "probe": child_probe}[args.child]
        print("RESULT " + json.dumps(fn(json.loads(args.child_args))), flush=True)
        return 0
    sizes = args.sizes or ([20_000, 200_000] if args.quick else [1_000_000, 10_000_000])
    rows_per_file = args.rows_per_file or (10_000 if args.quick else 250_000)
    row_group = args.row_group or (2_000 if args.quick else 50_000)
    data_root = Path(args.data or ROOT / "out" / "bench_scale" / "data")
    work_root = Path(args.work or ROOT / "out" / "bench_scale" / "work")
    engines = [e for e in args.engines.split(",") if e]
    selectors = [s for s in args.selectors.split(",") if s]
    bad = [e for e in engines if e not in ENGINES] + [s for s in selectors if s not in SELECTORS]
    if bad:
        ap.error(f"unknown engine/selector {bad}")
    code = str(Path(args.code).resolve()) if args.code else None
    probe = run_child("probe", {"code": code}, 120)
    if "error" in probe:
        raise SystemExit(f"bench_scale: thresher does not import: {probe['error']}")
    via = "input" if probe["score_columns"] else "scorer"
    label = args.label or ("after" if probe["distributed_select"] else "before")
    commit = git_commit() if not code else f"source tree {code}"
    meta = {"label": label, "commit": commit,
            "thresher": probe["thresher"], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "columns_via": "input.score_columns" if via == "input" else "pass-through scorer (no input.score_columns)",
            "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    if args.note:
        meta["note"] = args.note
    print(f"bench_scale: sizes {sizes}, D={args.dim}, engines {engines}, selectors {selectors}, label {label}, "
          f"columns via {via}", flush=True)
    clusters_extra = json.loads(args.clusters_extra)
    rows: list[dict[str, Any]] = []
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    jpath, mpath = results / f"{args.results_name}.json", results / f"{args.results_name}.md"
    for n in sizes:
        folder = data_root / f"{n}-{args.dim}"
        t = time.perf_counter()
        info = generate(folder, n, args.dim, rows_per_file, row_group)
        print(f"N={n:,}: input {folder} ({info['files']} files, {info['bytes'] / 1e6:,.0f} MB, "
              f"{time.perf_counter() - t:.1f} s)", flush=True)
        scored: dict[str, dict[str, Any]] = {}
        for selector in selectors:
            scoreset = "clusters" if selector == "clusters" else "plain"
            out = work_root / label / f"{n}-{args.dim}-{scoreset}"
            base = {"data": str(folder), "out": str(out), "n": n, "dim": args.dim, "selector": selector, "via": via,
                    "code": code, "clusters_k": args.clusters_k, "clusters_extra": clusters_extra,
                    "shard_rows": args.shard_rows,
                    "site": str(passthrough_site(work_root)) if via == "scorer" else None}
            if scoreset not in scored:
                scored[scoreset] = run_child("score", base, args.timeout)
                print(f"  score ({scoreset}): {scored[scoreset]}", flush=True)
            for engine in engines:
                row: dict[str, Any] = {"label": label, "commit": commit, "n": n, "dim": args.dim, "engine": engine,
                                       "selector": selector,
                                       "columns_via": via, "expected_selected": math.floor(BUDGET * n + 1e-9)}
                if selector == "clusters":
                    row["clusters_k"] = args.clusters_k or clusters_k(n)
                    if clusters_extra:
                        row["clusters_extra"] = clusters_extra
                if "error" in scored[scoreset]:
                    row["error"] = "score stage: " + scored[scoreset]["error"]
                else:
                    row.update(run_child("select", {**base, "engine": engine}, args.timeout))
                if not row.get("error"):
                    row["docs_per_s"] = round(n / max(row["select_s"], 1e-9), 1)
                rows.append(row)
                brief = {k: row.get(k) for k in ("select_s", "docs_per_s", "driver_hwm_mb", "jvm_hwm_mb",
                                                 "worker_hwm_mb", "selected", "error") if row.get(k) is not None}
                print(f"  {engine:5s} {selector:8s}: {brief}", flush=True)
                # merge after every measurement: a long run that dies keeps what it measured
                meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
                data = merge(jpath, [row], meta)
                jpath.write_text(json.dumps(data, indent=1))
                mpath.write_text(render(data))
        if not args.keep_work:
            for scoreset in scored:
                shutil.rmtree(work_root / label / f"{n}-{args.dim}-{scoreset}", ignore_errors=True)
    text = render(json.loads(jpath.read_text()))
    print(text)
    failed = [r for r in rows if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
