"""benchmarks/bench_scale.py at a tiny size: the result files hold every field, the selections hold
exactly the budget, and a later run of another size merges into the same results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_scale

ROOT = Path(__file__).resolve().parent.parent
N = 2000
FIELDS = ("label", "n", "dim", "engine", "selector", "select_s", "docs_per_s", "driver_hwm_mb", "rss_at_start_mb",
          "worker_hwm_mb", "selected", "expected_selected", "window", "task_rss_stats", "columns_via", "process_s")


def test_bench_scale_quick(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--quick", "--sizes", str(N),
           "--engines", "local", "--rows-per-file", "500", "--row-group", "200", "--data", str(tmp_path / "data"),
           "--work", str(tmp_path / "work"), "--results", str(results), "--label", "test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| code | engine | selector |" in proc.stdout  # the table is printed
    data = json.loads((results / "scale.json").read_text())
    assert set(data["meta_by_label"]) == {"test"}
    runs = data["runs"]
    assert sorted(r["selector"] for r in runs) == sorted(bench_scale.SELECTORS)
    for r in runs:
        assert not r.get("error"), r
        missing = [f for f in FIELDS if f not in r]
        assert not missing, (missing, r)
        assert (r["n"], r["engine"], r["window"]) == (N, "local", "select stage")
        assert r["selected"] == r["expected_selected"] == math.floor(0.1 * N + 1e-9), r
        assert r["select_s"] > 0 and r["docs_per_s"] > 0
        assert r["driver_hwm_mb"] >= r["rss_at_start_mb"] > 0
    md = (results / "scale.md").read_text()
    assert md.count("| test | local |") == 3
    # input shards generated once, cached with their description
    meta = json.loads((tmp_path / "data" / f"{N}-64" / "_meta.json").read_text())
    assert meta["rows"] == N and meta["files"] == 4
    assert not (tmp_path / "work" / "test" / f"{N}-64-plain").exists()  # scored folders removed (no --keep-work)

    # another size merges in: rows of the same (label, N, D, engine, selector) are replaced, others kept
    big = [{**r, "n": 10 * N, "select_s": 10 * r["select_s"], "docs_per_s": r["docs_per_s"],
            "driver_hwm_mb": r["driver_hwm_mb"] * 1.1} for r in runs]
    merged = bench_scale.merge(results / "scale.json", big, data["meta_by_label"]["test"])
    assert len(merged["runs"]) == 2 * len(runs)
    again = bench_scale.merge(results / "scale.json", runs, data["meta_by_label"]["test"])
    assert len(again["runs"]) == len(runs)
    text = bench_scale.render(merged)
    assert "Ratios" in text and text.count("| 20k/2k |") == 3 and "1.10x ok" in text
