"""thresher on a Spark standalone cluster with every path on S3 (a local S3 server).

Module-scoped: a fresh bucket on the session's S3 server (this process's AWS_* variables point
at it), a Parquet corpus uploaded to `s3://BUCKET/in/`, and a standalone master with TWO workers,
each with its own working, temp and local directories; the daemons' environment holds no AWS_*
variable, so the executors reach S3 only through what the application sends them
(`spark.thresher.executorEnv: AWS_*`, copied into `spark.executorEnv.*`).

- the recipe, jobs/spark/s3_datamask.yaml through spark-submit (DATAMASK in blocks), with every
  path on s3:// selects the same ids as the same job run by the local engine on local folders;
- Beam's DirectRunner with every path on s3:// gives the same ids;
- a SIGKILLed local run resumes on S3 to the same output;
- a Python worker killed at a commit point on the cluster (THRESHER_FAULT through
  spark.executorEnv; Spark retries the task) leaves no duplicate and no missing row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from benchmarks.spark_cluster import standalone_cluster
from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.config import SparkEngineSpec

pyspark = pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
JOB_FILE = ROOT / "jobs" / "spark" / "s3_datamask.yaml"
TOPK = {"scorers": [{"type": "heuristics"}], "selector": {"type": "topk", "column": "n_words", "budget": 0.3}}
CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.memory": "1g", "spark.executor.cores": "1", "spark.executor.memory": "768m",
        "spark.task.maxFailures": "4", "spark.thresher.executorEnv": "AWS_*"}


# -- the S3 server, the corpus, the cluster -----------------------------------------------------


@pytest.fixture(scope="module")
def s3(s3_server: Any) -> Iterator[str]:
    """s3://BUCKET, a fresh bucket on the session's local S3 server (tests/s3_server.py; skips without
    moto); for the module, this process's AWS_* variables point at it (every other AWS_* removed)."""
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(k)
        for k, v in s3_server.env().items():
            mp.setenv(k, v)
        yield s3_server.make_bucket("cluster")


def _s3fs(uri: str) -> tuple[pafs.FileSystem, str]:
    from thresher.io import storage

    return storage.filesystem(uri)


