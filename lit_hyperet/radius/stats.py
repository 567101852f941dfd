"""Descriptive statistics of radius values and grouping of image records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from lit_hyperet.radius.records import ImageRecord

QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
STATS: tuple[str, ...] = ("mean", "std", "min", *(f"q{round(q * 100):02d}" for q in QUANTILES), "max")


def describe(values: np.ndarray) -> dict[str, float]:
    """Mean, population std, min, the :data:`QUANTILES` (``q05`` … ``q95``) and max of a 1-D array."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {k: float("nan") for k in STATS}
    qs = np.quantile(v, QUANTILES)
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min())}
    out.update({name: float(q) for name, q in zip(STATS[3:-1], qs, strict=True)})
    out["max"] = float(v.max())
    return out


def groups(records: Sequence[ImageRecord], fields: Iterable[str]) -> dict[str, list[ImageRecord]]:
    """``{"all": records, "<field>=<value>": [...], ...}`` for each field present in the records' categories."""
    out: dict[str, list[ImageRecord]] = {"all": list(records)}
    for f in fields:
        values = sorted({str(r.categories[f]) for r in records if f in r.categories})
        for value in values:
            out[f"{f}={value}"] = [r for r in records if str(r.categories.get(f)) == value]
    return out


def image_means(records: Sequence[ImageRecord], source: str, quantity: str) -> np.ndarray:
    """Per-image mean of ``quantity`` over the tokens of ``source``."""
    return np.array([float(r.values[source][quantity].mean()) for r in records], dtype=np.float64)


def token_values(records: Sequence[ImageRecord], source: str, quantity: str) -> np.ndarray:
    """All tokens' ``quantity`` of ``source`` over the records, concatenated."""
    if not records:
        return np.zeros(0)
    return np.concatenate([r.values[source][quantity].reshape(-1) for r in records])
