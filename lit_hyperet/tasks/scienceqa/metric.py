"""ScienceQA accuracy with the official categories (torchmetrics).

Categories per problem (flags overlap exactly as in ScienceQA's ``tools/evaluate_acc.py``): NAT/SOC/LAN by
``subject``; TXT = non-empty hint (with or without image); IMG = has an image; NO = neither hint nor image; G1-6 /
G7-12 by the number in ``gradeN``; Avg = all; plus ``topic/<topic>`` for the 26 official topics. The categories and
the answer extraction live in :mod:`lit_hyperet.tasks.scienceqa.rules` (plain Python, shared with the
``scienceqa-score`` command).

Accuracies are in percent (0-100), as the official script and ``scienceqa-score`` print them; the LightningModule
logs them as they are (``val/Avg``, ``test/NAT`` …). Empty groups: ``compute()`` reports the nine main categories
always, as ``NaN`` when the group is empty (the official script prints -1; ``NaN`` cannot be mistaken for an
accuracy); ``topic/*`` keys appear only for topics seen.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics import Metric

from lit_hyperet.tasks.scienceqa.rules import CATEGORIES, GROUP_INDEX, GROUPS, META_KEYS, extract_answer, score_groups


class ScienceQAAccuracy(Metric):
    """Accuracy (%) per official ScienceQA category and topic; ``compute()`` → ``{"NAT": t, …, "topic/physics": t}``.

    ``update(predictions, meta)``: generated texts (new tokens only) and per-sample meta with the keys of
    ``ScienceQAProblem.meta()`` (``answer``, ``num_choices``, ``subject``, ``grade``, ``topic``, ``has_text``,
    ``has_image``; optional ``answer_prefix``). ``update_indices`` takes predicted indices (``None``/-1 = wrong).
    States are per-group ``correct``/``total`` count vectors, sum-reduced across processes.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros(len(GROUPS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(GROUPS), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], meta: list[dict[str, Any]]) -> None:
        """Parse each generated text with :func:`extract_answer` and count it."""
        if len(predictions) != len(meta):
            raise ValueError(f"{len(predictions)} predictions for {len(meta)} meta entries")
        indices = [
            extract_answer(text, int(m["num_choices"]), m.get("answer_prefix", ""))
            for text, m in zip(predictions, meta, strict=True)
        ]
        self.update_indices(indices, meta)

    def update_indices(self, indices: list[int | None], meta: list[dict[str, Any]]) -> None:
        """Count predicted choice indices (``None`` or out-of-range = wrong)."""
        if len(indices) != len(meta):
            raise ValueError(f"{len(indices)} predictions for {len(meta)} meta entries")
        correct = torch.zeros(len(GROUPS), dtype=torch.long)
        total = torch.zeros(len(GROUPS), dtype=torch.long)
        for index, m in zip(indices, meta, strict=True):
            missing = [k for k in META_KEYS if k not in m]
            if missing:
                raise ValueError(f"meta of pid {m.get('pid', '?')} lacks {', '.join(missing)}")
            hit = index is not None and int(index) == int(m["answer"])
            for group in score_groups(m):
                total[GROUP_INDEX[group]] += 1
                correct[GROUP_INDEX[group]] += int(hit)
        self.correct += correct.to(self.correct.device)
        self.total += total.to(self.total.device)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{group: (correct, total)}`` of this process (``compute()`` syncs across processes, then restores these)."""
        return {g: (int(c), int(t)) for g, c, t in zip(GROUPS, self.correct.tolist(), self.total.tolist(), strict=True)}

    def compute(self) -> dict[str, torch.Tensor]:
        """Percentages (0-100): the nine categories always (``NaN`` if empty), ``topic/*`` only where non-empty."""
        acc = 100.0 * self.correct.double() / self.total.double()
        out = {}
        for i, group in enumerate(GROUPS):
            if group in CATEGORIES or self.total[i] > 0:
                out[group] = acc[i] if self.total[i] > 0 else torch.tensor(math.nan, dtype=torch.float64)
        return out
