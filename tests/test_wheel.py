"""A wheel built from the repository works outside it: the package knows nothing of the
repository (no benchmark harness inside, nothing written into the source tree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import write_parquet_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(built_wheel: Path) -> Path:
    return built_wheel


def test_wheel_holds_the_package_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("thresher-")}
    assert tops == {"thresher"}, tops
    assert "thresher/common/seeds.py" in names and "thresher/commands/cli.py" in names
    assert not [n for n in names if n.startswith("thresher/bench")]


def test_thresher_run_from_the_installed_wheel_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    write_parquet_corpus(tmp_path / "corpus", 2, 40)
    (tmp_path / "job.yaml").write_text(json.dumps({
        "input": {"path": "corpus"}, "scorers": [{"type": "heuristics"}],
        "selector": {"type": "topk", "column": "heuristics_stopword_count", "budget": 0.5},
        "engine": {"local": {"workers": 1}}, "output": {"path": "out"}}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import thresher; print(thresher.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not the repository's
    res = subprocess.run([sys.executable, "-m", "thresher", "run", "job.yaml", "-q"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts"]["selected"] == 40 and manifest["counts"]["input_rows"] == 80
