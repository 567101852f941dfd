"""Callbacks that make one training step non-finite: a NaN image batch, or an infinite gradient."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class PoisonBatch(Callback):
    """Sets the pixel values of the batch of global step ``step`` to NaN (so that step's loss is NaN)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step and batch.get("pixel_values") is not None:
            batch["pixel_values"].fill_(float("nan"))


class PoisonGradient(Callback):
    """Sets one trainable gradient to +inf before the optimiser step of global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if trainer.global_step == self.step:
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None)
            grad.fill_(float("inf"))
