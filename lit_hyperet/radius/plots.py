"""The PNG outputs: token-radius histograms and per-group violins (runs side by side) in ``radius.png``, and accuracy
per radius quantile bin in ``reliability.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lit_hyperet.radius.analysis import groups, image_means, token_values  # noqa: E402
from lit_hyperet.radius.runs import RunResult  # noqa: E402

LABELS = {
    "rad": "hyperbolic radius Rad(exp0(f)) = 2||f||",
    "ball_norm": "||exp0(f)|| (released scripts)",
    "norm_radius": "normalised radius tanh(sqrt(c)||f||)",
}
RADIUS_PNG = "radius.png"
RELIABILITY_PNG = "reliability.png"


def _colours(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_radius(
    results: Sequence[RunResult],
    path: Path,
    quantity: str = "rad",
    group_field: str | None = "subject",
    title: str = "",
) -> Path:
    """One figure for all runs: per source a row with the token histogram (left) and per-group violins of the
    per-image mean (right; groups ``all`` and each value of ``group_field``)."""
    sources = [s for s in ("vision", "projector") if any(s in res.sources() for res in results)]
    if not sources:
        raise ValueError("nothing to plot: no run has any image record")
    colours = _colours(len(results))
    fig, axes = plt.subplots(len(sources), 2, figsize=(13, 4.2 * len(sources)), squeeze=False)
    for row, source in enumerate(sources):
        _histograms(axes[row][0], results, source, quantity, colours)
        _violins(axes[row][1], results, source, quantity, group_field, colours)
    fig.suptitle(title or f"{LABELS.get(quantity, quantity)} of visual tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histograms(ax: Any, results: Sequence[RunResult], source: str, quantity: str, colours: list[Any]) -> None:
    data = [token_values(res.records, source, quantity) if source in res.sources() else np.zeros(0) for res in results]
    finite = np.concatenate([d for d in data if d.size]) if any(d.size for d in data) else np.zeros(1)
    edges = np.histogram_bin_edges(finite, bins=40)
    for res, values, colour in zip(results, data, colours, strict=True):
        if values.size:
            label = f"{res.name} (mean {values.mean():.4g}, {values.size} tokens)"
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.8, color=colour, label=label)
    ax.set_xlabel(f"{source} token {LABELS.get(quantity, quantity)}")
    ax.set_ylabel("density")
    ax.set_title(f"{source}: token distribution")
    ax.legend(fontsize=8)


def _violins(
    ax: Any, results: Sequence[RunResult], source: str, quantity: str, field: str | None, colours: list[Any]
) -> None:
    names: list[str] = []
    for res in results:
        for g in groups(res.records, [field] if field else []):
            if g not in names:
                names.append(g)
    width = 0.8 / max(len(results), 1)
    for i, (res, colour) in enumerate(zip(results, colours, strict=True)):
        if source not in res.sources():
            continue
        per_group = groups(res.records, [field] if field else [])
        for gi, g in enumerate(names):
            values = image_means(per_group.get(g, []), source, quantity)
            x = gi - 0.4 + width * (i + 0.5)
            if values.size >= 2 and np.ptp(values) > 0:
                parts = ax.violinplot([values], positions=[x], widths=width * 0.9, showmeans=True)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_alpha(0.5)
                for key in ("cmeans", "cmins", "cmaxes", "cbars"):
                    parts[key].set_color(colour)
            elif values.size:
                ax.scatter([x] * values.size, values, color=colour, s=14)
        ax.plot([], [], color=colour, linewidth=6, alpha=0.5, label=f"{res.name} ({len(res.records)} images)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"per-image mean {quantity}")
    ax.set_title(f"{source}: per-image mean by group")
    ax.legend(fontsize=8)


def plot_reliability(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy per radius quantile bin (:func:`lit_hyperet.radius.analysis.reliability_table`), one line per run
    (text-only accuracy as a dashed horizontal line)."""
    runs = list(dict.fromkeys(table["run"]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        rows = table[table["run"] == run]
        binned = rows[rows["bin"] != "text-only"]
        if len(binned):
            ax.plot(
                binned["bin"].astype(int),
                binned["accuracy"],
                "o-",
                color=colour,
                label=f"{run} (n={binned['n'].sum()})",
            )
        for r in rows[rows["bin"] == "text-only"].itertuples():
            ax.axhline(r.accuracy, color=colour, linestyle="--", linewidth=1, label=f"{run} text-only (n={r.n})")
    quantity = table["quantity"].iloc[0] if len(table) else "rad"
    ax.set_xlabel(f"radius quantile bin (1 = lowest mean {quantity})")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Accuracy per hyperbolic-radius bin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
