"""Hugging Face ``Trainer`` integration that only overrides ``compute_loss``.

Mix :class:`ThresherLossMixin` into your own trainer class (``class MyTrainer(
ThresherLossMixin, MyTrainerBase)``) or use :class:`ThresherTrainer` directly; pass
``objective=Objective(...)``. Batches come from :func:`thresher.training.data.collate`
(their ``weight``/``token_mask``/``hist_token_loss`` entries are consumed here and never
reach the model). With an ``IterableDataset`` set ``max_steps``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from thresher.training.loss import Objective


class ThresherLossMixin:
    """Adds weighted / token-masked / reweighted loss to any ``transformers.Trainer`` subclass."""

    # our loss is a per-micro-batch mean: let the Trainer divide it by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, objective: Objective | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective or Objective()

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        step = int(self.state.global_step)
        if not self.objective._ready:
            self.objective.setup(self.accelerator.unwrap_model(model))
        loss, outputs = self.objective(model, inputs, step)
        return (loss, outputs) if return_outputs else loss


class ThresherTrainer(ThresherLossMixin, Trainer):
    """``transformers.Trainer`` with thresher's objective (see the module docstring)."""
