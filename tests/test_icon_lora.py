"""ICon's LoRA sequence classifier (SPEC 2.3 step 3, 2.5) on a tiny Llama: it learns a toy
label, is deterministic under the seed, scores through parallel_map like a remote worker, keeps
the budget, fails clearly on bad target modules, and runs in a local job."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("peft")

from conftest import job_dict  # noqa: E402
from conftest_models import tiny_gpt2, tiny_llama  # noqa: E402
from test_icon import write_assessment  # noqa: E402
from thresher import run  # noqa: E402
from thresher.models.loading import ModelConfig  # noqa: E402
from thresher.selectors import icon_lora as il  # noqa: E402
from thresher.selectors.base import SelectContext  # noqa: E402
from thresher.selectors.icon import ADAPTER_FILE, IConSelector, IConSelectorParams, auc  # noqa: E402

WORDS = ("the quick brown fox jumps over lazy dog journey of thousand miles begins with single step data "
         "selection chooses documents language model learns from perplexity measures how surprised").split()
MARKER = "frog"
# small, fast training for tiny models (the paper's lr 5e-5 x 128-row steps needs far more data)
FAST = {"epochs": 6, "lr": 1e-2, "batch_size": 8, "grad_accum": 1, "max_length": 128}
# a short template: the tiny tokenizer splits the Alpaca preamble into ~100 tokens
TEMPLATE = "Q: {prompt}\nA: "


@pytest.fixture(autouse=True)
def restore_threads() -> Any:
    """These tests run torch with one thread; leave the setting as it was for other tests."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("lora_models") / "llama")


