"""spark-submit from a pip install: the entry file that jobs/spark/README.md documents exists in
an installed wheel, parses its arguments, and runs a job under spark-submit (local mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_parquet_corpus

ROOT = Path(__file__).resolve().parents[1]
# the command jobs/spark/README.md and the module docstring give for the entry file
ENTRY_CMD = "import thresher.pipelines.spark_submit as m; print(m.__file__)"


@pytest.fixture(scope="module")
def site(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, installed into a --target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(built_wheel)], check=True, capture_output=True)
    return target


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}


def entry_file(site: Path, cwd: Path) -> Path:
    res = subprocess.run([sys.executable, "-c", ENTRY_CMD], env=_env(site), cwd=cwd, capture_output=True, text=True,
                         check=True)
    return Path(res.stdout.strip())


def test_documented_entry_is_in_the_wheel(site: Path, tmp_path: Path) -> None:
    entry = entry_file(site, tmp_path)
    assert entry.is_relative_to(site) and entry.name == "spark_submit.py" and entry.is_file(), entry
    doc = (ROOT / "jobs" / "spark" / "README.md").read_text()
    assert ENTRY_CMD in doc


def test_entry_file_parses_arguments_from_the_wheel(site: Path, tmp_path: Path) -> None:
    entry = entry_file(site, tmp_path)
    # run as a file, the way spark-submit runs it (its folder first on sys.path)
    res = subprocess.run([sys.executable, str(entry), "--help"], env=_env(site), cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert "usage: spark_submit.py" in res.stdout and "--set KEY=VALUE" in res.stdout
    # its siblings do not shadow top-level modules: a `yaml.py` beside it is not what thresher imports
    shadow = entry.parent / "yaml.py"
    shadow.write_text("raise ImportError('the entry folder shadows top-level modules')\n")
    try:
        res = subprocess.run([sys.executable, str(entry), str(tmp_path / "missing.yaml")], env=_env(site),
                             cwd=tmp_path, capture_output=True, text=True)
    finally:
        shadow.unlink()
    assert "shadows" not in res.stderr, res.stderr
    # a job file that does not exist is a clear error, exit 2 (not a traceback)
    res = subprocess.run([sys.executable, str(entry), str(tmp_path / "missing.yaml")], env=_env(site), cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "thresher: error:" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_spark_submit_runs_the_wheel_entry(site: Path, tmp_path: Path) -> None:
    pyspark = pytest.importorskip("pyspark")
    from thresher.pipelines.java import ensure_java

    spark_home = os.path.dirname(pyspark.__file__)
    env = {**_env(site), "SPARK_HOME": spark_home, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    ensure_java(env)  # Java 17 is part of the test machine, as for every Spark test
    write_parquet_corpus(tmp_path / "corpus", 2, 30)
    (tmp_path / "job.yaml").write_text(json.dumps({
        "input": {"path": "corpus"}, "scorers": [{"type": "heuristics"}],
        "selector": {"type": "topk", "column": "heuristics_stopword_count", "budget": 0.5},
        "output": {"path": "out"}}))
    entry = entry_file(site, tmp_path)
    cmd = [os.path.join(spark_home, "bin", "spark-submit"), "--master", "local[1]", "--driver-memory", "1g",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.ui.showConsoleProgress=false", str(entry), "job.yaml", "-q"]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "output:" in res.stdout
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["engine"] == "spark" and manifest["job"]["engine"]["spark"]["master"] == "local[1]"
    assert manifest["counts"]["input_rows"] == 60 and manifest["counts"]["selected"] == 30
