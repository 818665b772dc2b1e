"""`thresher train` checkpoints and resume: a run stopped half-way and resumed ends where an
uninterrupted run ends (weights and loss log), checkpoints are atomic, other runs are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from thresher.config import JobError  # noqa: E402
from benchmarks.synthetic import instruction_rows, redundant_corpus, write_shards  # noqa: E402
from thresher.training.trainer import STATE_FILE, train  # noqa: E402
from thresher.training.trainer import _objective_state as real_objective_state  # noqa: E402

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 300}
# pretraining: 51 packed blocks per epoch = 13 batches, so 16 steps cross an epoch; crash mid-epoch 0
# instruction: 24 rows = 6 batches per epoch; the crash checkpoint (step 6) is the epoch's end
CASES = {
    "pretrain-reweight": dict(
        rows=lambda: redundant_corpus(12, seed=2), crash_at=10,
        spec={"steps": 16, "batch_size": 4, "block_size": 32, "tiny": TINY, "checkpoint_every": 5,
              "reweight": {"strategy": "linupper", "temperature": 0.5, "warmup_steps": 2}}),
    "instruction-sstoken-ema": dict(
        rows=lambda: instruction_rows(24, noise=0.3, seed=1), crash_at=6,
        spec={"steps": 10, "batch_size": 4, "lr": 3e-3, "prompt_template": "{prompt} =", "tiny": TINY,
              "checkpoint_every": 3, "sstoken": {"rho": 0.6, "gamma": 0.8, "history": "ema", "ema_alpha": 0.5,
                                                 "warmup_samples": 0}}),  # REL (EMA history) from step 0
}


class Crash(Exception):
    """Stands in for a kill: nothing in `train` catches it or cleans up after it."""


def crash_after(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise Crash(s)
    return hook


@pytest.fixture(scope="module", autouse=True)
def cpu_only():
    """`train` picks CUDA when it is there; exact equality is a CPU promise (GPU kernels may not be)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cpu_only) -> dict[str, tuple[Path, Path]]:
    """(data folder, uninterrupted run's output) per case."""
    root = tmp_path_factory.mktemp("straight")
    out = {}
    for name, case in CASES.items():
        data = root / name / "data"
        write_shards(case["rows"](), data, n_shards=2)
        train(case["spec"], str(data), str(root / name / "out"), seed=0)
        out[name] = (data, root / name / "out")
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def loss_log(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "loss_log.json").read_text())["log"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)
    la, lb = loss_log(a), loss_log(b)
    assert [e["step"] for e in lb] == [e["step"] for e in la] == list(range(len(la)))
    for ea, eb in zip(la, lb):
        assert ea.keys() == eb.keys()
        for k in ea:
            assert eb[k] == pytest.approx(ea[k], abs=1e-6, rel=0), (ea["step"], k)


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_uninterrupted_run(tmp_path, straight, case):
    spec, k = CASES[case]["spec"], CASES[case]["crash_at"]
    data, ref = straight[case]
    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(spec, str(data), str(out), seed=0, on_checkpoint=crash_after(k))
    assert sorted(p.name for p in out.iterdir()) == [f"checkpoint-{k:08d}"]  # no final model yet
    state = torch.load(out / f"checkpoint-{k:08d}" / STATE_FILE, weights_only=True)
    assert state["step"] == k and len(state["log"]) == k
    assert {"optimizer", "scheduler", "rng", "objective", "dataset", "epoch", "fingerprint"} <= set(state)
    if "sstoken" in spec:
        assert "ema_history" in state["objective"]

    # checkpoint_every and log_every do not change what is trained: the run still resumes
    summary = train({**spec, "checkpoint_every": 4, "log_every": 1}, str(data), str(out), seed=0)
    assert summary["resumed_from"] == k and summary["steps"] == spec["steps"]
    assert_same_run(ref, out)
    assert leftovers(out) == []
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{spec['steps']:08d}"]

    # a finished run re-run: nothing to train, same model
    again = train(spec, str(data), str(out), seed=0)
    assert again["steps"] == spec["steps"]
    assert_same_run(ref, out)


def _drop_ema(objective: Any) -> dict[str, Any]:
    state = real_objective_state(objective)
    state.pop("ema_history", None)
    return state


def _skip_nothing(self: Any, state: dict[str, int]) -> None:
    self.epoch, self._skip = int(state["epoch"]), 0


