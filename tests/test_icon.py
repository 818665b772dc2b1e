"""ICon / RICo (SPEC 6.2): PPL bookkeeping, prefix cache = full sequence, control centring, φ,
labels and split, determinism, the selector and an instruction-data pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import job_dict
from conftest_models import tiny_bert, tiny_gpt2, tiny_llama
from thresher import run
from thresher.common.seeds import stable_hash
from thresher.common.templates import ALPACA_TEMPLATE
from thresher.models.icl import (ICLEngine, Item, contributions, in_sample, phi, random_context, shared_prefix_len,
                                 top_k_labels)
from thresher.models.loading import ModelConfig, ModelError, load_model
from thresher.scorers.base import ScorerError
from thresher.scorers.icon import IConParams, IConScorer
from thresher.selectors.base import SelectContext
from thresher.selectors.icon import IConSelector, IConSelectorParams, auc, split_train_eval

QA = [("What does the fox do?", "The quick brown fox jumps over the lazy dog."),
      ("Name a measure of surprise.", "Perplexity measures how surprised a model is by a text."),
      ("What happened to shares?", "Shares rose sharply after the company reported record profits."),
      ("How did the match end?", "The match ended in a draw after extra time in the final.")]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("icon_models")
    return {"gpt2": tiny_gpt2(root / "gpt2"), "llama": tiny_llama(root / "llama"),
            "bert": tiny_bert(root / "bert", head="base")}


def engine(path: Path, **kw) -> ICLEngine:
    lm = load_model(ModelConfig(str(path), "causal_lm", device="cpu"))
    return ICLEngine(lm.model, lm.tokenizer, lm.device, max_positions=lm.max_positions(), **kw)


def write_assessment(path: Path, pairs=QA) -> Path:
    path.write_text("\n".join(json.dumps({"prompt": q, "response": a}) for q, a in pairs) + "\n")
    return path


# -- bookkeeping -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_prefix_cache_equals_full_sequence(models: dict[str, Path], name: str) -> None:
    e = engine(models[name], max_tokens_per_batch=60)  # several continuation batches
    items = [e.item(q * (k + 1), a) for k, (q, a) in enumerate(QA)]
    for text in ("The quick brown fox. Data selection chooses documents.", random_context(80, 1, "x")):
        prefix = e.context_ids(text, items)
        t1, n1 = e.continuation_nll(prefix, items)
        t2, n2 = e.full_sequence_nll(prefix, items)
        assert (n1 == n2).all()
        np.testing.assert_allclose(t1 / n1, t2 / n2, atol=1e-4)
    t1, n1 = e.continuation_nll(e.bos, items)
    t2, n2 = e.full_sequence_nll(e.bos, items)
    np.testing.assert_allclose(t1 / n1, t2 / n2, atol=1e-4)


def varied_items(e: ICLEngine) -> list[Item]:
    """Assessment items of different prompt and response lengths."""
    return [e.item(q * (1 + k % 3), a * (1 + (k // 2) % 3)) for k, (q, a) in enumerate(QA * 2)]


@pytest.mark.parametrize("name", ["gpt2", "llama"])  # llama's tokenizer adds a BOS, gpt2's does not
def test_shared_item_head_equals_full_sequence(models: dict[str, Path], name: str) -> None:
    e = engine(models[name], max_tokens_per_batch=50)  # several continuation batches
    items = varied_items(e)
    assert len({len(it.ids) for it in items}) > 3 and len({it.n_scored for it in items}) > 1
    h = shared_prefix_len(items)
    header = e.encode(ALPACA_TEMPLATE.split("{prompt}")[0])
    assert h >= len(header) and all(it.ids[:len(header)] == header for it in items)  # the header is shared
    assert h <= min(it.start for it in items)  # never a scored token
    assert e.bos == ([e.tokenizer.bos_token_id] if name == "llama" else [])
    prefixes = [e.context_ids("Demo: add two numbers. The sum of 2 and 3 is 5.", items),
                e.context_ids(random_context(90, 2, "y"), items), e.bos]
    for prefix in prefixes:
        ref_t, ref_n = e.full_sequence_nll(prefix, items)
        for share, trim in ((True, True), (True, False), (False, True), (False, False)):
            e.trim_logits = trim
            t, n = e.continuation_nll(prefix, items, share_items_prefix=share)
            assert (n == ref_n).all() and (n == [it.n_scored for it in items]).all()
            np.testing.assert_allclose(t / n, ref_t / ref_n, atol=1e-4)
    e.trim_logits = True
    text = e.candidate_text("Add 2 and 3.", "5")
    c_fast = e.candidate_c("k", text, items, e.base_ppl(items), seed=1)
    c_naive = e.candidate_c("k", text, items, e.ppl(e.bos, items, naive=True), seed=1, naive=True)
    np.testing.assert_allclose(c_fast, c_naive, atol=1e-4)


def test_shared_item_head_partial_and_single(models: dict[str, Path]) -> None:
    e = engine(models["llama"], max_tokens_per_batch=40)
    items = varied_items(e)
    header = e.encode(ALPACA_TEMPLATE.split("{prompt}")[0])
    # one item whose head differs inside the header (as if its tokenisation merged differently)
    odd = list(items[3].ids)
    odd[5] = (odd[5] + 1) % len(e.tokenizer)
    mixed = items[:3] + [Item(odd, items[3].n_scored)] + items[4:]
    assert shared_prefix_len(mixed) == 5 < len(header)
    # a single item: everything up to its response is shared
    single = items[2:3]
    assert shared_prefix_len(single) == single[0].start
    prefix = e.context_ids("Some demonstration text.", mixed)
    for group in (mixed, single):
        t1, n1 = e.continuation_nll(prefix, group)
        t2, n2 = e.full_sequence_nll(prefix, group)
        assert (n1 == n2).all()
        np.testing.assert_allclose(t1 / n1, t2 / n2, atol=1e-4)


def test_shared_prefix_len_bounds() -> None:
    assert shared_prefix_len([]) == 0
    assert shared_prefix_len([Item([1, 2, 3, 4, 5], 2), Item([1, 2, 3, 9, 5, 6], 1)]) == 3
    assert shared_prefix_len([Item([1, 2, 3, 4, 5], 2), Item([1, 2, 7, 4], 1)]) == 2
    assert shared_prefix_len([Item([1, 2, 3, 4, 5], 2), Item([8, 2, 3, 4], 1)]) == 0
    assert shared_prefix_len([Item([1, 2, 3], 3), Item([1, 2, 3, 4], 1)]) == 0  # all of item 1 is scored
    assert shared_prefix_len([Item([1, 2, 3], 0), Item([1, 2, 3], 0)]) == 2  # at least one token left


def test_batch_plan_budgets(models: dict[str, Path]) -> None:
    e = engine(models["llama"], max_tokens_per_batch=64, max_cache_tokens=400)
    items = varied_items(e)
    for extra in (0, 30, 150):
        plan = e._plan(items, extra)
        assert sorted(i for b in plan for i in b) == list(range(len(items)))
        for b in plan:
            width = max(len(items[i].ids) for i in b)
            assert len(b) == 1 or (len(b) * width <= 64 and len(b) * (width + extra) <= 400)


def test_only_response_tokens_scored(models: dict[str, Path]) -> None:
    e = engine(models["llama"])
    it = e.item("What does the fox do?", "It jumps.")
    y = e.encode("It jumps.")
    assert it.n_scored == len(y) and it.ids[-len(y):] == y
    assert e.bos == [e.tokenizer.bos_token_id]  # BOS once, at the very start
    prefix = e.context_ids("A demo.", [it])
    assert prefix[0] == e.bos[0] and e.bos[0] not in prefix[1:] + it.ids
    _, count = e.continuation_nll(prefix, [it])
    assert count[0] == len(y)
    # changing the prompt changes the score, but the count of scored tokens stays the response's
    other = e.item("Something else entirely, longer.", "It jumps.")
    t2, c2 = e.continuation_nll(prefix, [other])
    assert c2[0] == len(y)


def test_context_truncated_to_fit_model(models: dict[str, Path]) -> None:
    e = engine(models["gpt2"], max_context_tokens=10_000)
    items = [e.item(q, a) for q, a in QA]
    ids = e.context_ids("word " * 2000, items)
    assert len(ids) + max(len(i.ids) for i in items) <= e.max_positions


def test_control_centred_and_deterministic(models: dict[str, Path]) -> None:
    e = engine(models["llama"])
    items = [e.item(q, a) for q, a in QA]
    base = e.base_ppl(items)
    # a candidate that is itself random noise of the same kind as the control
    means = [e.candidate_c(f"k{j}", random_context(120, 99, f"cand{j}"), items, base, seed=5).mean()
             for j in range(12)]
    real = [e.candidate_c(f"r{j}", "The quick brown fox jumps over the lazy dog. " * (j + 1), items, base,
                          seed=5).mean() for j in range(4)]
    spread = np.std(means) + np.std(real) + 1e-12
    assert abs(np.mean(means)) < 1.0 * spread
    a = e.candidate_c("same", "Some candidate text.", items, base, seed=3)
    b = e.candidate_c("same", "Some candidate text.", items, base, seed=3)
    c = e.candidate_c("same", "Some candidate text.", items, base, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert random_context(50, 1, "a") == random_context(50, 1, "a") != random_context(50, 2, "a")
    assert len(random_context(37, 0, "k")) == 37


def test_no_control_ablation() -> None:
    c = contributions(np.array([5.0, 20.0]), np.array([10.0, 10.0]), None)
    np.testing.assert_allclose(c, [0.5, -1.0], atol=1e-6)
    c = contributions(np.array([5.0]), np.array([10.0]), np.array([7.0]))
    np.testing.assert_allclose(c, [0.2], atol=1e-6)


def test_phi_properties() -> None:
    x = np.linspace(-0.5, 0.5, 1001)
    y = phi(x)
    assert phi(0.0) == 0.0
    np.testing.assert_allclose(phi(-x), -y, atol=1e-12)
    assert (np.diff(y) > 0).all()
    assert phi(0.5000001) == 1.0 and phi(-0.7) == -1.0 and phi(3.0) == 1.0
    assert abs(phi(0.5)) < 1.0
    s = np.random.default_rng(0).uniform(-0.5, 0.5, 200)
    assert (np.argsort(phi(s)) == np.argsort(s)).all()


@pytest.mark.parametrize("m,k", [(100, 0.15), (57, 0.15), (1000, 0.05), (20, 0.5)])
def test_label_counts_and_split(m: int, k: float) -> None:
    v = np.random.default_rng(m).normal(size=m)
    labels, _ = top_k_labels(v, k)
    assert abs(int(labels.sum()) - int(np.ceil(k * m))) <= 1
    train, held = split_train_eval(m, 0.9)
    assert len(train) == round(0.9 * m) and len(held) == m - len(train)
    assert train.max() < held.min()  # sequential: the last 10% evaluate


def test_sample_membership() -> None:
    ids = [f"d{i}" for i in range(4000)]
    s = in_sample(ids, 42, 0.25)
    assert abs(s.mean() - 0.25) < 0.03
    assert (s == in_sample(ids, 42, 0.25)).all() and (s != in_sample(ids, 43, 0.25)).any()
    assert in_sample(ids[:5], 0, 1.0).all()
    assert stable_hash(1, "a") == stable_hash(1, "a")


def test_auc() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


# -- scorer ------------------------------------------------------------------------------------
def scorer(models: dict[str, Path], tmp_path: Path, **kw) -> IConScorer:
    params = IConParams(model=str(models["gpt2"]), assessment=str(write_assessment(tmp_path / "a.jsonl")),
                        device="cpu", **kw)
    return IConScorer(params)


def instr_batch(n: int) -> pa.RecordBatch:
    q = [QA[i % 4][0] + f" ({i})" for i in range(n)]
    a = [QA[(i * 3) % 4][1] for i in range(n)]
    return pa.record_batch({"id": [f"r{i}" for i in range(n)], "text": [x + "\n\n" + y for x, y in zip(q, a)],
                            "prompt": q, "response": a})


def test_scorer_columns_and_sampling(models: dict[str, Path], tmp_path: Path) -> None:
    s = scorer(models, tmp_path, sample_fraction=0.5, seed=1)
    out = s(instr_batch(12))
    sampled = out["icon_sampled"].to_numpy(zero_copy_only=False)
    assert 0 < sampled.sum() < 12
    score = out["icon_score"].to_numpy(zero_copy_only=False)
    assert np.isnan(score[~sampled]).all() and np.isfinite(score[sampled]).all()
    np.testing.assert_allclose(out["icon_phi"].to_numpy(zero_copy_only=False)[sampled], phi(score[sampled]))
    cons = out["icon_consistency"].to_numpy(zero_copy_only=False)[sampled]
    assert ((cons >= 0) & (cons <= 1)).all()
    again = scorer(models, tmp_path, sample_fraction=0.5, seed=1)(instr_batch(12))
    assert all(out[k].equals(again[k]) for k in out)


def test_scorer_errors(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="assessment file"):
        IConScorer(IConParams(model=str(models["gpt2"]), assessment=str(tmp_path / "nope.jsonl"))).setup()
    s = scorer(models, tmp_path)
    plain = pa.record_batch({"id": ["a"], "text": ["hello"]})
    with pytest.raises(ScorerError, match="prompt_column"):
        s(plain)
    bad = IConScorer(IConParams(model=str(models["bert"]), assessment=str(write_assessment(tmp_path / "b.jsonl"))))
    with pytest.raises(ModelError, match="causal language model"):
        bad.setup()
    (tmp_path / "c.jsonl").write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    with pytest.raises(ValueError, match="assessment_prompt_field"):
        IConScorer(IConParams(model=str(models["gpt2"]), assessment=str(tmp_path / "c.jsonl"))).setup()


# -- selector ----------------------------------------------------------------------------------
def score_table(n: int, d: int = 8, sampled_every: int = 1, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    s = 0.05 * emb[:, 0] + 0.01 * rng.normal(size=n)  # score explained by the embedding
    mask = (np.arange(n) % sampled_every) == 0
    sc = pa.array(np.where(mask, s, np.nan), pa.float64(), mask=~mask)
    ph = pa.array(np.where(mask, phi(s), np.nan), pa.float64(), mask=~mask)
    table = pa.table({"id": [f"d{i}" for i in range(n)], "n_words": np.full(n, 10), "icon_score": sc,
                      "icon_phi": ph, "embedding_vector": pa.FixedSizeListArray.from_arrays(
                          pa.array(emb.ravel()), d)})
    return table, s


def test_selector_logistic(tmp_path: Path) -> None:
    table, s = score_table(600, sampled_every=2)
    sel = IConSelector(IConSelectorParams(budget=0.15))
    res = sel.select(table, SelectContext(seed=0, pool_docs=600, pool_tokens=6000))
    assert res.selected.sum() == 90
    assert res.stats["eval_auc"] > 0.8 and res.stats["positives"] in (45, 46)
    prob = res.columns["icon_prob"].to_numpy()
    assert len(prob) == 600 and np.isfinite(prob).all()
    top_true = set(np.argsort(-s)[:90])
    overlap = len(top_true & set(np.flatnonzero(res.selected))) / 90
    assert overlap > 0.15 * 3  # well above chance (0.15)
    again = sel.select(table, SelectContext(seed=0, pool_docs=600, pool_tokens=6000))
    assert (again.selected == res.selected).all()


def test_selector_direct() -> None:
    table, s = score_table(100, sampled_every=2)
    res = IConSelector(IConSelectorParams(budget=0.2, classifier="none")).select(
        table, SelectContext(seed=0, pool_docs=100, pool_tokens=1000))
    sampled = np.arange(100)[::2]
    expect = sampled[np.argsort(-s[sampled])[:20]]
    assert set(np.flatnonzero(res.selected)) == set(expect)
    assert "icon_prob" not in res.columns


def test_selector_labels_with_saturated_phi() -> None:
    """Scores beyond +-0.5 all map to phi = 1; labels by s still give exactly top_k positives."""
    table, s = score_table(200)
    sat = 1.0 + np.abs(s)  # every score saturates phi, distinct scores
    table = table.set_column(table.column_names.index("icon_score"), "icon_score", pa.array(sat))
    table = table.set_column(table.column_names.index("icon_phi"), "icon_phi", pa.array(phi(sat)))
    ctx = SelectContext(seed=0, pool_docs=200, pool_tokens=2000)
    by_score = IConSelector(IConSelectorParams(budget=0.15)).select(table, ctx)
    assert by_score.stats["positives"] == 30 and by_score.stats["eval_auc"] is not None
    by_phi = IConSelector(IConSelectorParams(budget=0.15, label_by="phi"))
    with pytest.raises(ValueError, match="single class"):  # the reference code's ties: all positive
        by_phi.select(table, ctx)


# -- pipeline ----------------------------------------------------------------------------------
def write_instructions(path: Path, n: int = 40) -> Path:
    rows = [{"id": f"q{i}", "instruction": QA[i % 4][0] + f" #{i}", "output": QA[(i * 7) % 4][1]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def icon_job(models: dict[str, Path], data: Path, assessment: Path, out: Path, **over) -> dict:
    job = {"input": {"path": str(data), "prompt_column": "instruction", "response_column": "output",
                     "id_column": "id", "shard_rows": 15},
           "scorers": [{"type": "icon", "model": str(models["gpt2"]), "assessment": str(assessment),
                        "device": "cpu"},
                       {"type": "embedding", "model": str(models["bert"]), "device": "cpu"}],
           "selector": {"type": "icon", "budget": 0.25, "top_k": 0.25}}
    job.update(over)
    return job_dict(data, out, **job)


def test_pipeline_local(models: dict[str, Path], tmp_path: Path) -> None:
    data = write_instructions(tmp_path / "data.jsonl")
    assess = write_assessment(tmp_path / "assess.jsonl")
    res = run(icon_job(models, data, assess, tmp_path / "out"), progress=False)
    counts = res.manifest["counts"]
    assert counts["selected"] == 10
    direct = run(icon_job(models, data, assess, tmp_path / "out2",
                          selector={"type": "icon", "budget": 0.25, "classifier": "none"}), progress=False)
    assert direct.manifest["counts"]["selected"] == 10
