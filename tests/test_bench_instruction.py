"""The selection benchmark's instruction mode (`python -m benchmarks.selection jobs/bench_selection_icon.yaml`):
the pool and its world corpus, SFT packing, task accuracy and paired comparisons, the quick run, and
`benchmarks/bench_icon.py --separation` (do ICon scores separate planted junk?)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.selection.cli import main as bench_main
from thresher.config import JobError

ROOT = Path(__file__).resolve().parents[1]
ICON_JOB = ROOT / "jobs" / "bench_selection_icon.yaml"


def test_instruction_pool_plants_what_it_says() -> None:
    from benchmarks.selection.instruction_pool import FACTS, TASKS, build_instruction_pool, make_pair

    pool = build_instruction_pool(n=300, wrong=0.2, garbled=0.1, dup=0.2, dup_clusters=6, eval_pairs=30,
                                  assessment=12, seed=5)
    kinds = np.asarray(pool.kinds)
    assert len(pool.ids) == len(set(pool.ids)) == 300
    assert [(kinds == k).sum() for k in ("clean", "wrong", "garbled", "dup")] == [150, 60, 30, 60]
    assert pool.junk.sum() == 90 and pool.dup.sum() == 60 and set(pool.tasks) == set(TASKS)
    # a planted wrong or garbled answer is never the right one; clean answers are right
    rng = np.random.default_rng(0)
    for q, a, task, kind in zip(pool.prompts, pool.responses, pool.tasks, pool.kinds):
        if task == "lookup":
            key = q.split("'")[1]
            assert (a == FACTS[key]) == (kind in ("clean", "dup"))
        if task == "add" and kind in ("clean", "dup", "wrong"):
            x, y = (int(t) for t in re.findall(r"\d+", q))
            assert (int(a) == x + y) == (kind != "wrong")
    assert make_pair("add", rng)[0].startswith(("Add", "What", "Compute"))
    # near-duplicate clusters: the same answer, reworded prompts
    clusters = np.asarray(pool.clusters)
    assert len(set(clusters[pool.dup])) == 6 and (clusters[~pool.dup] == -1).all()
    for c in range(6):
        members = np.flatnonzero(clusters == c)
        assert len({pool.responses[i] for i in members}) == 1 and len(members) == 10
    # held-out and assessment sets: clean, distinct, deterministic; every eval pair knows its task
    assert len(pool.eval_pairs) == 30 and len(pool.assessment_pairs) == 12
    assert not set(pool.eval_pairs) & set(pool.assessment_pairs)
    assert len(pool.eval_tasks) == 30 and set(pool.eval_tasks) == set(TASKS)
    for (q, a), task in zip(pool.eval_pairs, pool.eval_tasks):
        if task == "lookup":
            assert a == FACTS[q.split("'")[1]]
        if task == "sort":
            assert a == " ".join(map(str, sorted(int(t) for t in re.findall(r"\d+", q))))
    again = build_instruction_pool(n=300, wrong=0.2, garbled=0.1, dup=0.2, dup_clusters=6, eval_pairs=30,
                                   assessment=12, seed=5)
    assert again.prompts == pool.prompts and again.responses == pool.responses and again.kinds == pool.kinds


def test_world_corpus_is_correct_plain_text() -> None:
    from benchmarks.selection.instruction_pool import FACTS, TASKS, world_corpus, world_line

    docs = world_corpus(60, seed=1)
    assert len(docs) == 60 and docs == world_corpus(60, seed=1) and docs != world_corpus(60, seed=2)
    lines = [ln for d in docs for ln in d.split("\n")]
    assert len(lines) == 240 and not any("### Instruction" in ln for ln in lines)
    seen = set()
    for ln in lines:  # every line is a correct instance of its task
        if m := re.fullmatch(r"(\d+) \+ (\d+) = (\d+)", ln):
            assert int(m[1]) + int(m[2]) == int(m[3])
            seen.add("add")
        elif m := re.fullmatch(r"code of (\w+): (\w+)", ln):
            assert FACTS[m[1]] == m[2]
            seen.add("lookup")
        elif m := re.fullmatch(r"(\w+) backwards: (\w+)", ln):
            assert m[1][::-1] == m[2]
            seen.add("reverse")
        elif m := re.fullmatch(r"sorted\(([\d ]+)\) = ([\d ]+)", ln):
            assert sorted(map(int, m[1].split())) == list(map(int, m[2].split()))
            seen.add("sort")
        elif m := re.fullmatch(r"([a-z ]+) -> ([A-Z ]+)", ln):
            assert m[1].upper() == m[2]
            seen.add("upper")
        else:
            left, right = ln.split(" | ")
            assert left == right
            seen.add("copy")
    assert seen == set(TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        world_line("divide", np.random.default_rng(0))


def test_sft_packing_masks_prompts() -> None:
    from benchmarks.selection.instruction_bench import IGNORE, pack

    ex = [(np.array([5, 6, 7]), np.array([8, 9])), (np.array([10, 11]), np.array([12])),
          (np.array([13] * 6), np.array([14, 15]))]
    ids, labels = pack(ex, context=12, eos=0)
    # [eos] prompt response [eos]; examples are never split across blocks
    assert ids[0].tolist() == [0, 5, 6, 7, 8, 9, 0, 0, 10, 11, 12, 0]
    assert labels[0].tolist() == [IGNORE] * 4 + [8, 9, 0] + [IGNORE] * 3 + [12, 0]
    assert ids[1].tolist() == [0] + [13] * 6 + [14, 15, 0] + [0, 0]
    assert labels[1].tolist() == [IGNORE] * 7 + [14, 15, 0] + [IGNORE] * 2


def test_pack_text_fills_whole_blocks() -> None:
    from benchmarks.selection.instruction_bench import pack_text, sft_tokenizer
    from thresher.models.tiny import EOS

    texts = ["apple backwards: elppa", "12 + 30 = 42", "code of tiger: QRS"] * 20
    tok = sft_tokenizer(texts, 300)
    eos = tok.convert_tokens_to_ids(EOS)
    blocks = pack_text(tok, texts, eos, context=16)
    n_tokens = sum(1 + len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert blocks.shape == (n_tokens // 16, 16) and int(blocks[0, 0]) == eos
    assert (blocks == eos).sum() >= len(texts) - 2  # one separator per document (the cut-off tail aside)
    with pytest.raises(ValueError, match="do not fill one block"):
        pack_text(tok, ["a"], eos, context=16)


def test_composition_from_plant_labels() -> None:
    from benchmarks.selection.instruction_bench import composition

    kinds = np.array(["clean", "wrong", "garbled", "dup", "dup", "dup", "clean", "wrong"])
    clusters = np.array([-1, -1, -1, 0, 0, 1, -1, -1])
    sel = np.array([1, 1, 0, 1, 1, 1, 0, 0], bool)
    c = composition(sel, kinds, clusters)
    assert c["junk_frac"] == pytest.approx(1 / 5) and c["dup_frac"] == pytest.approx(3 / 5)
    assert c["redundant_frac"] == pytest.approx(1 / 5)  # cluster 0 twice: one beyond the first
    assert c["junk_by_kind"] == {"wrong": 1, "garbled": 0}
    assert composition(np.ones(8, bool), kinds, clusters)["junk_frac"] == pytest.approx(3 / 8)


def test_instruction_spec(tmp_path: Path) -> None:
    from benchmarks.selection.cli import load_spec
    from benchmarks.selection.instruction_bench import InstructionBenchSpec, metrics
    from benchmarks.selection.instruction_pool import TASKS

    spec = load_spec(ICON_JOB)
    assert isinstance(spec, InstructionBenchSpec) and spec.mode == "instruction"
    assert spec.methods["icon"]["type"] == "icon" and len(spec.seeds) >= 5 and spec.budgets == [0.15]
    assert spec.base.steps > 0 and spec.eval.task_accuracy
    assert metrics(spec) == {"heldout_loss": True, "task_accuracy": False, **{f"acc_{t}": False for t in TASKS}}
    off = spec.model_copy(update={"eval": spec.eval.model_copy(update={"task_accuracy": False})})
    assert metrics(off) == {"heldout_loss": True}
    # the defaults without a file are the job's
    bare = tmp_path / "bare.yaml"
    bare.write_text("mode: instruction\n")
    dflt = load_spec(bare)
    assert dflt.seeds == spec.seeds and dflt.budgets == spec.budgets and dflt.train == spec.train
    assert dflt.base == spec.base
    bad = tmp_path / "b.yaml"
    for text, match in (("pool: {docz: 10}", "pool.docz"), ("icon: {sample_fraction: 2}", "icon.sample_fraction"),
                        ("icon: {sample_fraction: 0.1}\nmethods: {random: {type: random}, d: {type: icon, "
                         "classifier: none}}", "classifier: none"), ("base: {steps: -1}", "base.steps"),
                        ("eval: {max_new_tokens: 0}", "eval.max_new_tokens")):
        bad.write_text(f"mode: instruction\n{text}\n")
        with pytest.raises(JobError, match=re.escape(match)):
            load_spec(bad)


def test_vs_full_pairs_full_data_with_random_at_each_budget() -> None:
    from benchmarks.selection.cli import load_spec
    from benchmarks.selection.instruction_bench import vs_full

    spec = load_spec(ICON_JOB, overrides={"seeds": [0, 1, 2, 3], "budgets": [0.1, 0.2]})
    runs = [{"method": "full", "budget": 1.0, "seed": s, "heldout_loss": 2.0 + 0.01 * s, "task_accuracy": 0.3}
            for s in range(4)]
    runs += [{"method": "random", "budget": b, "seed": s, "heldout_loss": 2.5 + b + 0.01 * s,
              "task_accuracy": 0.1 + 0.01 * s} for b in (0.1, 0.2) for s in range(4)]
    rows = vs_full(runs, spec, {"heldout_loss": True, "task_accuracy": False})
    assert [(r["method"], r["budget"], r["n_seeds"]) for r in rows] == [("full", 0.1, 4), ("full", 0.2, 4)]
    loss, acc = rows[0]["vs_random"]["heldout_loss"], rows[0]["vs_random"]["task_accuracy"]
    assert loss["mean"] == pytest.approx(-0.6) and loss["verdict"] == "helps"
    assert acc["mean"] == pytest.approx(0.3 - 0.115) and acc["verdict"] == "helps"  # higher is better
    assert rows[1]["vs_random"]["heldout_loss"]["mean"] == pytest.approx(-0.7)


def test_base_model_is_pretrained_once_and_reused(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import torch

    from benchmarks.selection.cli import load_spec
    from benchmarks.selection.instruction_bench import pretrain_base, sft_tokenizer
    from benchmarks.selection.instruction_pool import world_corpus
    from thresher.models.tiny import EOS

    spec = load_spec(ICON_JOB, quick=True, overrides={"output": str(tmp_path / "o"), "base": {"steps": 3}})
    world = world_corpus(spec.base.docs, 0)
    tok = sft_tokenizer(world, spec.model.vocab)
    eos = tok.convert_tokens_to_ids(EOS)
    first, info = pretrain_base(spec, tok, world, len(tok), eos, quiet=True)
    assert info["steps"] == 3 and np.isfinite(info["loss_end"]) and "reused" not in info
    again, info2 = pretrain_base(spec, tok, world, len(tok), eos, quiet=True)
    assert info2["reused"] and info2["loss_end"] == info["loss_end"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    other = spec.model_copy(update={"base": spec.base.model_copy(update={"steps": 4})})
    assert "reused" not in pretrain_base(other, tok, world, len(tok), eos, quiet=True)[1]
    none = spec.model_copy(update={"base": spec.base.model_copy(update={"steps": 0})})
    assert pretrain_base(none, tok, [], len(tok), eos, quiet=True)[1] == {"steps": 0, "docs": 0}


def test_quick_instruction_benchmark(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from benchmarks.selection.instruction_pool import TASKS, build_instruction_pool

    out = tmp_path / "bench"
    md = tmp_path / "table.md"
    rc = bench_main([str(ICON_JOB), "--quick", "-o", str(out), "--threads", "1", "-q",
                     "--results-md", str(md)])
    assert rc == 0
    res = json.loads((out / "selection_quality.json").read_text())
    assert res["mode"] == "instruction"
    methods, budgets, seeds = res["methods"], res["budgets"], res["seeds"]
    assert {"random", "full", "topk_quality", "topk_diversity", "datamask_fl", "icon"} <= set(methods)
    n = res["config"]["pool_docs"]
    rows = {(s["method"], s["budget"]): s for s in res["summary"]}
    for m in set(methods) - {"full"}:
        for b in budgets:
            s = rows[(m, b)]
            assert s["n_seeds"] == len(seeds) and np.isfinite(s["loss_mean"])
            assert 0 <= s["means"]["task_accuracy"] <= 1
            assert (s["vs_random"] is None) == (m == "random")
            if m != "random":  # paired intervals for loss, accuracy and accuracy per task
                assert set(s["vs_random"]) == {"heldout_loss", "task_accuracy", *(f"acc_{t}" for t in TASKS)}
                p = s["vs_random"]["task_accuracy"]
                assert p["n"] == len(seeds) and p["lo"] <= p["mean"] <= p["hi"]
    assert [(f["method"], f["budget"]) for f in res["vs_full"]] == [("full", b) for b in budgets]
    # every run: accuracy overall = the task-weighted mean of the per-task accuracies; loss per task
    pool_info = res["config"]["pool"]
    for r in res["runs"]:
        assert set(r["accuracy_by_task"]) == set(TASKS) == set(r["loss_by_task"])
        assert r["steps"] == res["spec"]["train"]["steps"]
        assert len(r["samples"]) > 0 and {"task", "gold", "answer"} <= set(r["samples"][0])
    assert res["config"]["base"]["steps"] == res["spec"]["base"]["steps"] > 0
    assert 0 <= res["config"]["base"]["eval"]["task_accuracy"] <= 1
    # ICon selects exactly the budget; the ICL scores cover the seeded sample, the probe the rest
    icon_frac = res["spec"]["icon"]["sample_fraction"]
    for r in res["runs"]:
        if r["method"] == "icon":
            assert r["docs"] == int(np.floor(r["budget"] * n + 1e-9)) == r["stats"]["selected"]
            assert 0.5 * icon_frac * n < r["stats"]["scored"] < min(1.5 * icon_frac, 1) * n
    # junk and near-duplicate shares come from the plant labels: full data holds exactly the planted shares
    sp = res["spec"]["pool"]
    pool = build_instruction_pool(sp["docs"], sp["wrong"], sp["garbled"], sp["dup"], sp["dup_clusters"],
                                  sp["eval_docs"], sp["assessment"], sp["seed"])
    full = rows[("full", 1.0)]
    assert full["docs"] == n and full["junk_frac"] == pytest.approx(pool.junk.mean())
    assert full["dup_frac"] == pytest.approx(pool.dup.mean()) and pool_info["eval_docs"] == len(pool.eval_tasks)
    for r in res["runs"]:
        assert sum(r["junk_by_kind"].values()) / r["docs"] == pytest.approx(r["junk_frac"])
    assert all(r["response_tokens"] < r["tokens"] for r in res["runs"])
    table = md.read_text()
    assert table == (out / "selection_quality.md").read_text()
    assert "| method | budget | docs | response loss | Δ loss [95% CI] | loss verdict | accuracy |" in table
    assert "| full (all data) |" in table and "Task accuracy by task" in table and "Verdicts" in table
    for m in set(methods) - {"full"}:
        assert f"- **{m}** @ " in table or m == "random"
    assert "ICon score (RICo" in table and "clean-vs-garbled" in table and "bench_selection_icon.yaml --quick" in table
    assert (out / "_report" / "report.html").exists()


# -- bench_icon.py --separation -----------------------------------------------------------------


def _bench_icon():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_icon
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_icon


def test_separation_aucs() -> None:
    bi = _bench_icon()
    kinds = np.array(["clean"] * 4 + ["wrong"] * 4 + ["garbled"] * 4)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4, 0.65, 0.75, 0.85, 0.95])
    a = bi.separation_aucs(kinds, scores)
    assert a["wrong"]["auc"] == 1.0 and a["wrong"]["lo"] == a["wrong"]["hi"] == 1.0
    assert a["garbled"]["auc"] == pytest.approx(6 / 16)  # pairs won: 0.9>{0.65,0.75,0.85} ...
    assert a["junk"]["auc"] == pytest.approx((16 + 6) / 32)
    assert a["junk"]["lo"] <= a["junk"]["auc"] <= a["junk"]["hi"]
    scores[0] = np.nan  # an unscored candidate is left out
    assert bi.separation_aucs(kinds, scores)["wrong"]["auc"] == 1.0
    assert bi.auc_ci(np.ones(3, bool), np.arange(3.0))["auc"] is None


def test_separation_run_with_the_tiny_engine(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    bi = _bench_icon()
    out = tmp_path / "sep.json"
    res = bi.separation("tiny", per_kind=1, n_items=2, out_json=out, tiny_scores=None, max_tokens_per_batch=2048)
    assert sorted(c["kind"] for c in res["candidates"]) == ["clean", "garbled", "wrong"]
    assert json.loads(out.read_text())["candidates"] == res["candidates"]
    for c in res["candidates"]:
        assert np.isfinite(c["rico"]) and np.isfinite(c["v1"])
    assert set(res["aucs"]) == {"rico", "v1"} and set(res["aucs"]["rico"]) == {"junk", "wrong", "garbled"}
    # the benchmark's own scores, matched by id
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [c["id"] for c in res["candidates"]]
    kinds = [c["kind"] for c in res["candidates"]]
    pq.write_table(pa.table({"id": ids + ["other"],
                             "icon_score": [1.0 if k == "clean" else 0.0 for k in kinds] + [None],
                             "label_kind": kinds + ["dup"]}), tmp_path / "s.parquet")
    bi.finish_separation(res, str(tmp_path / "s.parquet"))
    assert res["aucs"]["tiny_rico"]["junk"]["auc"] == 1.0 == res["aucs"]["tiny_rico_all"]["wrong"]["auc"]
    assert res["tiny_scored"] == len(ids) and res["per_kind_scored"] == {"clean": 1, "wrong": 1, "garbled": 1}
    md = bi.markdown_separation(res, "cmd")
    assert "| score | clean vs junk | clean vs wrong | clean vs garbled |" in md and "GPT-2 reference model" in md
