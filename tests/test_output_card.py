"""Outputs that fit training and the Hub: the dataset card (`_README.md` + `.huggingface.yaml`, so
`datasets.load_dataset(folder)` loads exactly the parts), `output.columns`, parts re-chunked to
`output.target_rows_per_part` (resumable part by part), and `RunResult.to_dataset()`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import thresher.common.atomic as atomic
from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.config import load_job
from thresher.io.output import OutputLayout, check_own_or_empty, remove_stale_temporaries
from thresher.specs import JobError

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["id", "text", "url", "n_chars", "n_words"]  # what the parts of job_dict's job hold


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def part_ids(out: Path) -> list[str]:
    return [i for p in parts(out) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]


def digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parts(out)}


def manifest(out: Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.fixture
def plain(tmp_path: Path, corpus: Path) -> tuple[Path, object]:
    """The default job (topk 25% of 4 x 300 rows by n_words): one part per shard."""
    res = run(job_dict(corpus, tmp_path / "plain"), progress=False)
    return tmp_path / "plain", res


# -- the card ------------------------------------------------------------------------------------


def test_card_and_datasets_loads_the_folder(tmp_path: Path, plain, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    out, res = plain
    card = (out / "_README.md").read_text()
    meta = front_matter(card)
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "part-*.parquet"}]}]
    assert meta["configs"] == configs
    assert yaml.safe_load((out / ".huggingface.yaml").read_text()) == {"configs": configs}
    m = manifest(out)
    assert f"| input rows | {m['counts']['input_rows']:,} |" in card
    assert f"| **selected** (the rows of this dataset) | {m['counts']['selected']:,} |" in card
    assert "not_chosen" in card and "Selector `topk`" in card and "baseline" in card
    for col in COLUMNS:
        assert f"| `{col}` |" in card
    assert "load_dataset" in card and "read_parquet" in card and "spark.read.parquet" in card
    assert str(tmp_path) not in card  # no absolute path of this machine (the job's paths made relative)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds["id"] == part_ids(out) and len(ds) == m["counts"]["selected"] == 300
    assert set(ds.column_names) == set(COLUMNS)
    assert len(pd.read_parquet(out)) == 300  # the card's names start with "_" / ".": still a Parquet folder


def test_card_redacts_secrets_and_is_thresher_own(tmp_path: Path, corpus: Path) -> None:
    job = job_dict(corpus, tmp_path / "out", engine={"local": {"workers": 1},
                                                     "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "XYZZY"}}})
    run(job, progress=False)
    out = tmp_path / "out"
    assert "XYZZY" not in (out / "_README.md").read_text()
    for name in ("._README.md.tmp-123", "..huggingface.yaml.tmp-45"):
        (out / name).write_text("half")
    removed = {p.name for p in remove_stale_temporaries(out)}
    assert removed == {"._README.md.tmp-123", "..huggingface.yaml.tmp-45"}
    OutputLayout(out).clear_stage("write")
    assert not any((out / n).exists() for n in ("_README.md", ".huggingface.yaml", "_manifest.json"))
    foreign = tmp_path / "foreign"  # a card alone does not make a folder thresher's
    foreign.mkdir()
    (foreign / "_README.md").write_text("# mine\n")
    with pytest.raises(JobError, match="not written by thresher"):
        check_own_or_empty(foreign)


# -- output.columns ------------------------------------------------------------------------------


def test_output_columns_rewrite_only_the_write_stage(tmp_path: Path, corpus: Path, plain) -> None:
    out = tmp_path / "out"

    def job(columns: dict | None) -> dict:
        return job_dict(corpus, out, output={"path": str(out), **({"columns": columns} if columns else {})})

    run(job({"drop": ["url"]}), progress=False)
    assert pq.read_schema(parts(out)[0]).names == ["id", "text", "n_chars", "n_words"]
    scored = {p: p.stat().st_mtime_ns for p in (out / "_scores").glob("*")}
    selected = {p: p.stat().st_mtime_ns for p in (out / "_selection").glob("*")}
    res = run(job({"keep": ["n_*"]}), progress=False)  # same folder, no --overwrite: only the parts change
    assert pq.read_schema(parts(out)[0]).names == ["id", "text", "n_chars", "n_words"]
    res = run(job({"keep": ["url"]}), progress=False)
    assert pq.read_schema(parts(out)[0]).names == ["id", "text", "url"]
    assert res.manifest["resumed_shards"] == {"score": 4, "select": True, "write": 0}
    assert {p: p.stat().st_mtime_ns for p in (out / "_scores").glob("*")} == scored
    assert {p: p.stat().st_mtime_ns for p in (out / "_selection").glob("*")} == selected
    assert part_ids(out) == part_ids(plain[0])
    assert res.manifest["counts"]["selected_words"] is None  # n_words is not in the parts
    res = run(job(None), progress=False)  # back to every column: the same bytes as a default run
    assert digest(out) == digest(plain[0])
    assert res.manifest["resumed_shards"]["write"] == 0
    assert run(job(None), progress=False).manifest["resumed_shards"]["write"] == 4


def test_output_columns_errors(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "out"
    for columns, message in [({"drop": ["url", "id"]}, r"output\.columns\.drop: item 1 \('id'\) would drop 'id'"),
                             ({"drop": ["t*"]}, r"output\.columns\.drop: .*would drop 'text'"),
                             ({}, "either `keep"), ({"keep": ["url"], "drop": ["url"]}, "not both"),
                             ({"keep": []}, "output.columns.keep: an empty list")]:
        with pytest.raises(JobError, match=message):
            load_job(data=job_dict(corpus, out, output={"path": str(out), "columns": columns}))
    for columns, message in [({"drop": ["nope"]}, r"output\.columns\.drop\.0: 'nope' matches no column"),
                             ({"keep": ["n_words", "ur"]}, r"output\.columns\.keep\.1: 'ur' .*did you mean 'url'"),
                             ({"drop": ["embedding_*"]}, r"'embedding_\*' matches no column")]:
        with pytest.raises(JobError, match=message):
            run(job_dict(corpus, out, output={"path": str(out), "columns": columns}), progress=False)
        assert not out.exists()  # refused at plan time, before the output folder is touched
    inst = tmp_path / "inst.parquet"
    pq.write_table(pa.table({"prompt": ["Say hi."] * 4, "response": ["Hi there."] * 4}), inst)
    with pytest.raises(JobError, match=r"output\.columns\.drop\.0: 'resp\*' would drop 'response'"):
        run(job_dict(inst, out, input={"path": str(inst), "prompt_column": "prompt", "response_column": "response"},
                     output={"path": str(out), "columns": {"drop": ["resp*"]}}), progress=False)


# -- target_rows_per_part ------------------------------------------------------------------------


def test_target_rows_per_part(tmp_path: Path, corpus: Path, plain) -> None:
    out = tmp_path / "out"
    res = run(job_dict(corpus, out, output={"path": str(out), "target_rows_per_part": 70}), progress=False)
    files = parts(out)
    assert [pq.read_metadata(p).num_rows for p in files] == [70, 70, 70, 70, 20]
    merged, default = (pa.concat_tables([pq.read_table(p) for p in fs]) for fs in (files, parts(plain[0])))
    assert merged.equals(default)  # the same rows, columns and (shard, row) order as one part per shard
    m = res.manifest
    assert m["shards"] == manifest(out)["shards"]
    assert [p["file"] for p in m["shards"]] == [p.name for p in files]
    for entry, path in zip(m["shards"], files):
        assert entry["rows"] == pq.read_metadata(path).num_rows and entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["counts"]["selected"] == 300 and m["counts"]["selected_words"] == plain[1].manifest["counts"][
        "selected_words"]
    assert not (out / "_thresher" / "staged").exists()  # the per-shard parts are gone once cut
    assert "| part-00004.parquet | 20 |" in (out / "_README.md").read_text()
    again = run(job_dict(corpus, out, output={"path": str(out), "target_rows_per_part": 70}), progress=False)
    assert again.manifest["shards"] == m["shards"] and again.manifest["resumed_shards"]["write"] == 4
    # a byte target: about a third of the bytes per part
    total = sum(p["bytes"] for p in plain[1].manifest["shards"])
    res = run(job_dict(corpus, out, output={"path": str(out), "target_bytes_per_part": total // 3}), progress=False)
    rows = [p["rows"] for p in res.manifest["shards"]]
    assert 3 <= len(rows) <= 4 and len(set(rows[:-1])) == 1 and sum(rows) == 300, rows
    assert part_ids(out) == part_ids(plain[0])
    res = run(job_dict(corpus, out, output={"path": str(out), "target_rows_per_part": 1000}), progress=False)
    assert [p["rows"] for p in res.manifest["shards"]] == [300] and len(parts(out)) == 1


def test_kill_between_rechunked_parts_then_resume_is_identical(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", 3, 200)
    job = job_dict(tmp_path / "c", tmp_path / "clean", output={"path": str(tmp_path / "clean"),
                                                               "target_rows_per_part": 40})
    before = atomic._commits
    clean = run(job, progress=False)
    total = atomic._commits - before  # this process's commits for a whole run (workers: 1)
    n_parts = len(clean.manifest["shards"])
    assert n_parts == 4  # 150 rows selected
    # the last commits: part j, its marker (j = 0..n-1), .huggingface.yaml, _README.md, manifest, summary
    first_part = total - 4 - 2 * n_parts + 1
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, n, done in [("between", first_part + 4, 2), ("mid", first_part + 1, 0)]:
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "thresher.commands.cli", "run", str(tmp_path / "job.yaml"),
                               "--output", str(out), "-q"], env={**env, "THRESHER_FAULT": f"commit:{n}"},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 137, proc.stderr[-2000:]
        markers = sorted(p.name for p in (out / "_thresher" / "done").glob("write-part-*.json"))
        assert markers == [f"write-part-{j:05d}.json" for j in range(done)]
        assert len(parts(out)) == (done + 1 if name == "mid" else done)  # "mid": part 0 without its marker
        assert list(out.rglob(".*.tmp-*")) and not (out / "_manifest.json").exists()  # what the kill left
        res = run({**job, "output": {**job["output"], "path": str(out)}}, progress=False)
        assert digest(out) == digest(tmp_path / "clean")
        assert res.manifest["shards"] == clean.manifest["shards"]
        assert res.manifest["counts"] == clean.manifest["counts"]
        card = (out / "_README.md").read_text().replace(f" {name}", " clean").replace(f"'{name}", "'clean")
        assert card == (tmp_path / "clean" / "_README.md").read_text()
        assert not list(out.rglob(".*.tmp-*")) and not (out / "_thresher" / "staged").exists()


# -- RunResult -----------------------------------------------------------------------------------


def test_run_result_to_dataset_and_pandas(tmp_path: Path, plain, corpus: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, res = plain
    ds = res.to_dataset(cache_dir=str(tmp_path / "hf"))
    assert ds["id"] == part_ids(out) and len(ds) == res.manifest["counts"]["selected"]
    df = res.to_pandas()
    assert df["id"].tolist() == part_ids(out) and list(df.columns) == COLUMNS
    scored = run(job_dict(corpus, tmp_path / "scored"), progress=False, score_only=True)
    with pytest.raises(JobError, match="score-only"):
        scored.to_dataset()
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(JobError, match="pip install datasets"):
        res.to_dataset()


@pytest.mark.slow
def test_spark_rechunks_and_reads_the_folder_without_a_glob(tmp_path: Path, corpus: Path, plain) -> None:
    """One local Spark session: the Spark engine re-chunks (`write_part` as Spark tasks) to the
    same bytes as the local engine, and `spark.read.parquet(folder)` reads the parts only."""
    pytest.importorskip("pyspark")
    from thresher.config import SparkEngineSpec
    from thresher.pipelines.spark_engine import get_session, stop_session

    conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    spark, owned = get_session(SparkEngineSpec(master="local[2]", conf=conf), progress=False)
    try:
        out = {}
        for engine in ("local", "spark"):
            out[engine] = tmp_path / engine
            run(job_dict(corpus, out[engine], output={"path": str(out[engine]), "target_rows_per_part": 70},
                         engine={"name": engine, "local": {"workers": 1},
                                 "spark": {"master": "local[2]", "conf": conf}}), progress=False)
        assert digest(out["spark"]) == digest(out["local"]) and len(digest(out["local"])) == 5
        df = spark.read.parquet(str(plain[0]))  # skips _README.md, .huggingface.yaml, _scores/ ...
        assert df.count() == 300 and sorted(df.columns) == sorted(COLUMNS)
    finally:
        if owned:
            stop_session(spark)
