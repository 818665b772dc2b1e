"""Spark (local mode) and Beam (DirectRunner) engines: same output as local, retries, resume, errors.

One SparkSession (master local[2,2]: 2 threads, a task may fail once) serves the whole
module; the engine reuses an active session with the same master.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import job_dict, make_docs, write_parquet_corpus
from thresher import run
from thresher.config import JobError, SparkEngineSpec

pytest.importorskip("pyspark")
pytest.importorskip("apache_beam")

ROOT = Path(__file__).resolve().parents[1]
MASTER = "local[2,2]"
SPARK_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
              "spark.sql.shuffle.partitions": "2"}
BEAM = {"name": "beam", "beam": {"runner": "DirectRunner", "options": {"direct_num_workers": 2}}}
SPARK = {"name": "spark", "spark": {"master": MASTER, "conf": SPARK_CONF}}
HEUR_JOB = {"scorers": [{"type": "heuristics"}], "filters": [{"column": "heuristics_pass", "value": True}],
            "selector": {"type": "random", "budget": 0.4}}


@pytest.fixture(scope="module")
def spark() -> Any:
    from thresher.pipelines.spark_engine import get_session, stop_session

    session, owned = get_session(SparkEngineSpec(master=MASTER, conf=SPARK_CONF), progress=False)
    yield session
    if owned:
        stop_session(session)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four Parquet files of 150 docs, some of them junk the heuristics reject."""
    folder = tmp_path_factory.mktemp("engines") / "corpus"
    write_parquet_corpus(folder, 4, 150)
    junk = pa.table({"text": ["buy now " * 40, "x", "click here!!! " * 30] * 10,
                     "url": [f"https://spam.example/{i}" for i in range(30)]})
    pq.write_table(junk, folder / "shard-004.parquet")
    return folder


@pytest.fixture(scope="module")
def local_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("local") / "out"
    return run(job_dict(corpus_dir, out, **HEUR_JOB), progress=False)


def folder_tables(out: str | Path, sub: str = "") -> dict[str, pa.Table]:
    """Every Parquet file under out/sub, by name, as tables (contents, not bytes)."""
    return {p.name: pq.read_table(p) for p in sorted(Path(out, sub).glob("part-*.parquet"))}


def assert_same_output(a: Any, b: Any) -> None:
    """Same selected ids, part file contents, scores and selection as another run."""
    assert b.manifest["counts"] == a.manifest["counts"]
    for sub in ("", "_scores", "_selection", "_rejected"):
        ta, tb = folder_tables(a.output, sub), folder_tables(b.output, sub)
        assert ta.keys() == tb.keys() and ta, sub
        for name in ta:
            assert ta[name].equals(tb[name]), f"{sub}/{name} differs"
    ids_a, ids_b = selected_ids(a.output), selected_ids(b.output)
    assert ids_a == ids_b
    assert len(set(ids_b)) == len(ids_b) == b.manifest["counts"]["selected"]


def selected_ids(out: str | Path) -> list[str]:
    return sorted(i for t in folder_tables(out).values() for i in t.column("id").to_pylist())


# -- agreement ---------------------------------------------------------------------------------


def test_spark_matches_local(spark: Any, corpus_dir: Path, local_run: Any, tmp_path: Path) -> None:
    res = run(job_dict(corpus_dir, tmp_path / "spark", engine=SPARK, **HEUR_JOB), progress=False)
    assert res.manifest["engine"] == "spark"
    by_reason = res.manifest["counts"]["not_selected"]["by_reason"]
    assert by_reason.get("filter:heuristics_pass == True", 0) > 0 and res.manifest["counts"]["selected"] > 0
    assert_same_output(local_run, res)
    assert res.manifest["scores"] == local_run.manifest["scores"]


def test_beam_matches_local(corpus_dir: Path, local_run: Any, tmp_path: Path) -> None:
    res = run(job_dict(corpus_dir, tmp_path / "beam", engine=BEAM, **HEUR_JOB), progress=False)
    assert res.manifest["engine"] == "beam"
    assert_same_output(local_run, res)
    assert res.manifest["scores"] == local_run.manifest["scores"]


