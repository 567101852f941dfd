"""A callback for the DDP test: each rank saves its trainable tensors at the end of fit."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SaveTrainableStatePerRank(Callback):
    """Writes ``rank<N>.pt`` with the trainable tensors into ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(state, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))
