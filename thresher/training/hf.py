"""Hugging Face ``Trainer`` integration: thresher's loss, its columns kept, its statistics logged.

Mix :class:`ThresherLossMixin` into your own trainer class (``class MyTrainer(
ThresherLossMixin, MyTrainerBase)``) or use :class:`ThresherTrainer` directly; pass
``objective=Objective(...)``. What it changes in the Trainer:

- ``compute_loss``: the objective's weighted / token-masked / reweighted loss. A batch's
  ``weight`` / ``token_mask`` / ``hist_token_loss`` entries are consumed there and never
  reach the model.
- Columns: the Trainer's default ``remove_unused_columns=True`` drops every dataset column
  that the model's ``forward`` does not take, which would silently drop an offline ``weight``
  or ``token_mask`` column. The mixin adds thresher's columns (``THRESHER_COLUMNS``) to the
  columns the Trainer keeps; where this transformers version gives no way to do that, it
  refuses to start unless ``remove_unused_columns=False``.
- Logging: the objective's statistics (``kept_fraction`` of ssToken, ``weight_max_over_min``
  of online reweighting, the mean ``weight`` of an offline column), averaged over the logging
  interval, go into the Trainer's logs as ``thresher/<name>``, so every logging callback
  (TensorBoard, W&B, ...) receives them.

Batches may come from :func:`thresher.training.data.collate` over a ``ShardDataset`` (an
``IterableDataset``: set ``max_steps``) or from any collator producing the same keys.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from thresher.training.loss import Objective

THRESHER_COLUMNS = ("weight", "token_mask", "hist_token_loss")
LOG_PREFIX = "thresher/"


class ThresherLossMixin:
    """Adds thresher's loss, columns and statistics to any ``transformers.Trainer`` subclass."""

    # our loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, objective: Objective | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective or Objective()
        self._stats: dict[str, list[float]] = defaultdict(list)
        if self.args.remove_unused_columns and not hasattr(super(), "_set_signature_columns_if_needed"):
            raise ValueError("ThresherTrainer: this transformers version gives no hook to keep thresher's columns "
                             f"{list(THRESHER_COLUMNS)}; set TrainingArguments(remove_unused_columns=False)")

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        cols = list(self._signature_columns or [])  # type: ignore[has-type]
        self._signature_columns = cols + [c for c in THRESHER_COLUMNS if c not in cols]

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        step = int(self.state.global_step)
        if not self.objective._ready:
            self.objective.setup(self.accelerator.unwrap_model(model))
        loss, outputs = self.objective(model, inputs, step)
        for name, value in self.objective.last.items():
            self._stats[name].append(float(value))
        weight = inputs.get("weight") if self.objective.use_weight_column else None
        if isinstance(weight, torch.Tensor) and weight.numel():
            self._stats["weight_mean"].append(float(weight.float().mean()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, plus the objective's statistics since the last training log."""
        if "loss" in logs and self._stats:
            logs = {**logs, **{LOG_PREFIX + k: sum(v) / len(v) for k, v in self._stats.items() if v}}
            self._stats.clear()
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


class ThresherTrainer(ThresherLossMixin, Trainer):
    """``transformers.Trainer`` with thresher's objective (see the module docstring)."""
