"""benchmarks/gpu_check.py (`make gpu-check`): one line and exit 0 without CUDA; its parts run
(on the CPU, tiny sizes) so the GPU check does not rot between GPU machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU") and "exiting" in lines[0], res.stdout
    assert not out.exists()


def test_the_makefile_runs_it() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "gpu-check:" in make and "benchmarks/gpu_check.py" in make
    assert "gpu-check" in next(line for line in make.splitlines() if line.startswith(".PHONY"))


def test_rehearsal_runs_every_part_but_spark_on_the_cpu(tmp_path: Path) -> None:
    """`--rehearse`: the same code paths on the CPU with tiny inputs (Spark is covered by
    tests/test_spark_cluster.py and skipped here for time)."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "--skip", "spark", "--out", str(out)], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["rehearsal"] is True and set(got["parts"]) == {"perplexity", "embedding", "faiss", "datamask"}
    assert all("error" not in v for v in got["parts"].values()), got["parts"]
    assert got["parts"]["perplexity"]["scorer_tok_s"] > 0 and got["parts"]["embedding"]["min_cosine_to_fp32"] > 0.99
    assert got["parts"]["datamask"]["rows"][0]["cpu_objective"] > 0
    assert got["parts"]["faiss"]["cpu_s"] > 0
