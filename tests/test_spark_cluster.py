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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.spark_cluster import standalone_cluster
from conftest import job_dict, write_parquet_corpus
from thresher import run
from thresher.config import SparkEngineSpec, load_job

pyspark = pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
SPARK_HOME = os.path.dirname(pyspark.__file__)
JOB = {"scorers": [{"type": "heuristics"}], "selector": {"type": "topk", "column": "n_words", "budget": 0.3}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """spark://127.0.0.1:PORT with one worker (4 cores, 3g, 2 fake GPUs); stopped afterwards."""
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), gpus=2, fake=True, memory="3g") as url:
        yield url


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
    from thresher.pipelines.spark_engine import SparkEngine, get_session, stop_session

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
            stop_session(session)


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
