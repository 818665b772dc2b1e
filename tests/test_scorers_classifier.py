"""Classifier scorer: regression, single-label, multi-label heads against direct model(...) calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest_models import sample_texts, tiny_bert, tiny_gpt2, tiny_gpt2_classifier
from thresher.models.loading import ModelError
from thresher.scorers.registry import build_scorer


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clf")
    return {"single": tiny_bert(root / "single", 3), "regression": tiny_bert(root / "reg", 1),
            "multi": tiny_bert(root / "multi", 3, "multi_label_classification"),
            "gpt2": tiny_gpt2_classifier(root / "gpt2"), "lm": tiny_gpt2(root / "lm")}


def direct_logits(folder: Path, text: str) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok(text, return_tensors="pt", truncation=True, max_length=512)
    with torch.no_grad():
        return model(**{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}).logits[0].numpy()


def batch_of(texts: list[str]) -> pa.RecordBatch:
    return pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts})


TEXTS = sample_texts(12, seed=7) + ["", " \t "]


def test_single_label_columns(models: dict[str, Path]) -> None:
    scorer = build_scorer({"type": "classifier", "model": str(models["single"]), "label": "pos",
                           "max_tokens_per_batch": 200})
    assert scorer.output_schema().names == ["classifier_prob_neg", "classifier_prob_neutral", "classifier_prob_pos",
                                            "classifier_label", "classifier_score", "classifier_reason"]
    out = scorer(batch_of(TEXTS))
    for i in (0, 5, 11):
        probs = torch.softmax(torch.tensor(direct_logits(models["single"], TEXTS[i])), -1).numpy()
        got = [out[f"classifier_prob_{x}"][i].as_py() for x in ("neg", "neutral", "pos")]
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert out["classifier_label"][i].as_py() == ["neg", "neutral", "pos"][int(probs.argmax())]
        assert out["classifier_score"][i].as_py() == pytest.approx(probs[2], abs=1e-5)
    assert out["classifier_reason"].to_pylist()[-2:] == ["empty", "empty"]
    assert out["classifier_prob_pos"].to_pylist()[-2:] == [None, None]


def test_regression_one_score(models: dict[str, Path]) -> None:
    out = build_scorer({"type": "classifier", "model": str(models["regression"])})(batch_of(TEXTS))
    assert set(out) == {"classifier_score", "classifier_reason"}
    for i in (1, 7):
        assert out["classifier_score"][i].as_py() == pytest.approx(float(direct_logits(models["regression"], TEXTS[i])[0]), abs=1e-5)
    assert out["classifier_score"][12].as_py() is None


def test_multi_label_list_column(models: dict[str, Path]) -> None:
    scorer = build_scorer({"type": "classifier", "model": str(models["multi"]), "labels_as": "list", "name": "topic"})
    out = scorer(batch_of(TEXTS))
    assert set(out) == {"topic_probs", "topic_reason"}
    ref = torch.sigmoid(torch.tensor(direct_logits(models["multi"], TEXTS[3]))).numpy()
    np.testing.assert_allclose(out["topic_probs"][3].as_py(), ref, atol=1e-5)
    assert out["topic_probs"][13].as_py() is None


def test_decoder_classifier_without_pad_token(models: dict[str, Path]) -> None:
    # GPT-2 tokenizer has no pad token: pad = eos, and the model finds each row's last real token
    out = build_scorer({"type": "classifier", "model": str(models["gpt2"]), "max_tokens_per_batch": 256})(batch_of(TEXTS))
    for i in (2, 9):
        probs = torch.softmax(torch.tensor(direct_logits(models["gpt2"], TEXTS[i])), -1).numpy()
        np.testing.assert_allclose([out["classifier_prob_label_0"][i].as_py(), out["classifier_prob_label_1"][i].as_py()],
                                   probs, atol=1e-5)


def test_chunk_policy_averages_chunks(models: dict[str, Path]) -> None:
    long_text = " ".join(sample_texts(6, seed=8))
    trunc = build_scorer({"type": "classifier", "model": str(models["regression"]), "max_length": 16})
    chunk = build_scorer({"type": "classifier", "model": str(models["regression"]), "max_length": 16,
                          "long_doc_policy": "chunk"})
    a, b = trunc(batch_of([long_text])), chunk(batch_of([long_text]))
    assert a["classifier_reason"][0].as_py() == "truncated" and b["classifier_reason"][0].as_py() is None
    assert chunk.stats()["docs_chunked"] == 1
    assert a["classifier_score"][0].as_py() != pytest.approx(b["classifier_score"][0].as_py(), abs=1e-7)


def test_wrong_models_and_labels(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a sequence-classification"):
        build_scorer({"type": "classifier", "model": str(models["lm"])})(batch_of(["hello"]))
    with pytest.raises(ModelError, match="not one of the model's labels"):
        build_scorer({"type": "classifier", "model": str(models["single"]), "label": "great"}).output_schema()
    with pytest.raises(ModelError, match="regression"):
        build_scorer({"type": "classifier", "model": str(models["regression"]), "label": "score"}).output_schema()
    with pytest.raises(ModelError, match="not found"):
        build_scorer({"type": "classifier", "model": str(tmp_path / "none")}).output_schema()