SABOTAGE = {  # each leaves out one piece of the resume state (when saving or resuming); the comparison must notice
    "rng": ("resume", "torch.set_rng_state", lambda state: None),
    "optimizer": ("resume", "torch.optim.AdamW.load_state_dict", lambda self, state: None),
    "ema-history": ("save", "thresher.training.trainer._objective_state", _drop_ema),
    "data-position": ("resume", "thresher.training.data.ShardDataset.load_state_dict", _skip_nothing),
}


@pytest.mark.parametrize("piece", list(SABOTAGE))
def test_resume_without_a_piece_of_state_differs(tmp_path, straight, monkeypatch, piece):
    """The equality test is not vacuous: leaving out any piece of the state changes the result."""
    spec, k = CASES["instruction-sstoken-ema"]["spec"], 3
    data, ref = straight["instruction-sstoken-ema"]
    out = tmp_path / "out"
    when, target, value = SABOTAGE[piece]
    with monkeypatch.context() as m:
        if when == "save":
            m.setattr(target, value)
        with pytest.raises(Crash):
            train(spec, str(data), str(out), seed=0, on_checkpoint=crash_after(k))
    if when == "resume":
        monkeypatch.setattr(target, value)
    summary = train(spec, str(data), str(out), seed=0)
    assert summary["resumed_from"] == k
    with pytest.raises(AssertionError):
        assert_same_run(ref, out)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, straight, monkeypatch):
    spec = CASES["instruction-sstoken-ema"]["spec"]  # checkpoints at 3, 6, 9 and the end
    data, ref = straight["instruction-sstoken-ema"]
    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the step-6 checkpoint, after its model files are written
            raise Crash("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(Crash):
        train(spec, str(data), str(out), seed=0)
    monkeypatch.setattr(torch, "save", real_save)
    half = [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert len(half) == 1 and (half[0] / "model.safetensors").is_file() and not (half[0] / STATE_FILE).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000003"]

    summary = train(spec, str(data), str(out), seed=0)
    assert summary["resumed_from"] == 3
    assert_same_run(ref, out)
    assert leftovers(out) == []


def test_checkpoint_of_another_run_is_refused(tmp_path, straight):
    spec = CASES["instruction-sstoken-ema"]["spec"]
    data, _ = straight["instruction-sstoken-ema"]
    out = tmp_path / "out"
    with pytest.raises(Crash):
        train(spec, str(data), str(out), seed=0, on_checkpoint=crash_after(3))
    other_data = tmp_path / "other"
    write_shards(instruction_rows(24, noise=0.3, seed=2), other_data, n_shards=2)
    for kwargs, why in [({"spec": {**spec, "lr": 1e-3}}, r"train\.lr: 0\.003 -> 0\.001"),
                        ({"spec": {**spec, "steps": 12}}, r"train\.steps: 10 -> 12"),
                        ({"seed": 1}, r"seed: 0 -> 1"),
                        ({"data": str(other_data)}, r"data shards differ")]:
        args = {"spec": spec, "data": str(data), "seed": 0, **kwargs}
        with pytest.raises(JobError, match=rf"{out}: holds a checkpoint \(checkpoint-00000003\) of a different "
                                           rf"training run \(.*{why}.*--overwrite"):
            train(args["spec"], args["data"], str(out), seed=args["seed"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-00000003"]  # untouched

    summary = train({**spec, "lr": 1e-3, "resume": False}, str(data), str(out), seed=0)
    assert summary["resumed_from"] is None and summary["steps"] == 10
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-00000010"]
    assert leftovers(out) == []


def test_cli_resumes_refuses_and_overwrites(tmp_path, capsys):
    from thresher.commands.cli import main as cli_main

    data = tmp_path / "out"
    write_shards(redundant_corpus(12, seed=2), data, n_shards=2)
    job = {"name": "t", "seed": 3, "output": {"path": str(data)},
           "train": {"steps": 4, "batch_size": 4, "block_size": 32, "tiny": TINY}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    ckpt = data / "_train"

    assert cli_main(["train", str(path), "--checkpoint-every", "2"]) == 0
    first = loss_log(ckpt)
    assert [p.name for p in ckpt.glob("checkpoint-*")] == ["checkpoint-00000004"]
    capsys.readouterr()
    assert cli_main(["train", str(path)]) == 0  # same run, finished: resumes at step 4, trains nothing
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from"] == 4
    assert loss_log(ckpt) == first

    assert cli_main(["train", str(path), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: holds a checkpoint" in err and "train.steps: 4 -> 5" in err and "--overwrite" in err

    assert cli_main(["train", str(path), "--steps", "5", "--overwrite"]) == 0
    assert len(loss_log(ckpt)) == 5
    assert [p.name for p in ckpt.glob("checkpoint-*")] == ["checkpoint-00000005"]
