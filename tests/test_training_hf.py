"""The Hugging Face Trainer keeps thresher's columns, logs its statistics, and the README's
Trainer example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

from transformers import TrainingArguments  # noqa: E402

from thresher.models.tiny import tiny_gpt2  # noqa: E402
from thresher.training.hf import ThresherTrainer  # noqa: E402
from thresher.training.loss import Objective  # noqa: E402
from thresher.training.reweight import ReweightConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SpyObjective(Objective):
    """Records the keys and the weights of every batch the loss sees."""

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], step: int) -> Any:
        self.seen = getattr(self, "seen", [])
        self.seen.append((set(batch), batch.get("weight")))
        return super().__call__(model, batch, step)


def token_dataset(n: int = 16, length: int = 12) -> Any:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (n, length), generator=g).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * length] * n,
                                       "weight": [0.5 + (i % 4) for i in range(n)],
                                       "text": [f"doc {i}" for i in range(n)]}).with_format("torch")


def args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=2, use_cpu=True,
                             dataloader_num_workers=0, **kw)


@pytest.mark.filterwarnings("ignore")
def test_offline_weight_column_reaches_the_loss_with_default_remove_unused_columns(tmp_path: Path) -> None:
    a = args(tmp_path)
    assert a.remove_unused_columns  # the Trainer's default, which drops columns forward() does not take
    obj = SpyObjective()
    trainer = ThresherTrainer(model=tiny_gpt2(64, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0),
                              args=a, train_dataset=token_dataset(), objective=obj)
    trainer.train()
    keys, weight = obj.seen[0]
    assert "weight" in keys and "text" not in keys  # thresher's column kept, other unused columns still dropped
    assert weight is not None and set(weight.tolist()) <= {0.5, 1.5, 2.5, 3.5}
    logged = [log for log in trainer.state.log_history if "thresher/weight_mean" in log]
    assert len(logged) == 2 and all(0.5 <= log["thresher/weight_mean"] <= 3.5 for log in logged)


@pytest.mark.filterwarnings("ignore")
def test_online_reweighting_statistics_reach_the_trainer_logs(tmp_path: Path) -> None:
    trainer = ThresherTrainer(model=tiny_gpt2(64, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0),
                              args=args(tmp_path), train_dataset=token_dataset(),
                              objective=Objective(reweight=ReweightConfig(strategy="linupper", temperature=0.5)))
    trainer.train()
    logged = [log for log in trainer.state.log_history if "thresher/weight_max_over_min" in log]
    assert len(logged) == 2 and all(log["thresher/weight_max_over_min"] >= 1.0 for log in logged)
    assert all("loss" in log for log in logged)


@pytest.mark.filterwarnings("ignore")
def test_readme_trainer_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- trainer-example -->\n```python\n(.*?)```", readme, flags=re.S)
    assert match, "README: the Trainer example block is missing"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(match.group(1), "README.md:trainer-example", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "thresher/weight_max_over_min" in out
    assert (tmp_path / "out" / "trainer-demo" / "_manifest.json").is_file()