def toy_rows(n: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Prompts, responses and labels: a response is positive iff it contains the marker word."""
    rng = random.Random(seed)
    prompts, responses, labels = [], [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        positive = rng.random() < 0.5
        if positive:
            words.insert(rng.randint(0, len(words)), MARKER)
        prompts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) + "?")
        responses.append(" ".join(words) + ".")
        labels.append(positive)
    return prompts, responses, np.array(labels)


def texts_of(prompts: list[str], responses: list[str]) -> list[str]:
    return [TEMPLATE.format(prompt=q) + a for q, a in zip(prompts, responses)]


def cpu(path: Path) -> ModelConfig:
    """One torch thread: much faster for tiny models on a busy machine."""
    return ModelConfig(str(path), "sequence_classification", device="cpu", torch_threads=1)


def settings(seed: int = 0, **over: Any) -> il.TrainSettings:
    return il.TrainSettings(seed=seed, **{**FAST, **over})


def shipped_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """A parallel_map that behaves like a fresh remote worker: pickled items, empty model cache."""
    il.clear_cache()
    return [fn(pickle.loads(pickle.dumps(x))) for x in items]


def test_learns_marker_and_scores_like_a_worker(llama: Path) -> None:
    q, a, y = toy_rows(260)
    texts = texts_of(q, a)
    spec, lora = cpu(llama), il.LoraSpec()
    trained = il.train_lora_classifier(spec, lora, settings(), texts[:200], y[:200])
    assert trained.stats["trainable_params"] > 0 and trained.stats["steps"] == 6 * 25
    local = il.score_pool(spec, lora, trained, texts, 128, lambda f, xs: [f(x) for x in xs], chunk_rows=100)
    assert local.shape == (260,) and ((local >= 0) & (local <= 1)).all()
    held_auc = auc(y[200:], local[200:])
    assert held_auc is not None and held_auc >= 0.9, held_auc
    remote = il.score_pool(spec, lora, trained, texts, 128, shipped_map, chunk_rows=100)
    np.testing.assert_allclose(remote, local, atol=1e-5)


def test_deterministic_under_seed(llama: Path) -> None:
    q, a, y = toy_rows(48, seed=1)
    texts = texts_of(q, a)
    spec, lora = cpu(llama), il.LoraSpec()
    one = il.train_lora_classifier(spec, lora, settings(seed=3, epochs=1), texts, y)
    two = il.train_lora_classifier(spec, lora, settings(seed=3, epochs=1), texts, y)
    other = il.train_lora_classifier(spec, lora, settings(seed=4, epochs=1), texts, y)
    assert one.adapter == two.adapter and one.digest == two.digest
    assert other.digest != one.digest


def test_bad_target_modules(llama: Path, tmp_path: Path) -> None:
    q, a, y = toy_rows(16)
    spec = cpu(llama)
    with pytest.raises(ValueError, match=r"match no layer.*'q_proj'.*'v_proj'.*selector.target_modules"):
        il.train_lora_classifier(spec, il.LoraSpec(target_modules=("c_attn",)), settings(), texts_of(q, a), y)
    gpt2 = tiny_gpt2(tmp_path / "gpt2")  # Conv1D attention: target its c_attn
    out = il.train_lora_classifier(cpu(gpt2), il.LoraSpec(target_modules=("c_attn",)),
                                   settings(epochs=1), texts_of(q, a), y)
    assert out.stats["trainable_params"] > 0


def selector_table(n: int) -> tuple[pa.Table, np.ndarray]:
    """A score table with text: phi is high exactly for marker rows (a third of the rows unsampled)."""
    q, a, y = toy_rows(n, seed=2)
    rng = np.random.default_rng(0)
    ph = np.where(y, 0.5, -0.5) + 0.01 * rng.normal(size=n)
    mask = np.arange(n) % 3 != 2
    col = pa.array(np.where(mask, ph, np.nan), pa.float64(), mask=~mask)
    table = pa.table({"id": [f"d{i}" for i in range(n)], "n_words": np.full(n, 10), "icon_score": col,
                      "icon_phi": col, "prompt": q, "response": a})
    return table, y


def test_selector_lora_budget_and_adapter(llama: Path, tmp_path: Path) -> None:
    table, y = selector_table(450)
    params = IConSelectorParams(budget=0.2, top_k=0.5, classifier="lora", classifier_model=str(llama), device="cpu",
                                torch_threads=1, template=TEMPLATE, score_chunk_rows=128, **{**FAST, "epochs": 8})
    sel = IConSelector(params)
    assert sel.text_columns() == ["prompt", "response"]
    ctx = SelectContext(seed=0, pool_docs=450, pool_tokens=4500, artifacts_dir=str(tmp_path / "_selection"))
    res = sel.select(table, ctx)
    assert res.selected.sum() == 90  # floor(0.2 * 450)
    st = res.stats
    assert st["classifier"] == "lora" and st["eval_auc"] >= 0.9, st
    prob = res.columns["icon_prob"].to_numpy()
    assert len(prob) == 450 and np.isfinite(prob).all()
    assert y[res.selected].mean() > 0.9  # the top of the pool carries the marker
    adapter = Path(st["lora"]["adapter_file"])
    assert adapter == tmp_path / "_selection" / ADAPTER_FILE
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()[il.METADATA_KEY])
    assert meta["base_model"] == str(llama) and meta["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert any("lora_A" in k for k in keys) and any(k.endswith("score.weight") for k in keys)


def test_selector_lora_needs_model_and_text(llama: Path) -> None:
    table, _ = selector_table(30)
    ctx = SelectContext(seed=0, pool_docs=30, pool_tokens=300)
    with pytest.raises(ValueError, match="classifier_model"):
        IConSelector(IConSelectorParams(classifier="lora", top_k=0.5)).select(table, ctx)
    with pytest.raises(KeyError, match="prompt_column"):
        IConSelector(IConSelectorParams(classifier="lora", top_k=0.5, classifier_model=str(llama))).select(
            table.drop(["prompt", "response"]), ctx)
    # the icon scorer's model (and settings) are the default backbone
    sel = IConSelector(IConSelectorParams(classifier="lora"))
    spec = {"type": "icon", "model": str(llama), "template": "Q: {prompt}\nA: ", "device": "cpu"}
    assert sel.icon_scorer_spec(SelectContext(0, 1, 1, scorers=[{"type": "perplexity"}, spec])) == spec
    assert sel.icon_scorer_spec(SelectContext(0, 1, 1, scorers=[{**spec, "name": "other"}])) is None


def test_pipeline_lora_local(llama: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    q, a, _ = toy_rows(48, seed=5)
    records = [{"id": f"q{i}", "instruction": x, "output": r} for i, (x, r) in enumerate(zip(q, a))]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assess = write_assessment(tmp_path / "assess.jsonl")
    columns = {"prompt_column": "instruction", "response_column": "output", "id_column": "id", "shard_rows": 20}
    over = {"scorers": [{"type": "icon", "model": str(llama), "assessment": str(assess), "device": "cpu",
                         "assessment_limit": 2, "max_target_tokens": 16, "torch_threads": 1}],
            "selector": {"type": "icon", "budget": 0.25, "top_k": 0.25, "classifier": "lora", "epochs": 1,
                         "lr": 1e-3, "grad_accum": 1, "max_length": 48, "score_chunk_rows": 16, "template": TEMPLATE}}
    res = run(job_dict(data, tmp_path / "out", input={"path": str(data), **columns}, **over), progress=False)
    assert res.manifest["counts"]["selected"] == 12  # floor(0.25 * 48)
    stats = res.manifest["selection"]["selector_stats"]
    assert stats["classifier"] == "lora" and stats["lora"]["model"] == str(llama)
    assert (Path(res.output) / "_selection" / ADAPTER_FILE).exists()
    out = pa.concat_tables([pq.read_table(p) for p in sorted(Path(res.output).glob("part-*.parquet"))])
    assert out.num_rows == 12 and "icon_prob" in out.column_names and "prompt" in out.column_names
    # in-memory input: the select stage reads each shard's slice of the table for the text
    mem = run(job_dict(data, tmp_path / "mem", input=columns, **over), data=pa.Table.from_pylist(records),
              progress=False)
    mem_out = pa.concat_tables([pq.read_table(p) for p in sorted(Path(mem.output).glob("part-*.parquet"))])
    assert sorted(mem_out.column("id").to_pylist()) == sorted(out.column("id").to_pylist())
