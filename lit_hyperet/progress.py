"""A progress bar whose epoch count makes sense for step-based training."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the training description ``Epoch e/E`` where ``E`` is the last epoch the
    run reaches: for step-based runs (``max_steps`` with ``max_epochs: -1``, the project's configs) it comes from
    ``max_steps`` and the batches per epoch instead of Lightning's ``max_epochs - 1`` (which reads ``Epoch 9/-2``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}/{self.last_epoch()}"
        if len(self.validation_description) > len(description):  # as Lightning pads it, against flicker
            description = f"{description:{len(self.validation_description)}}"
        return description

    def last_epoch(self) -> int | str:
        """The index of the run's last epoch (``?`` when neither a step nor an epoch limit bounds it)."""
        trainer = self.trainer
        by_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        batches = trainer.num_training_batches
        by_steps = None
        if trainer.max_steps is not None and trainer.max_steps > 0 and 0 < batches < math.inf:
            per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
            by_steps = math.ceil(trainer.max_steps / per_epoch)
        limits = [limit for limit in (by_epochs, by_steps) if limit is not None]
        return min(limits) - 1 if limits else "?"
