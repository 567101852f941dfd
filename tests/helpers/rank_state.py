"""Callbacks for the distributed tests: each rank records its per-step losses and, at the end of fit, its trainable
tensors (gathered to full tensors when sharded with FSDP2) and, for modules that generate, validation generations; a
kill at a given step."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.distributed.tensor import DTensor


class SaveTrainableStatePerRank(Callback):
    """Writes ``rank<N>.pt`` into ``out_dir``: ``{"losses": {global step after the step: loss}, "state": {name: full
    tensor}, "texts": [generated validation texts], "metrics": {name: last logged value}}``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.losses: dict[int, torch.Tensor] = {}
        self.texts: list[str] = []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx=0
    ) -> None:
        generate = getattr(pl_module, "generate_texts", None)  # modules that generate (not alignment)
        if generate is not None:
            self.texts += generate(batch)  # what validation_step scored

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses[trainer.global_step] = outputs["loss"].detach().float().cpu().clone()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {}
        for name, param in pl_module.named_parameters():
            if param.requires_grad:  # full_tensor() is a collective: every rank walks the same names in order
                full = param.full_tensor() if isinstance(param, DTensor) else param
                state[name] = full.detach().cpu().clone()
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # the last logged values
        payload = {"losses": self.losses, "state": state, "texts": self.texts, "metrics": metrics}
        torch.save(payload, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class KillAtStep(Callback):
    """SIGKILLs every rank when the batch after global step ``step`` starts (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
