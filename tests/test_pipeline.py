"""End to end on the local engine: outputs, resume after SIGKILL, locks, re-selection."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.commands.cli import main as cli_main
from thresher.config import JobError
from thresher.io.output import AtomicParquetWriter, JobLock, OutputLayout

ROOT = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every selected part file."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("part-*.parquet"))}


def test_output_loads_with_datasets_and_pandas(tmp_path: Path, corpus: Path) -> None:
    import datasets

    res = run(job_dict(corpus, tmp_path / "out"), progress=False)
    files = sorted(str(p) for p in (tmp_path / "out").glob("part-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == res.manifest["counts"]["selected"] == 300
    df = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    assert set(df.columns) >= {"id", "text", "url", "n_words", "n_chars"}
    # top-k by n_words: every selected doc is at least as long as every unselected one
    scores = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out" / "_scores").glob("*.parquet")])
    sel_ids = set(df["id"])
    unsel = [w for i, w in zip(scores.column("id").to_pylist(), scores.column("n_words").to_pylist())
             if i not in sel_ids]
    assert df["n_words"].min() >= max(unsel)


def test_process_pool_matches_single_process(tmp_path: Path, corpus: Path) -> None:
    run(job_dict(corpus, tmp_path / "a"), progress=False)
    run(job_dict(corpus, tmp_path / "b", engine={"local": {"workers": 2}}), progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_rerun_skips_finished_shards(tmp_path: Path, corpus: Path) -> None:
    first = run(job_dict(corpus, tmp_path / "out"), progress=False)
    again = run(job_dict(corpus, tmp_path / "out"), progress=False)
    assert again.manifest["resumed_shards"] == {"score": 4, "write": 4, "select": True}
    assert again.manifest["counts"] == first.manifest["counts"]


def test_sigkill_then_rerun_gives_identical_output(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", 24, 400)
    job = job_dict(tmp_path / "c", tmp_path / "killed", selector={"type": "random", "budget": 0.3})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "thresher.commands.cli", "run", str(job_file), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = tmp_path / "killed" / "_thresher" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done.glob("score-*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(done.glob("score-*.json"))) < 24, "the job finished before it was killed"
    assert not (tmp_path / "killed" / "_manifest.json").exists()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "killed" / "_manifest.json").read_text())
    assert m["resumed_shards"]["score"] >= 3
    run({**job, "output": {"path": str(tmp_path / "clean")}}, progress=False)
    assert digest(tmp_path / "killed") == digest(tmp_path / "clean")
    assert not list((tmp_path / "killed").rglob(".*.tmp-*"))  # no temporary file left behind... after rerun
    assert m["counts"] == json.loads((tmp_path / "clean" / "_manifest.json").read_text())["counts"]


def test_rerun_removes_temporaries_a_killed_job_left(tmp_path: Path, corpus: Path) -> None:
    run(job_dict(corpus, tmp_path / "out"), progress=False)
    stale = [tmp_path / "out" / "_scores" / ".part-00001.parquet.tmp-99999",
             tmp_path / "out" / ".part-00000.parquet.tmp-99998"]
    for p in stale:
        p.write_bytes(b"half a shard")
    again = run(job_dict(corpus, tmp_path / "out"), progress=False)
    assert not any(p.exists() for p in stale)
    assert again.manifest["resumed_shards"]["score"] == 4


def test_second_job_on_same_folder_is_refused(tmp_path: Path, corpus: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    with JobLock(layout):
        with pytest.raises(JobError, match="in use by another thresher job"):
            run(job_dict(corpus, tmp_path / "out"), progress=False)
    run(job_dict(corpus, tmp_path / "out"), progress=False)  # free again after release


def test_atomic_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "part-00000.parquet"
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(target) as w:
            w.write(pa.table({"a": [1, 2]}))
            raise RuntimeError("crash mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_select_reuses_scores(tmp_path: Path, corpus: Path, capsys) -> None:
    out = tmp_path / "out"
    run(job_dict(corpus, out), progress=False)
    scores_before = digest(out / "_scores")
    # score once, select many: a new budget re-runs only selection and writing
    assert cli_main(["select", str(out), "--set", "selector.budget=0.5", "-q"]) == 0
    m = json.loads((out / "_manifest.json").read_text())
    assert m["counts"]["selected"] == 600 and m["resumed_shards"]["score"] == 4
    assert digest(out / "_scores") == scores_before
    # into a new folder, with another selector
    assert cli_main(["select", str(out), "--output", str(tmp_path / "rand"), "--set",
                     "selector={type: random, budget: 0.1}", "-q"]) == 0
    m2 = json.loads((tmp_path / "rand" / "_manifest.json").read_text())
    assert m2["counts"]["selected"] == 120 and m2["job"]["selector"]["type"] == "random"
    # run with a changed selector: refused, then allowed with overwrite
    job = job_dict(corpus, out, selector={"type": "random", "budget": 0.2})
    with pytest.raises(JobError):
        run(job, progress=False)
    m3 = run(job, progress=False, overwrite=True).manifest
    assert m3["counts"]["selected"] == 240


def test_token_budget(tmp_path: Path, corpus: Path) -> None:
    m = run(job_dict(corpus, tmp_path / "out", selector={"type": "random", "budget": 0.2,
                                                          "budget_unit": "tokens"}), progress=False).manifest
    scores = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out" / "_scores").glob("*.parquet")])
    total = sum(scores.column("n_words").to_pylist())
    assert 0.19 * total <= m["counts"]["selected_words"] <= 0.2 * total


def test_filters_and_threshold_counts(tmp_path: Path, corpus: Path) -> None:
    m = run(job_dict(corpus, tmp_path / "out", filters=[{"column": "n_words", "op": ">=", "value": 100}],
                     selector={"type": "threshold", "column": "n_words", "max": 150}), progress=False).manifest
    ns = m["counts"]["not_selected"]["by_reason"]
    scores = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out" / "_scores").glob("*.parquet")])
    w = scores.column("n_words").to_pylist()
    assert ns["filter:n_words >= 100"] == sum(x < 100 for x in w)
    assert m["counts"]["selected"] == sum(100 <= x <= 150 for x in w)


def test_inspect_output_and_file(tmp_path: Path, corpus: Path, capsys) -> None:
    run(job_dict(corpus, tmp_path / "out"), progress=False)
    assert cli_main(["inspect", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "300 rows in 4 file(s)" in text and "n_words" in text and "selected 300" in text
    assert cli_main(["inspect", str(tmp_path / "out" / "_scores" / "part-00000.parquet"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 300 and "n_words" in info["columns"]


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("input: {path: nowhere.parquet}\n")
    assert cli_main(["run", str(job), "-q"]) == 2
    assert "nowhere.parquet" in capsys.readouterr().err


def test_scorer_counters_are_per_job_not_cumulative(tmp_path: Path, corpus: Path) -> None:
    job = job_dict(corpus, tmp_path / "out", scorers=[{"type": "heuristics"}])
    m = run(job, progress=False).manifest
    assert m["scorers"]["heuristics"]["rows"] == m["counts"]["input_rows"] - m["counts"]["rejected"]["total"]
    out = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert "heuristics_pass" in out.column_names and "heuristics_reason" in out.column_names
