"""Perplexity scorer against direct model(...) calls on tiny GPT-2 and Llama models."""

from __future__ import annotations

import functools
import math
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from conftest_models import sample_texts, tiny_bert, tiny_gpt2, tiny_llama
from thresher.models.loading import ModelError
from thresher.scorers.base import ScorerError
from thresher.scorers.registry import build_scorer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"gpt2": tiny_gpt2(root / "gpt2"), "llama": tiny_llama(root / "llama"), "bert": tiny_bert(root / "bert")}


@functools.lru_cache(maxsize=None)
def reference(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def direct_losses(folder: Path, text: str | list[int], limit: int | None = None) -> np.ndarray:
    """Token losses from one unpadded model(...) call (reference implementation)."""
    tok, model = reference(folder)
    ids = (tok(text)["input_ids"] if isinstance(text, str) else text)[:limit]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
    return F.cross_entropy(logits[:-1], x[0, 1:], reduction="none").numpy()


def batch_of(texts: list[str]) -> pa.RecordBatch:
    return pa.record_batch({"id": [f"d{i:04d}" for i in range(len(texts))], "text": texts})


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_matches_direct_model_calls(models: dict[str, Path], arch: str) -> None:
    texts = sample_texts(30, seed=3)
    scorer = build_scorer({"type": "perplexity", "model": str(models[arch]), "device": "cpu",
                           "max_tokens_per_batch": 300, "token_losses": True})
    out = scorer(batch_of(texts))
    nll = out["perplexity_nll"].to_pylist()
    ppl = out["perplexity_ppl"].to_pylist()
    n_tok = out["perplexity_n_tokens"].to_pylist()
    per_token = out["perplexity_token_loss"].to_pylist()
    for i in range(0, 30, 3):
        ref = direct_losses(models[arch], texts[i])
        assert n_tok[i] == len(ref) + 1
        assert nll[i] == pytest.approx(float(ref.mean()), abs=1e-4)
        assert ppl[i] == pytest.approx(math.exp(nll[i]), rel=1e-9)
        assert per_token[i][0] == 0.0 and len(per_token[i]) == n_tok[i]
        np.testing.assert_allclose(per_token[i][1:], ref, atol=1e-4)
    assert out["perplexity_reason"].null_count == 30
    stats = scorer.stats()
    assert stats["batches"] > 1 and 0 <= stats["padding_fraction"] < 0.5


def test_llama_tokenizer_bos_counts_as_token_zero(models: dict[str, Path]) -> None:
    scorer = build_scorer({"type": "perplexity", "model": str(models["llama"]), "token_losses": True})
    out = scorer(batch_of(["fox"]))
    # "<s>" + the word's pieces: token 0 is the BOS and carries the leading 0.0
    assert out["perplexity_n_tokens"][0].as_py() >= 2
    assert out["perplexity_token_loss"][0].as_py()[0] == 0.0
    assert out["perplexity_nll"][0].as_py() is not None


def test_batching_does_not_change_scores(models: dict[str, Path]) -> None:
    texts = sample_texts(25, seed=4)
    results = []
    for budget, window in [(128, 4), (4096, 1024)]:
        s = build_scorer({"type": "perplexity", "model": str(models["gpt2"]), "max_tokens_per_batch": budget,
                          "sort_window": window})
        results.append(np.array(s(batch_of(texts))["perplexity_nll"].to_pylist()))
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)


