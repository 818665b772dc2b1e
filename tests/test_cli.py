"""The command line a new user meets: re-selection rules, `thresher train` on an output folder,
`thresher config`, `--version`, one `--output` flag, moved folders, config-change messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import job_dict, write_parquet_corpus
from thresher.commands.cli import main
from thresher.version import __version__

TRAIN = {"steps": 2, "batch_size": 2, "block_size": 16, "checkpoint_every": 0,
         "tiny": {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 300}}


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A small job (2 files x 40 rows, topk 25%) writing to `out`, relative to tmp_path."""
    write_parquet_corpus(tmp_path / "corpus", 2, 40)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_dict(tmp_path / "corpus", "out", train=TRAIN)))
    return path


def state_job(folder: Path) -> dict:
    return json.loads((folder / "_thresher" / "state.json").read_text())["job"]


def selected(folder: Path) -> int:
    return json.loads((folder / "_manifest.json").read_text())["counts"]["selected"]


def test_reselect_keeps_the_budget_and_applies_set_after_selector(tmp_path, job, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(job), "-q"]) == 0 and selected(tmp_path / "out") == 20
    # --selector TYPE keeps the earlier budget (0.25), not the new selector's default (0.1)
    assert main(["select", "out", "--selector", "random", "-o", "rand", "-q"]) == 0
    assert state_job(tmp_path / "rand")["selector"]["budget"] == 0.25 and selected(tmp_path / "rand") == 20
    # --set applies after --selector, whatever their order on the line
    assert main(["select", "out", "--set", "selector.budget=0.5", "--selector", "random", "-o", "rand2", "-q"]) == 0
    sel = state_job(tmp_path / "rand2")["selector"]
    assert sel["type"] == "random" and sel["budget"] == 0.5 and selected(tmp_path / "rand2") == 40
    err = capsys.readouterr().err
    assert f"re-selecting into {tmp_path / 'rand2'}: scores linked from {tmp_path / 'out'}" in err
    assert ("(selector.budget: 0.25 -> 0.5; selector.column: 'n_words' -> (not set); "
            "selector.descending: True -> (not set); selector.type: 'topk' -> 'random')") in err
    # a selector without a budget takes none
    assert main(["select", "out", "--selector", "all", "-o", "all", "-q"]) == 0
    assert state_job(tmp_path / "all")["selector"] == {"type": "all"}


def test_reselect_in_place_says_what_it_replaces(tmp_path, job, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(job), "-q"]) == 0
    capsys.readouterr()
    assert main(["select", "out", "--set", "selector.budget=0.5", "-q"]) == 0
    assert (f"re-selecting in place: replaces the selection of {tmp_path / 'out'} (selector.budget: 0.25 -> 0.5)"
            in capsys.readouterr().err)
    assert main(["select", "out", "-q"]) == 0
    assert "re-selecting in place: the selection of" in capsys.readouterr().err  # ... is unchanged


def test_a_moved_output_folder_resumes_and_diffs_name_no_paths(tmp_path, job, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(job), "-q"]) == 0
    shutil.move("out", "moved")
    assert main(["run", str(job), "-o", "moved", "-q"]) == 0  # its own job: resumes, does not refuse
    manifest = json.loads((tmp_path / "moved" / "_manifest.json").read_text())
    assert manifest["resumed_shards"]["score"] == 2
    capsys.readouterr()
    assert main(["run", str(job), "-o", "moved", "-q", "--set", "selector.budget=0.5", "--set", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "holds another job's output" in err and "seed: 7 -> 1" in err and "selector.budget: 0.25 -> 0.5" in err
    assert "output.path" not in err


def test_train_from_an_output_folder_or_a_job_with_output(tmp_path, job, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(job), "-o", "first", "-q"]) == 0
    shutil.move("first", "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the folder, wherever it lies, is trained from
    assert main(["train", str(tmp_path / "moved")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["data"] == str(tmp_path / "moved") and summary["output"] == str(tmp_path / "moved" / "_train")
    assert (tmp_path / "moved" / "_train" / "model.safetensors").is_file()
    assert not (tmp_path / "elsewhere" / "moved").exists()
    # JOB.yaml + --output means what it means for `thresher run` (relative to the current folder)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(job), "--output", "moved", "--steps", "3", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output"] == str(tmp_path / "moved" / "_train")
    # clear one-line errors
    for argv, why in [(["train", str(job)], f"shard folder not found: {tmp_path / 'out'}; run `thresher run` first"),
                      (["train", "corpus"], "corpus: not a thresher output folder"),
                      (["train", "nope"], "nope: no such job file or output folder"),
                      (["train", "moved", "-o", "x"], "--output x: goes with a job file")]:
        assert main(argv) == 2
        assert why in capsys.readouterr().err


def test_config_prints_every_default_and_checks_columns(tmp_path, job, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", str(job), "--set", 'engine.spark.conf."spark.executor.memory"=4g',
                 "--set", 'engine.spark.conf."spark.executor.cores"=4']) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["input"]["batch_rows"] == 2048 and resolved["output"]["compression"] == "zstd"
    assert resolved["selector"]["budget_unit"] == "docs" and resolved["train"]["lr"] == 5e-4
    assert resolved["engine"]["spark"]["conf"] == {"spark.executor.memory": "4g", "spark.executor.cores": "4"}
    # a column typo fails before scoring: config, run --dry-run and run alike; no output folder
    for cmd in (["config"], ["run", "--dry-run"], ["score", "--dry-run"], ["run", "-q"]):
        assert main([*cmd, str(job), "--set", "selector.column=n_wrds"]) == 2
        assert "did you mean 'n_words'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["run", "--dry-run", str(job)]) == 0 and not (tmp_path / "out").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"thresher {__version__}"


@pytest.mark.parametrize("command", ["run", "score", "config", "select", "dedup", "train", "train-proxy",
                                     "train-classifier", "report"])
def test_every_command_names_its_destination_output(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--output" in text and "--out " not in text and "--out," not in text


def test_train_classifier_says_when_it_balances(tmp_path):
    pytest.importorskip("fasttext")
    (tmp_path / "pos.txt").write_text("".join(f"a clear article number {i} about science\n" for i in range(20)))
    (tmp_path / "neg.txt").write_text("".join(f"click buy now cheap {i}\n" for i in range(100)))

    def train(*extra: str) -> subprocess.CompletedProcess:  # a fresh process (fastText in long pytest runs: NaN)
        return subprocess.run([sys.executable, "-m", "thresher", "train-classifier", "--positive", "pos.txt",
                               "--negative", "neg.txt", "-o", "m.bin", "--epoch", "5", "--dim", "8", "--lr", "0.05",
                               *extra], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    res = train()
    assert res.returncode == 0, res.stderr
    assert "balanced classes: 100 negatives -> 20 (--no-balance keeps all)" in res.stderr
    res = train("--no-balance")
    assert res.returncode == 0 and "balanced" not in res.stderr, res.stderr
    assert json.loads((tmp_path / "m.bin.metrics.json").read_text())["train_negative"] == 90