def test_in_memory_table_on_all_engines(spark: Any, tmp_path: Path) -> None:
    """In-memory data: each shard's slice travels inside its task as Arrow IPC."""
    table = pa.table({"text": make_docs(500, seed=3), "id": [f"d{i}" for i in range(500)]})
    job = {"input": {"shard_rows": 120, "id_column": "id"}, "selector": {"type": "topk", "column": "n_words",
                                                                          "budget": 0.3}}
    runs = [run(job_dict(None, tmp_path / name, engine=eng, **job), data=table, progress=False)
            for name, eng in (("local", {"local": {"workers": 1}}), ("spark", SPARK), ("beam", BEAM))]
    assert len(runs[0].manifest["inputs"]) == 5
    for other in runs[1:]:
        assert_same_output(runs[0], other)


def test_parallel_map_keeps_order(spark: Any) -> None:
    from thresher.config import load_job
    from thresher.pipelines.beam_engine import BeamEngine
    from thresher.pipelines.spark_engine import SparkEngine

    job = load_job(data=job_dict("unused", "unused", engine=SPARK))
    items = [list(range(i, i + 5)) for i in range(7)]
    want = [sum(x) * 2 for x in items]
    eng = SparkEngine(job, progress=False)
    try:
        assert eng.parallel_map(lambda x: sum(x) * 2, items) == want
        assert eng.parallel_map(len, []) == []
    finally:
        eng.close()
    assert spark.sparkContext._jsc is not None, "the engine must not stop a session it did not start"
    beng = BeamEngine(load_job(data=job_dict("unused", "unused", engine=BEAM)), progress=False)
    try:
        assert beng.parallel_map(lambda x: sum(x) * 2, items) == want
    finally:
        beng.close()