def test_long_documents_chunk_and_truncate(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    folder = models["gpt2"]
    tok = AutoTokenizer.from_pretrained(folder)
    text = " ".join(sample_texts(8, seed=5))
    ids = tok(text)["input_ids"]
    assert len(ids) > 60
    chunked = build_scorer({"type": "perplexity", "model": str(folder), "max_length": 16, "token_losses": True})
    out = chunked(batch_of([text]))
    assert out["perplexity_n_tokens"][0].as_py() == len(ids)
    assert out["perplexity_reason"][0].as_py() is None
    losses = out["perplexity_token_loss"][0].as_py()
    assert len(losses) == len(ids) and all(x > 0 for x in losses[1:])
    # expected: each chunk of 16 tokens (overlapping by one) scored on its own
    expected = []
    for start in range(0, len(ids) - 1, 15):
        expected.append(direct_losses(folder, ids[start:start + 16]))
    np.testing.assert_allclose(losses[1:], np.concatenate(expected), atol=1e-4)
    assert chunked.stats()["docs_chunked"] == 1

    trunc = build_scorer({"type": "perplexity", "model": str(folder), "max_length": 16, "long_doc_policy": "truncate"})
    out = trunc(batch_of([text]))
    assert out["perplexity_reason"][0].as_py() == "truncated"
    assert out["perplexity_n_tokens"][0].as_py() == 16
    assert out["perplexity_nll"][0].as_py() == pytest.approx(float(direct_losses(folder, text, 16).mean()), abs=1e-4)


def test_blank_and_too_short_texts_get_null_and_reason(models: dict[str, Path]) -> None:
    scorer = build_scorer({"type": "perplexity", "model": str(models["gpt2"]), "token_losses": True})
    out = scorer(batch_of(["", "   \n\t", "a", "The quick brown fox jumps."]))
    assert out["perplexity_reason"].to_pylist()[:3] == ["empty", "empty", "too_short"]
    assert out["perplexity_nll"].to_pylist()[:3] == [None, None, None]
    assert out["perplexity_ppl"].to_pylist()[:3] == [None, None, None]
    assert out["perplexity_n_tokens"].to_pylist()[:3] == [None, None, 1]
    assert out["perplexity_token_loss"].to_pylist()[:3] == [None, None, None]
    last = out["perplexity_nll"][3].as_py()
    assert last is not None and math.isfinite(last)
    # an all-blank batch works too
    out = scorer(batch_of(["", " "]))
    assert out["perplexity_nll"].null_count == 2


def test_bf16_autocast_close_to_fp32(models: dict[str, Path]) -> None:
    texts = sample_texts(8, seed=6)
    fp32 = build_scorer({"type": "perplexity", "model": str(models["llama"])})(batch_of(texts))
    bf16 = build_scorer({"type": "perplexity", "model": str(models["llama"]), "cpu_bf16_autocast": True})(batch_of(texts))
    np.testing.assert_allclose(bf16["perplexity_nll"].to_pylist(), fp32["perplexity_nll"].to_pylist(), rtol=0.03)


def test_bad_models_are_clear_errors(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        build_scorer({"type": "perplexity", "model": str(tmp_path / "missing")})(batch_of(["hi there"]))
    with pytest.raises(ModelError, match="not a causal language model"):
        build_scorer({"type": "perplexity", "model": str(models["bert"])})(batch_of(["hi there"]))
    with pytest.raises(ValueError):
        build_scorer({"type": "perplexity", "model": "x", "long_doc_policy": "drop"})


def test_pickles_without_the_model(models: dict[str, Path]) -> None:
    scorer = build_scorer({"type": "perplexity", "model": str(models["gpt2"])})
    before = scorer(batch_of(["Shares rose sharply today."]))
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._lm is None and not clone._ready
    after = clone(batch_of(["Shares rose sharply today."]))
    assert after["perplexity_nll"].equals(before["perplexity_nll"])


def test_scorer_error_names_rows(models: dict[str, Path]) -> None:
    # dtype given explicitly: a cache entry of its own, so breaking it affects no other test
    scorer = build_scorer({"type": "perplexity", "model": str(models["gpt2"]), "dtype": "float32"})
    scorer.ensure_setup()
    scorer._lm.model.forward = None  # type: ignore[assignment]  # break the model after setup
    with pytest.raises(ScorerError, match="d0000"):
        scorer(batch_of(["some text here"]))
