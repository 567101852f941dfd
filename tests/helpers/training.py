"""A few optimiser steps on a model's own loss, for tests that check a model trains."""

from __future__ import annotations

import torch


def train_steps(model: torch.nn.Module, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps on ``model(**batch).loss`` over the trainable parameters; the losses before each step."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
