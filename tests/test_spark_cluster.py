"""A real standalone Spark cluster on 127.0.0.1: a master and one worker started from the
installed pyspark, a job run against spark://127.0.0.1:PORT in process and through
spark-submit, then both daemons stopped.

The worker announces two fake GPUs through jobs/spark/get_gpus_resources.sh
(THRESHER_FAKE_GPUS=0,1), so Spark's GPU scheduling path runs for real: every task gets
one GPU address from `TaskContext.resources()` (no CUDA code runs on it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.config import SparkEngineSpec, load_job

pyspark = pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = os.path.dirname(pyspark.__file__)
DISCOVERY = ROOT / "jobs" / "spark" / "get_gpus_resources.sh"
JOB = {"scorers": [{"type": "heuristics"}], "selector": {"type": "topk", "column": "n_words", "budget": 0.3}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred: Any, seconds: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    tail = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs if p.exists())
    raise RuntimeError(f"standalone cluster: {what} within {seconds:.0f} s\n{tail}")


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """spark://127.0.0.1:PORT with one worker (4 cores, 3g, 2 fake GPUs); stopped afterwards."""
    from thresher.pipelines.java import ensure_java

    tmp = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SPARK_HOME": SPARK_HOME, "SPARK_LOCAL_IP": "127.0.0.1", "THRESHER_FAKE_GPUS": "0,1",
           "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount=2 "
                                f"-Dspark.worker.resource.gpu.discoveryScript={DISCOVERY}"}
    ensure_java(env)
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    port = _free_port()
    master_log, worker_log = tmp / "master.log", tmp / "worker.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", "0"], env=env, stdout=master_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
        _wait(lambda: _port_open(port), 90, "the master did not listen", [master_log])
        url = f"spark://127.0.0.1:{port}"
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", "0",
             "--webui-port", "0", "--cores", "4", "--memory", "3g", "--work-dir", str(tmp / "work"), url],
            env=env, stdout=worker_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait(lambda: "Registering worker" in master_log.read_text(errors="replace"), 90,
              "no worker registered", [master_log, worker_log])
        yield url
    finally:
        for p in reversed(procs):
            _stop(p)
    assert all(p.poll() is not None for p in procs)


def _conf(gpus: bool) -> dict[str, str]:
    conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
            "spark.cores.max": "2", "spark.executor.cores": "2", "spark.executor.memory": "1g",
            "spark.task.maxFailures": "2"}
    if gpus:
        conf.update({"spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "1"})
    return conf


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ccorpus") / "corpus"
    write_parquet_corpus(folder, 4, 120)
    return folder


def _tables(out: str | Path, sub: str = "") -> dict[str, Any]:
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p) for p in sorted(Path(out, sub).glob("part-*.parquet"))}


def _same(a: str | Path, b: str | Path) -> None:
    for sub in ("", "_scores", "_selection"):
        ta, tb = _tables(a, sub), _tables(b, sub)
        assert ta.keys() == tb.keys() and ta
        assert all(ta[k].equals(tb[k]) for k in ta), sub


def test_job_on_standalone_cluster_with_gpu_scheduling(cluster: str, corpus: Path, tmp_path: Path) -> None:
    from thresher.io.readers import plan_shards
    from thresher.pipelines import stages
    from thresher.pipelines.spark_engine import SparkEngine, get_session

    local = run(job_dict(corpus, tmp_path / "local", **JOB), progress=False)
    engine = {"name": "spark", "spark": {"master": cluster, "conf": _conf(gpus=True)}}
    spec = SparkEngineSpec(master=cluster, conf=_conf(gpus=True))
    session, owned = get_session(spec, progress=False)
    try:
        res = run(job_dict(corpus, tmp_path / "cluster", engine=engine, **JOB), progress=False)
        assert res.manifest["engine"] == "spark" and res.manifest["counts"] == local.manifest["counts"]
        _same(local.output, res.output)
        # the tasks ran on the cluster's executor, each holding one of the worker's two GPUs
        job = load_job(data=job_dict(corpus, tmp_path / "probe", engine=engine, **JOB))
        eng = SparkEngine(job, progress=False)
        try:
            assert eng.shipped, "on a cluster the thresher package is shipped to executors"
            results = eng.map_shards("score", stages.score_shard, job, plan_shards(job.input), str(tmp_path / "probe"))
        finally:
            eng.close()
        tasks = [r["_task"] for r in results]
        assert all(len(t["gpus"]) == 1 and t["gpus"][0] in ("0", "1") for t in tasks), tasks
        assert all(t["device"] in ("cuda:0", "cuda:1") for t in tasks), tasks
        assert all(t["pid"] != os.getpid() for t in tasks)
    finally:
        if owned:
            session.stop()


def test_spark_submit_against_cluster(cluster: str, corpus: Path, tmp_path: Path) -> None:
    local = run(job_dict(corpus, tmp_path / "local", **JOB), progress=False)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_dict(corpus, tmp_path / "submitted", **JOB)))
    cmd = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", cluster, "--driver-memory", "1g"]
    for k, v in _conf(gpus=False).items():
        cmd += ["--conf", f"{k}={v}"]
    cmd += [str(ROOT / "thresher" / "pipelines" / "spark_submit.py"), str(job_file), "-q"]
    env = {**os.environ, "SPARK_HOME": SPARK_HOME, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    from thresher.pipelines.java import ensure_java

    ensure_java(env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "output:" in proc.stdout
    manifest = json.loads((tmp_path / "submitted" / "_manifest.json").read_text())
    assert manifest["engine"] == "spark" and manifest["job"]["engine"]["spark"]["master"] == cluster
    assert manifest["counts"] == local.manifest["counts"]
    _same(local.output, tmp_path / "submitted")
