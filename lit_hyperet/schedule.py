"""Learning-rate schedule: linear warm-up then half-cycle cosine, stepped per optimiser step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warm-up to each group's lr, then cosine decay to ``min_lr_ratio × lr`` at ``total_steps``.

    Args:
        optimizer: the optimiser.
        warmup: warm-up length: a fraction of ``total_steps`` when < 1, else a number of steps.
        total_steps: steps of the whole run; -1 lets the LightningModule fill in ``trainer.estimated_stepping_batches``.
        min_lr_ratio: final lr as a fraction of the peak lr (MemVP/HyperET recipe: 0).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup: float = 0.1, total_steps: int = -1, min_lr_ratio: float = 0.0
    ) -> None:
        self.warmup = warmup
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.factor)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the run length once it is known and re-apply the current step's lr: ``LambdaLR`` sets the first lr when
        it is built, which with ``total_steps=-1`` would be the peak instead of the first warm-up value."""
        self.total_steps = total_steps
        factor = self.factor(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def warmup_steps(self) -> int:
        """Warm-up length in steps."""
        if self.warmup < 1:
            return int(round(self.warmup * max(self.total_steps, 0)))
        return int(self.warmup)

    def factor(self, step: int) -> float:
        """Multiplier of the peak lr at optimiser step ``step``."""
        warm = self.warmup_steps()
        if step < warm:
            return (step + 1) / warm
        if self.total_steps <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / (self.total_steps - warm))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
