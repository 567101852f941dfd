"""What one analysed run holds: per-image token radii, their categories, skips and (optionally) answer correctness."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lit_hyperet.tasks.scienceqa.rules import grade_band

#: Per-sample meta fields copied into the records (when the datamodule's meta has them), in CSV column order.
CATEGORY_FIELDS: tuple[str, ...] = (
    "split",
    "subject",
    "topic",
    "category",
    "skill",
    "grade",
    "grade_band",
    "has_text",
    "answer",
)


def categories(meta: dict[str, Any]) -> dict[str, Any]:
    """The category fields of one sample's meta, with ``grade_band`` derived from ``grade``."""
    found = {k: meta[k] for k in CATEGORY_FIELDS if k in meta and isinstance(meta[k], (str, int, float, bool))}
    if "grade" in meta and "grade_band" not in found:
        band = grade_band(meta["grade"])
        if band is not None:
            found["grade_band"] = band
    return found


@dataclass
class ImageRecord:
    """One image: its id, categories and per-token values ``values[source][quantity]`` (float64 arrays)."""

    id: str
    categories: dict[str, Any]
    values: dict[str, dict[str, np.ndarray]]
    correct: bool | None = None
    prediction: str | None = None


@dataclass
class RunResult:
    """Everything measured for one ``name = config [+ ckpt]``."""

    name: str
    configs: list[str]
    ckpt: str | None
    split: str
    model: dict[str, Any] = field(default_factory=dict)
    records: list[ImageRecord] = field(default_factory=list)
    samples_seen: int = 0
    skipped_text_only: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    saturated: dict[str, int] = field(default_factory=dict)
    text_only_correct: list[bool] = field(default_factory=list)

    def sources(self) -> list[str]:
        """Sources present in the records (``vision``, optionally ``projector``)."""
        return list(self.records[0].values) if self.records else []
