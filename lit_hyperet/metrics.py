"""Exact match of generated text against a reference (torchmetrics), for tasks without a task-specific metric."""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric


def normalize_text(text: str) -> str:
    """Whitespace-normalised text (strip, collapse runs of whitespace) for exact match."""
    return " ".join(text.split())


class ExactMatch(Metric):
    """Percentage (0-100) of generations equal to the reference after :func:`normalize_text`; ``{"exact_match": t}``.

    ``update(predictions, meta)`` reads the reference from ``meta[i]["reference"]``. Written here because
    torchmetrics' text metrics compare strings only through edit distances or SQuAD normalisation.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], meta: list[dict[str, Any]]) -> None:
        """Compare each prediction with ``meta[i]["reference"]``."""
        if len(predictions) != len(meta):
            raise ValueError(f"{len(predictions)} predictions for {len(meta)} meta entries")
        hits = sum(normalize_text(p) == normalize_text(m["reference"]) for p, m in zip(predictions, meta, strict=True))
        self.correct += hits
        self.total += len(predictions)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"exact_match": 100 * correct / total}``, in percent (``NaN`` before any update)."""
        if self.total == 0:
            return {"exact_match": torch.tensor(math.nan, dtype=torch.float64)}
        return {"exact_match": 100.0 * self.correct.double() / self.total.double()}
