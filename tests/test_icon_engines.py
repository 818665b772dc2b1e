"""ICon on Spark (local mode) and Beam (DirectRunner) gives the same scores and selection as locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from test_engines import BEAM, SPARK, assert_same_output, spark  # noqa: F401 (the module's SparkSession fixture)
from test_icon import icon_job, write_assessment, write_instructions
from conftest_models import tiny_bert, tiny_gpt2
from thresher import run

pytest.importorskip("pyspark")


def test_icon_engines_match_local(spark: Any, tmp_path: Path) -> None:
    models = {"gpt2": tiny_gpt2(tmp_path / "gpt2"), "bert": tiny_bert(tmp_path / "bert", head="base")}
    data = write_instructions(tmp_path / "data.jsonl", n=30)
    assess = write_assessment(tmp_path / "assess.jsonl")
    local = run(icon_job(models, data, assess, tmp_path / "local"), progress=False)
    assert local.manifest["counts"]["selected"] > 0
    for name, engine in (("spark", SPARK), ("beam", BEAM)):
        other = run(icon_job(models, data, assess, tmp_path / name, engine=engine), progress=False)
        assert other.manifest["engine"] == name
        assert_same_output(local, other)
