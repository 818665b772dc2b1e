"""train-proxy: a tiny proxy LM that the perplexity scorer loads, preferring in-domain text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest_models import CORPUS
from thresher.commands._textio import read_texts
from thresher.commands.train_proxy import main as proxy_main
from thresher.scorers.registry import build_scorer


def test_read_texts_formats(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "  "}\n{"text": "two"}\n')
    pq.write_table(pa.table({"text": ["three", ""]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("four\n\nfive\n")
    assert read_texts([tmp_path]) == ["one", "two", "three", "four", "five"]
    assert read_texts([tmp_path / "c.txt"], file_per_doc=True) == ["four\n\nfive\n"]
    assert read_texts([tmp_path], limit=2) == ["one", "two"]


def test_train_proxy_and_score(tmp_path: Path) -> None:
    ref = tmp_path / "ref.jsonl"
    rng = random.Random(0)
    docs = [" ".join(rng.sample(CORPUS[:8], 4)) for _ in range(200)]
    ref.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    out = tmp_path / "proxy"
    rc = proxy_main(["--input", str(ref), "--output", str(out), "--vocab-size", "300", "--n-layer", "1",
                     "--n-embd", "32", "--n-head", "2", "--context", "32", "--steps", "60", "--batch-size", "8",
                     "--lr", "3e-3", "--warmup", "10", "--device", "cpu"])
    assert rc == 0
    info = json.loads((out / "training_info.json").read_text())
    assert info["log"][-1]["loss"] < info["log"][0]["loss"]
    scorer = build_scorer({"type": "perplexity", "model": str(out)})
    in_domain = " ".join(CORPUS[:3])
    words = in_domain.split()
    rng.shuffle(words)
    res = scorer(pa.record_batch({"id": ["a", "b"], "text": [in_domain, " ".join(words)]}))
    ppl = res["perplexity_ppl"].to_pylist()
    assert ppl[0] < ppl[1]
