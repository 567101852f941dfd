"""Learning-rate schedule: linear warm-up then half-cycle cosine, stepped per optimiser step."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, SequentialLR
from transformers import get_cosine_with_min_lr_schedule_with_warmup


class WarmupCosineLR(SequentialLR):
    """Linear warm-up to each group's lr, then cosine decay to ``min_lr_ratio × lr`` at ``total_steps``.

    With ``warm`` warm-up steps and ``total`` steps, the lr at optimiser step ``s`` is ``lr × (s + 1) / warm`` for
    ``s < warm`` (the first step already trains, at ``lr / warm``), then
    ``lr × (r + (1 - r) × (1 + cos(π × (s - warm) / (total - warm))) / 2)`` with ``r = min_lr_ratio``, and stays at
    ``r × lr`` after ``total``. Without steps left after the warm-up the lr stays at its peak.

    Built from the libraries' schedulers, chained by ``SequentialLR`` at step ``warm``:

    - warm-up: ``torch.optim.lr_scheduler.LinearLR(start_factor=1/warm, total_iters=warm-1)``, exactly
      ``(s + 1) / warm``. transformers' warm-ups start at 0 at step 0 (``get_cosine_schedule_with_warmup``), or put
      the cosine one step early (``get_cosine_with_min_lr_schedule_with_warmup_lr_rate``).
    - decay: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` with no warm-up of its own over
      ``total - warm`` steps. torch's ``CosineAnnealingLR`` cannot decay to ``min_lr_ratio × lr``: its ``eta_min`` is
      one absolute lr for every group, and the groups (HyperET, projector, LoRA) have their own lrs;
      transformers' ``min_lr_rate`` is relative to each group's lr.
    - after ``total``: both libraries' cosines rise again, so :meth:`step` holds the final lr.

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
        self._chain(optimizer)

    def _chain(self, optimizer: torch.optim.Optimizer) -> None:
        """(Re)build the phases for the current settings and start them at step 0 from each group's peak lr."""
        warm, total = self.warmup_steps(), self.total_steps
        phases: list[LRScheduler] = []
        if warm > 0:
            phases.append(LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1))
        if total > warm:
            decay = get_cosine_with_min_lr_schedule_with_warmup(
                optimizer, num_warmup_steps=0, num_training_steps=total - warm, min_lr_rate=self.min_lr_ratio
            )
            phases.append(decay)
        if not phases:  # no warm-up and no decay (run length not known yet, or 0): the peak lr
            phases.append(ConstantLR(optimizer, factor=1.0))
        super().__init__(optimizer, phases, milestones=[warm] if len(phases) == 2 else [])

    def warmup_steps(self) -> int:
        """Warm-up length in steps."""
        if self.warmup < 1:
            return int(round(self.warmup * max(self.total_steps, 0)))
        return int(self.warmup)

    def step(self) -> None:
        """One optimiser step on; past ``total_steps`` the lr stays at ``min_lr_ratio × lr``."""
        if self.last_epoch >= self.total_steps > self.warmup_steps():
            self.last_epoch += 1
            return
        super().step()

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the run length once it is known: rebuild the phases for it and bring them to the current step (the
        schedule was built with ``total_steps=-1``, so its first lr was the peak instead of the first warm-up value)."""
        self.total_steps = total_steps
        self._rebuild_at(self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a saved schedule: its own settings (``total_steps`` as saved, not this run's estimate), its phases'
        states, and the lrs it had set, put back into the optimiser (``LinearLR`` scales the current lr, so the
        warm-up goes on from the saved one even when the optimiser's state was not loaded)."""
        settings = (state_dict["warmup"], state_dict["total_steps"], state_dict["min_lr_ratio"])
        if settings != (self.warmup, self.total_steps, self.min_lr_ratio):
            self.warmup, self.total_steps, self.min_lr_ratio = settings
            self._chain(self.optimizer)
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def _rebuild_at(self, step: int) -> None:
        """Build the phases for the current settings and step them to ``step``."""
        self._chain(self.optimizer)
        with warnings.catch_warnings():  # replaying steps that the optimiser took before (or has yet to take)
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                self.step()