def test_storage_options_travel_with_tasks(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Object-store settings registered on the driver after the workers started (a job's
    output.storage_options) reach Spark's Python workers and Beam's DoFns with the tasks."""
    from thresher.config import load_job
    from thresher.io import storage
    from thresher.pipelines.beam_engine import BeamEngine
    from thresher.pipelines.spark_engine import SparkEngine

    monkeypatch.delenv(storage.OPTIONS_ENV, raising=False)
    monkeypatch.setattr(storage, "_registry", {})
    spark.sparkContext.parallelize([0, 1], 2).count()  # the workers exist before the settings do
    storage.configure("s3://engines-bucket/out", {"region": "eu-north-1", "endpoint_url": "http://127.0.0.1:9"})
    want = [{"region": "eu-north-1", "endpoint_url": "http://127.0.0.1:9"}] * 2
    probe = lambda path: __import__("thresher.io.storage").io.storage.options_for(path)  # noqa: E731
    items = ["s3://engines-bucket/out/_scores/part-0", "s3://engines-bucket/out/part-1.parquet"]
    eng = SparkEngine(load_job(data=job_dict("unused", "unused", engine=SPARK)), progress=False)
    try:
        assert eng.parallel_map(probe, items) == want
    finally:
        eng.close()
    beng = BeamEngine(load_job(data=job_dict("unused", "unused", engine=BEAM)), progress=False)
    try:
        assert beng.parallel_map(probe, items) == want
    finally:
        beng.close()


# -- Spark faults and resume -----------------------------------------------------------------------


def test_spark_reuses_python_workers(spark: Any, corpus_dir: Path, tmp_path: Path) -> None:
    """Scorers are cached per Python worker: with worker reuse 5 shards x 2 stages run in <= 2 workers."""
    from thresher.config import load_job
    from thresher.io.readers import plan_shards
    from thresher.pipelines import stages
    from thresher.pipelines.spark_engine import SparkEngine

    job = load_job(data=job_dict(corpus_dir, tmp_path / "o", engine=SPARK, **HEUR_JOB))
    shards = plan_shards(job.input)
    eng = SparkEngine(job, progress=False)
    try:
        res = eng.map_shards("score", stages.score_shard, job, shards, str(tmp_path / "o"))
    finally:
        eng.close()
    assert [r["shard"] for r in res] == [s.index for s in shards]
    assert sum(r["rows_in"] for r in res) == 630
    pids = {r["_task"]["pid"] for r in res}
    assert 1 <= len(pids) <= 2 < len(shards)


def test_spark_task_failing_once_is_retried(spark: Any, corpus_dir: Path, local_run: Any, tmp_path: Path) -> None:
    """Attempt 0 of score shard 1 fails before writing, of write shard 2 after committing: no dup, no loss."""
    from thresher.pipelines.spark_engine import FAULT_PROPERTY

    sc = spark.sparkContext
    sc.setLocalProperty(FAULT_PROPERTY, "score:1:fail_before,write:2:fail_after")
    try:
        res = run(job_dict(corpus_dir, tmp_path / "retry", engine=SPARK, **HEUR_JOB), progress=False)
    finally:
        sc.setLocalProperty(FAULT_PROPERTY, None)
    assert_same_output(local_run, res)
    # the write retry found shard 2's marker from the failed attempt and skipped it
    assert res.manifest["resumed_shards"]["write"] == 1


def test_spark_task_failing_always_gives_clear_error(spark: Any, corpus_dir: Path, tmp_path: Path) -> None:
    from thresher.pipelines.spark_engine import FAULT_PROPERTY

    sc = spark.sparkContext
    sc.setLocalProperty(FAULT_PROPERTY, "score:3:fail_always")
    try:
        with pytest.raises(JobError, match=r"score stage failed: RuntimeError: injected fault: score shard 3"):
            run(job_dict(corpus_dir, tmp_path / "fail", engine=SPARK, **HEUR_JOB), progress=False)
    finally:
        sc.setLocalProperty(FAULT_PROPERTY, None)


def _cli(job_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "thresher.commands.cli", "run", str(job_file), "-q", *extra]


def test_killed_spark_job_resumes_at_shard_level(spark: Any, corpus_dir: Path, local_run: Any,
                                                 tmp_path: Path) -> None:
    """SIGKILL a CLI run (driver and JVM) while shard 2 hangs; the re-run skips the 4 finished shards."""
    out = tmp_path / "killed"
    job = job_dict(corpus_dir, out, engine={"name": "spark", "spark": {"master": "local[2]", "conf": SPARK_CONF}},
                   **HEUR_JOB)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "THRESHER_SPARK_FAULT": "score:2:hang"}
    proc = subprocess.Popen(_cli(job_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    done = out / "_thresher" / "done"
    try:
        deadline = time.time() + 150
        while time.time() < deadline and len(list(done.glob("score-*.json"))) < 4 and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert sorted(p.name for p in done.glob("score-*.json")) == [f"score-{i:05d}.json" for i in (0, 1, 3, 4)]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "_manifest.json").exists()
    # resume in this process (the module's session; the master is not part of the job's hash)
    job["engine"] = SPARK
    res = run(job, progress=False)
    assert res.manifest["resumed_shards"]["score"] == 4
    assert_same_output(local_run, res)


# -- bad input: clear errors within seconds ------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_unreachable_master_is_a_clear_error(corpus_dir: Path, tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_dict(corpus_dir, tmp_path / "o")))
    t = time.monotonic()
    res = subprocess.run(_cli(job_file, "--engine", "spark", "--master", f"spark://127.0.0.1:{_free_port()}"),
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=50)
    assert res.returncode == 2
    assert "is not reachable" in res.stderr and "Connection refused" in res.stderr
    assert time.monotonic() - t < 50


@pytest.mark.timeout(60)
def test_missing_java_is_a_clear_error(corpus_dir: Path, tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_dict(corpus_dir, tmp_path / "o")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAVA_HOME": str(tmp_path / "no-jdk"),
           "PATH": os.path.dirname(sys.executable) + ":/nonexistent"}
    res = subprocess.run(_cli(job_file, "--engine", "spark", "--master", "local[1]"), env=env,
                         capture_output=True, text=True, timeout=50)
    assert res.returncode == 2
    assert "holds no executable bin/java" in res.stderr and "no-jdk" in res.stderr


def test_no_java_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from thresher.pipelines import java

    monkeypatch.setattr(java, "DEBIAN_JDK17", (str(tmp_path / "none"),))
    monkeypatch.setattr(java.glob, "glob", lambda pattern: [])
    with pytest.raises(JobError, match="needs Java 17\\+ but none was found"):
        java.find_java_home({"PATH": str(tmp_path)})
    monkeypatch.undo()
    home = java.ensure_java({})  # this machine has a Java 17+: found without JAVA_HOME
    assert java.java_major(Path(home) / "bin" / "java") >= 17
    assert java.find_java_home({"JAVA_HOME": home}) == home


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner, message", [
    ("NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
    ("not_installed_pkg.runners.MyRunner", "No module named 'not_installed_pkg'"),
])
def test_unknown_beam_runner_is_a_clear_error(corpus_dir: Path, tmp_path: Path, runner: str, message: str) -> None:
    job = job_dict(corpus_dir, tmp_path / "o", engine={"name": "beam", "beam": {"runner": runner}})
    with pytest.raises(JobError, match=f"engine.beam.runner .* is not available: {message}"):
        run(job, progress=False)


def test_unknown_beam_option_is_a_clear_error(corpus_dir: Path, tmp_path: Path) -> None:
    job = job_dict(corpus_dir, tmp_path / "o", engine={"name": "beam", "beam": {"options": {"direct_num_wrkers": 2}}})
    with pytest.raises(JobError, match=r"unknown Beam pipeline option\(s\) \['direct_num_wrkers'\]"):
        run(job, progress=False)


def test_remote_beam_runner_needs_temp_location(corpus_dir: Path, tmp_path: Path) -> None:
    """Workers of a remote runner cannot write their result lines into the driver's temp folder."""
    job = job_dict(corpus_dir, tmp_path / "o", engine={"name": "beam", "beam": {"runner": "PortableRunner"}})
    with pytest.raises(JobError, match=r"engine.beam.runner 'PortableRunner': set engine.beam.options.temp_location"):
        run(job, progress=False)


def test_executor_env_forwards_named_driver_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.pipelines.spark_engine import default_conf, executor_env

    env = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://s3.local", "HOME": "/root", "AWSX": "no"}
    assert executor_env("AWS_*, HOME", env) == {"spark.executorEnv.AWS_ENDPOINT_URL": "http://s3.local",
                                               "spark.executorEnv.AWS_REGION": "eu-west-1",
                                               "spark.executorEnv.HOME": "/root"}
    assert executor_env("", env) == {}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    conf = default_conf(SparkEngineSpec(conf={"spark.thresher.executorEnv": "AWS_*",
                                              "spark.executorEnv.AWS_REGION": "us-east-1"}), progress=False)
    assert conf["spark.executorEnv.AWS_ENDPOINT_URL"] == "http://s3.local"
    assert conf["spark.executorEnv.AWS_REGION"] == "us-east-1"  # the job's own key wins
    assert "spark.executorEnv.HOME" not in conf


def test_other_session_master_is_refused(spark: Any, corpus_dir: Path, tmp_path: Path) -> None:
    job = job_dict(corpus_dir, tmp_path / "o", engine={"name": "spark", "spark": {"master": "local[1]"}})
    with pytest.raises(JobError, match=r"already running in this process"):
        run(job, progress=False)


def test_beam_stage_error_is_a_clear_error(tmp_path: Path) -> None:
    """A shard that fails inside a Beam worker surfaces as a JobError naming the cause."""
    from conftest import write_jsonl

    folder = tmp_path / "jsonl"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": t} for t in make_docs(20, seed=1)])
    write_jsonl(folder / "b.jsonl", [{"text": t} for t in make_docs(20, seed=2)], raw_lines={5: b"{not json"})
    job = job_dict(folder, tmp_path / "o", engine=BEAM, input={"path": str(folder), "on_bad_row": "fail"})
    with pytest.raises(JobError, match=r"engine beam \(DirectRunner\): the score pipeline failed: "
                                        r"JobError: .*b\.jsonl"):
        run(job, progress=False)


# -- DATAMASK over the engines -----------------------------------------------------------------


def test_datamask_blocks_agree_on_all_engines(spark: Any, tmp_path: Path) -> None:
    """Embeddings (a tiny BERT) + DATAMASK with 3 blocks: blocks are spread by each engine's
    parallel_map (local processes, Spark tasks, Beam elements) and the selection is identical."""
    from conftest_models import tiny_bert

    model = tiny_bert(tmp_path / "bert", head="base")
    write_parquet_corpus(tmp_path / "c", 3, 100, seed=5)
    job = {
        "scorers": [{"type": "heuristics"}, {"type": "embedding", "model": str(model), "max_length": 64}],
        "selector": {"type": "datamask", "embedding": "embedding_vector", "quality": "heuristics_stopword_count",
                     "budget": 0.2, "block_size": 100, "steps": 20, "group_size": 16, "threads": 1},
    }
    runs = [run(job_dict(tmp_path / "c", tmp_path / name, engine=eng, **job), progress=False)
            for name, eng in (("local", {"local": {"workers": 2}}), ("spark", SPARK), ("beam", BEAM))]
    stats = runs[0].manifest["selection"]["selector_stats"]
    assert stats["blocks"] == 3 and runs[0].manifest["counts"]["selected"] == 60
    for other in runs[1:]:
        assert selected_ids(other.output) == selected_ids(runs[0].output)
        assert other.manifest["selection"]["selector_stats"]["objective"] == pytest.approx(stats["objective"])
