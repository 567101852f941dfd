"""Radius as uncertainty: accuracy per radius quantile bin (a reliability-style table)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_hyperet.radius.records import RunResult
from lit_hyperet.radius.stats import image_means

RELIABILITY_CSV = "reliability.csv"
RELIABILITY_MD = "reliability.md"
COLUMNS = ("run", "source", "quantity", "bin", "lo", "hi", "n", "correct", "accuracy")


def reliability_rows(
    results: Sequence[RunResult], bins: int = 5, source: str = "vision", quantity: str = "rad"
) -> list[dict[str, Any]]:
    """Per run: images sorted by their mean token ``quantity`` and split into ``bins`` equal-count bins (the radius
    quantile bins); each row gives the bin's value range, size, correct count and accuracy. Text-only samples (no
    radius) get one extra row ``bin = "text-only"``. Records without a correctness flag are left out."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    rows: list[dict[str, Any]] = []
    for res in results:
        recs = [r for r in res.records if r.correct is not None and source in r.values]
        if recs:
            means = image_means(recs, source, quantity)
            order = np.argsort(means, kind="stable")
            for i, idx in enumerate(np.array_split(order, min(bins, len(recs))), start=1):
                correct = sum(bool(recs[j].correct) for j in idx)
                rows.append(_row(res.name, source, quantity, i, means[idx].min(), means[idx].max(), len(idx), correct))
        if res.text_only_correct:
            n, k = len(res.text_only_correct), sum(res.text_only_correct)
            rows.append(_row(res.name, source, quantity, "text-only", float("nan"), float("nan"), n, k))
    return rows


def _row(run: str, source: str, quantity: str, b: int | str, lo: float, hi: float, n: int, k: int) -> dict[str, Any]:
    return {
        "run": run,
        "source": source,
        "quantity": quantity,
        "bin": b,
        "lo": float(lo),
        "hi": float(hi),
        "n": n,
        "correct": k,
        "accuracy": k / n if n else float("nan"),
    }


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the reliability rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            f"{v:.4g}" if isinstance(v, float) and v == v else ("" if isinstance(v, float) else str(v))
            for v in (r[c] for c in COLUMNS)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, rows: Sequence[dict[str, Any]], note: str) -> Path:
    """Write the markdown table with a one-paragraph explanation above it."""
    path.write_text(f"# Accuracy per radius quantile bin\n\n{note}\n\n{to_markdown(rows)}")
    return path
