"""`benchmarks/bench_reweight.py --quick`: paired results per seed, intervals, and where the weight goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_reweight import main, parse_method


def test_quick_run_writes_paired_per_seed_results(tmp_path: Path) -> None:
    out = tmp_path / "rw"
    assert main(["--quick", "--corpora", "template", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    rows = res["results"]
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("uniform", "linupper@0.4") for s in (0, 1)}
    lin = res["summary"]["template"]["methods"]["linupper@0.4"]
    p = lin["diverse"]["vs_uniform"]
    by = {(r["method"], r["seed"]): r["heldout_diverse"] for r in rows}
    assert p["n"] == 2 and p["diffs"] == pytest.approx([by["linupper@0.4", s] - by["uniform", s] for s in (0, 1)])
    assert p["lo"] <= p["mean"] <= p["hi"] and p["verdict"] in ("helps", "hurts", "not resolved")
    # uniform's effective weight share is the token share; LinUpper moves weight off the easy templates
    uni = res["summary"]["template"]["methods"]["uniform"]
    assert uni["weight_mass"] == pytest.approx(uni["token_share"])
    assert sum(lin["weight_mass"].values()) == pytest.approx(1.0)
    assert lin["weight_mass"]["template"] < lin["token_share"]["template"]
    assert "linupper@0.4" in out.with_suffix(".md").read_text()


def test_method_names() -> None:
    assert parse_method("uniform") == ("uniform", None)
    assert parse_method("quadratic@1.0") == ("quadratic", 1.0)
    with pytest.raises(SystemExit):
        parse_method("linupper")