@pytest.fixture(scope="module")
def corpus(s3: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Four Parquet files of 120 documents: a local folder and the same files under s3://BUCKET/in/."""
    folder = tmp_path_factory.mktemp("corpus") / "in"
    write_parquet_corpus(folder, 4, 120)
    uri = f"{s3}/in"
    fs, inner = _s3fs(uri)
    for p in sorted(folder.iterdir()):
        with fs.open_output_stream(f"{inner}/{p.name}") as out:
            out.write(p.read_bytes())
    return folder, uri


@pytest.fixture(scope="module")
def cluster(s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """spark://127.0.0.1:PORT, a master and two workers whose daemons know no AWS_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), cores=1, memory="1g", workers=2, env=env) as url:
        yield url


def start_session(url: str, **extra: str) -> Any:
    """A SparkSession on the cluster, started by thresher's get_session (which forwards this
    process's AWS_* variables to the executors: `spark.thresher.executorEnv`); jobs reuse it."""
    from thresher.pipelines.spark_engine import get_session

    return get_session(SparkEngineSpec(master=url, conf={**CONF, **extra}), progress=False)[0]


# -- reading outputs on S3 or local disk ---------------------------------------------------------


def read_parts(out: str | Path) -> dict[str, pa.Table]:
    """The `part-*.parquet` files of an output folder (local or s3://), by name."""
    from thresher.io import storage

    out = str(out)
    names = [n for n in storage.list_names(out) if n.startswith("part-") and n.endswith(".parquet")]
    return {n: storage.read_table(storage.join(out, n)) for n in names}


def read_manifest(out: str | Path) -> dict[str, Any]:
    from thresher.io import storage

    return json.loads(storage.read_bytes(storage.join(str(out), "_manifest.json")))


def selected_ids(out: str | Path) -> list[str]:
    return sorted(i for t in read_parts(out).values() for i in t.column("id").to_pylist())


def check_complete(out: str | Path) -> list[str]:
    """The selected ids of a run, after checking that its parts add up to the manifest: every part
    listed once, row counts summing to the selected count, no id twice."""
    manifest = read_manifest(out)
    parts = read_parts(out)
    listed = [p["file"] for p in manifest["shards"]]
    assert len(listed) == len(set(listed)) and sorted(listed) == sorted(parts), (listed, sorted(parts))
    assert sum(t.num_rows for t in parts.values()) == manifest["counts"]["selected"]
    assert all(p["rows"] == parts[p["file"]].num_rows for p in manifest["shards"])
    ids = selected_ids(out)
    assert len(ids) == len(set(ids)) == manifest["counts"]["selected"] > 0
    return ids


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thresher", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def topk_local(corpus: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The top-k job by the local engine on local folders: the ids every S3 run must select."""
    out = tmp_path_factory.mktemp("topk") / "local"
    run(job_dict(corpus[0], out, engine={"local": {"workers": 1}}, **TOPK), progress=False)
    return check_complete(out)


# -- (i) the recipe job on the cluster, every path on S3 -------------------------------------------


def _datamask_overrides(model: Path) -> list[str]:
    """The recipe's job made test-sized: a tiny local BERT instead of MiniLM, small blocks, few steps."""
    return ["--set", f"scorers.1.model={model}", "--set", "scorers.1.max_length=64",
            "--set", "selector.block_size=90", "--set", "selector.steps=20", "--set", "selector.group_size=16",
            "--set", "selector.threads=1"]


@pytest.fixture(scope="module")
def datamask_local(corpus: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The recipe job made test-sized (its --set overrides) and its output by the local engine on
    local folders: what every engine must select on s3://."""
    from conftest_models import tiny_bert

    from thresher.commands.cli import main as thresher_main

    tmp = tmp_path_factory.mktemp("datamask")
    sets = _datamask_overrides(tiny_bert(tmp / "bert", head="base"))
    local_out = tmp / "local"
    assert thresher_main(["run", str(JOB_FILE), *sets, "--set", f"input.path={corpus[0]}", "--engine", "local",
                          "--workers", "1", "--output", str(local_out), "-q"]) == 0
    assert read_manifest(str(local_out))["selection"]["selector_stats"]["blocks"] >= 3
    return sets, local_out


def test_recipe_job_via_spark_submit_with_s3_paths(cluster: str, s3: str, corpus: tuple[Path, str],
                                                    datamask_local: tuple[list[str], Path], tmp_path: Path) -> None:
    """jobs/spark/s3_datamask.yaml through spark-submit, as the README's recipe: Parquet from s3://
    scored on two workers (the executors get AWS_* from the job's spark.thresher.executorEnv),
    DATAMASK in several blocks, shards back on s3://: the same ids as the local engine on local
    folders, and no credential or endpoint in the manifest."""
    from thresher.pipelines.java import ensure_java

    sets, local_out = datamask_local
    out = f"{s3}/datamask/run1"
    spark_home = os.path.dirname(pyspark.__file__)
    cmd = [os.path.join(spark_home, "bin", "spark-submit"), "--master", cluster, "--driver-memory", "1g"]
    for k, v in CONF.items():
        if k not in ("spark.driver.memory", "spark.thresher.executorEnv"):  # the job file asks for AWS_*
            cmd += ["--conf", f"{k}={v}"]
    cmd += [str(ROOT / "thresher" / "pipelines" / "spark_submit.py"), str(JOB_FILE), *sets,
            "--set", f"input.path={corpus[1]}/", "--output", out, "-q"]
    env = {**os.environ, "SPARK_HOME": spark_home, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    ensure_java(env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(out)
    assert manifest["engine"] == "spark" and manifest["job"]["engine"]["spark"]["master"] == cluster
    assert manifest["selection"]["selector_stats"]["blocks"] >= 3
    assert check_complete(out) == check_complete(local_out)
    assert manifest["counts"] == read_manifest(local_out)["counts"]
    text = json.dumps(manifest)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text and os.environ["AWS_ENDPOINT_URL"] not in text


# -- (ii) Beam DirectRunner on S3 ------------------------------------------------------------------


def test_beam_direct_runner_with_s3_paths(s3: str, corpus: tuple[Path, str],
                                          datamask_local: tuple[list[str], Path]) -> None:
    """The recipe's multi-block DATAMASK job on Beam's DirectRunner with every path on s3://
    selects the ids the local engine selects on local folders."""
    pytest.importorskip("apache_beam")
    from thresher.commands.cli import main as thresher_main

    sets, local_out = datamask_local
    out = f"{s3}/beam/run1"
    assert thresher_main(["run", str(JOB_FILE), *sets, "--set", f"input.path={corpus[1]}/", "--engine", "beam",
                          "--set", "engine.beam.runner=DirectRunner", "--output", out, "-q"]) == 0
    manifest = read_manifest(out)
    assert manifest["engine"] == "beam" and manifest["selection"]["selector_stats"]["blocks"] >= 3
    assert check_complete(out) == check_complete(str(local_out))
    assert manifest["counts"] == read_manifest(str(local_out))["counts"]


# -- (iv) a SIGKILLed local run resumes on S3 --------------------------------------------------------


def test_sigkilled_local_run_resumes_on_s3(s3: str, corpus: tuple[Path, str], topk_local: list[str],
                                           tmp_path: Path) -> None:
    out = f"{s3}/resumed/run1"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_dict(f"{corpus[1]}/", out, engine={"local": {"workers": 2}}, **TOPK)))
    fs, inner = _s3fs(out)
    proc = subprocess.Popen([sys.executable, "-m", "thresher", "run", str(job_file), "-q"],
                            env={**os.environ, "PYTHONPATH": str(ROOT), "THRESHER_FAULT": "delay:0.4"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        markers: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None and not markers:
            infos = fs.get_file_info(pafs.FileSelector(f"{inner}/_thresher", recursive=True, allow_not_found=True))
            markers = [i.base_name for i in infos if i.base_name.startswith("score-")]
            time.sleep(0.1)
        assert proc.poll() is None and markers, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert fs.get_file_info(f"{inner}/_manifest.json").type == pafs.FileType.NotFound
    res = cli("run", str(job_file), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = read_manifest(out)
    assert manifest["resumed_shards"]["score"] >= 1
    assert check_complete(out) == topk_local
    # the select stage's shuffles spilled under the output prefix (local engine) and cleared it
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True))]
    assert not [k for k in keys if "/spill/" in k or ".tmp-" in k], keys


# -- (iii) a Python worker killed at a commit point, retried by Spark --------------------------------


def _failed_tasks(sc: Any) -> int:
    tracker = sc.statusTracker()
    total = 0
    for job_id in tracker.getJobIdsForGroup(None):
        info = tracker.getJobInfo(job_id)
        for stage_id in (info.stageIds if info else []):
            stage = tracker.getStageInfo(stage_id)
            total += stage.numFailedTasks if stage else 0
    return total


from thresher.pipelines.spark_engine import stop_session  # noqa: E402


def test_killed_python_worker_on_cluster_is_retried(cluster: str, s3: str, corpus: tuple[Path, str],
                                                    topk_local: list[str]) -> None:
    """Every executor's Python worker dies (os._exit) at its 5th commit: mid-shard, between a
    shard's files and its marker. Spark retries the task on a fresh worker; the output has every
    selected row once."""
    spark = start_session(cluster, **{"spark.executorEnv.THRESHER_FAULT": "commit:5"})
    try:
        out = f"{s3}/killed/run1"
        engine = {"name": "spark", "spark": {"master": cluster, "conf": CONF}}
        res = run(job_dict(f"{corpus[1]}/", out, engine=engine, **TOPK), progress=False)
        assert _failed_tasks(spark.sparkContext) >= 1, "no Python worker was killed"
    finally:
        stop_session(spark)  # its THRESHER_FAULT must not reach later sessions of this process
    assert res.manifest["engine"] == "spark"
    assert check_complete(out) == topk_local
