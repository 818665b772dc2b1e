"""Integration: HF Trainer subclass, the reference `thresher train`, spec validation, no pickle."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from thresher.training.data import ShardDataset, collate  # noqa: E402
from thresher.training.loss import Objective  # noqa: E402
from thresher.training.reweight import ReweightConfig  # noqa: E402
from thresher.training.spec import validate_train_spec  # noqa: E402
from thresher.training.sstoken import SSTokenConfig  # noqa: E402
from benchmarks.synthetic import instruction_rows, redundant_corpus, write_shards  # noqa: E402
from thresher.models.tiny import train_bpe_tokenizer  # noqa: E402
from thresher.training.trainer import gpt2_for_tokenizer as tiny_gpt2  # noqa: E402

TEMPLATE = "{prompt} ="


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("online", [False, True])
def test_hf_trainer_subclass_runs_with_weights(tmp_path, online):
    pytest.importorskip("accelerate")
    from transformers import TrainingArguments

    from thresher.training.hf import ThresherTrainer

    rows = instruction_rows(24, seed=0)
    for i, r in enumerate(rows):
        r["weight"] = 0.5 + (i % 3)
    write_shards(rows, tmp_path / "data", n_shards=2)
    tok = train_bpe_tokenizer([r["prompt"] + " " + r["response"] for r in rows], 300)
    model = tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    ds = ShardDataset(tmp_path / "data", tok, prompt_template=TEMPLATE, seed=0)
    objective = Objective(reweight=ReweightConfig(strategy="linupper") if online else None,
                          sstoken=SSTokenConfig(rho=0.6) if online else None)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1,
                             use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = ThresherTrainer(model=model, args=args, train_dataset=ds,
                              data_collator=lambda s: collate(s, tok.eos_token_id), objective=objective)
    result = trainer.train()
    assert result.global_step == 3
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if online:
        assert "kept_fraction" in objective.last and "weight_max_over_min" in objective.last


def test_train_command_writes_safetensors_checkpoint_and_loss_log(tmp_path):
    from transformers import AutoModelForCausalLM

    data = tmp_path / "out"
    write_shards(redundant_corpus(80, seed=2), data, n_shards=2)
    job = {"name": "t", "seed": 3, "output": {"path": str(data)},
           "train": {"steps": 4, "batch_size": 4, "block_size": 32, "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2,
                                                                           "vocab_size": 300},
                     "reweight": {"strategy": "linupper", "temperature": 0.5, "warmup_steps": 2}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    from thresher.commands.cli import main as cli_main

    assert cli_main(["train", str(path), "--steps", "5", "--lr", "1e-3"]) == 0
    out = data / "_train"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    log = json.loads((out / "loss_log.json").read_text())
    assert log["summary"]["steps"] == 5 and len(log["log"]) == 5
    assert log["summary"]["seed"] == 3 and log["summary"]["spec"]["reweight"]["strategy"] == "linupper"
    assert all(e["weight_max_over_min"] == pytest.approx(1.0) for e in log["log"][:2])  # warm-up: uniform
    assert log["log"][-1]["weight_max_over_min"] > 1.0
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.n_layer == 1
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 5 and state["dataset"]["seed"] == 3


def test_train_command_sstoken_on_instruction_data(tmp_path):
    from thresher.training.trainer import train

    write_shards(instruction_rows(40, noise=0.3, seed=1), tmp_path / "d", n_shards=1)
    summary = train({"steps": 3, "batch_size": 4, "prompt_template": TEMPLATE,
                     "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 300},
                     "sstoken": {"rho": 0.6, "gamma": 0.5, "warmup_steps": 1}},
                    str(tmp_path / "d"), str(tmp_path / "ckpt"), seed=0)
    log = json.loads((tmp_path / "ckpt" / "loss_log.json").read_text())["log"]
    assert summary["steps"] == 3 and all(0.55 < e["kept_fraction"] < 0.8 for e in log)


def test_train_spec_validation_names_keys():
    full = validate_train_spec({"steps": 10})
    assert full["lr"] == 5e-4 and full["reweight"] is None
    with pytest.raises(ValueError, match=r"train\.lr"):
        validate_train_spec({"lr": -1})
    with pytest.raises(ValueError, match=r"train\.bogus: unknown key"):
        validate_train_spec({"bogus": 1})
    with pytest.raises(ValueError, match=r"train\.reweight\.strategy: .*ambiguous"):
        validate_train_spec({"reweight": {"strategy": "upper"}})
    with pytest.raises(ValueError, match=r"train\.sstoken\.rho"):
        validate_train_spec({"sstoken": {"rho": 1.5}})
    with pytest.raises(ValueError, match=r"train\.prompt_template"):
        validate_train_spec({"prompt_template": "no slot"})


def test_missing_local_model_is_a_clear_error(tmp_path):
    from thresher.training.trainer import train

    write_shards(redundant_corpus(10), tmp_path / "d", n_shards=1)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        train({"model": str(tmp_path / "nope"), "steps": 1}, str(tmp_path / "d"), str(tmp_path / "o"))


def test_training_code_never_unpickles():
    root = Path(__file__).resolve().parents[1] / "thresher" / "training"
    for f in root.glob("*.py"):
        src = f.read_text()
        assert not re.search(r"^\s*import pickle|^\s*from pickle|cPickle|dill", src, re.M), f
        for call in re.findall(r"torch\.load\([^)]*\)", src):
            assert "weights_only=True" in call, (f, call)
        assert "from_pretrained(" not in src or "local_files_only=True" in src, f
