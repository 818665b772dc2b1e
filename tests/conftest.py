"""Shared fixtures: offline settings and small corpora written to tmp folders."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# reference comparisons run fp32 on every CPU (cpu_bf16_autocast: auto would pick bf16 only on CPUs
# with native bf16); tests/test_dtype.py sets it itself to test the detection
os.environ.setdefault("THRESHER_CPU_BF16", "0")

WORDS = ("the of and to in that is was for it with as his on be at by had are but from or have an they which "
         "one you were her all she there would their we him been has when who will more no if out so said what "
         "up its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where much "
         "your way well down should because each just those people how too little state good very make world").split()


def make_docs(n: int, seed: int = 0, min_words: int = 60, max_words: int = 200) -> list[str]:
    """Deterministic English-like documents of several sentences."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        sents = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
        docs.append(" ".join(sents))
    return docs


def write_parquet_corpus(folder: Path, n_files: int, rows: int, seed: int = 0, **extra: list) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        docs = make_docs(rows, seed=seed * 1000 + i)
        cols = {"text": docs, "url": [f"https://example.com/{i}/{j}" for j in range(rows)]}
        path = folder / f"shard-{i:03d}.parquet"
        pq.write_table(pa.table(cols), path, row_group_size=max(rows // 3, 1))
        paths.append(path)
    return paths


def write_jsonl(path: Path, records: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Write records as JSONL; raw_lines replaces given line numbers (0-based) with raw bytes."""
    lines = [json.dumps(r).encode() for r in records]
    for i, raw in (raw_lines or {}).items():
        lines[i] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Four Parquet files of 300 documents each."""
    write_parquet_corpus(tmp_path / "corpus", 4, 300)
    return tmp_path / "corpus"


def job_dict(input_path: str | Path, out: str | Path, **over) -> dict:
    job = {
        "name": "test",
        "seed": 7,
        "input": {"path": str(input_path)},
        "scorers": [],
        "selector": {"type": "topk", "column": "n_words", "budget": 0.25},
        "engine": {"local": {"workers": 1}},
        "output": {"path": str(out)},
    }
    for k, v in over.items():
        job[k] = v
    return job


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (setuptools writes build/ beside the sources,
    never into the repository)."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    shutil.copytree(root / "thresher", src / "thresher", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("thresher-*.whl")
    return whl



# -- a local S3 server (tests/s3_server.py: moto's server mode, HTTP on 127.0.0.1) ----------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """The session's local S3 server (`s3_server.S3Server`: .endpoint, .env(), .make_bucket()); skips
    the test when moto[server] is not installed."""
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    from s3_server import S3Server, s3_server_process

    with s3_server_process(tmp_path_factory.mktemp("moto")) as endpoint:
        yield S3Server(endpoint)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, `s3://NAME`, with this process's AWS_* variables pointing at the server for
    the test (every other AWS_* variable removed; restored afterwards)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.make_bucket("thresher")
