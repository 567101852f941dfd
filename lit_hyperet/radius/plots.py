"""The PNG outputs: token-radius histograms and per-group violins (runs side by side) in ``radius.png``, and accuracy
(%) per radius quantile bin, each bin labelled with its radius range, in ``reliability.png``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

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


#: Bins labelled on the reliability plot's x axis; with more, every k-th bin keeps its label (all keep their tick).
MAX_BIN_LABELS = 12


def bin_labels(table: pd.DataFrame) -> dict[int, str]:
    """``{bin: "1: 3.1–4.2"}``: each radius quantile bin of a reliability table
    (:func:`lit_hyperet.radius.analysis.reliability_table`) with the range of per-image mean radius it covers (its
    ``lo``–``hi``, four significant digits; one value when they print alike). Every run is binned on its own, so with
    several runs the label joins their ranges with `` / `` in the table's run order (``—`` for a run without that
    bin)."""
    binned = table[table["bin"] != "text-only"]
    runs = list(dict.fromkeys(binned["run"]))
    numbers = binned["bin"].astype(int)
    labels: dict[int, str] = {}
    for number in sorted(set(numbers)):
        rows = binned[numbers == number]
        ranges = []
        for run in runs:
            row = rows[rows["run"] == run]
            lo, hi = (f"{row[end].iloc[0]:.4g}" for end in ("lo", "hi")) if len(row) else ("—", "—")
            ranges.append(lo if lo == hi else f"{lo}–{hi}")
        labels[number] = f"{number}: {' / '.join(ranges)}"
    return labels


def reliability_figure(table: pd.DataFrame) -> Figure:
    """The figure of :func:`plot_reliability`: accuracy (%) per radius quantile bin, one line per run (text-only
    accuracy as a dashed horizontal line); the x ticks are the bins labelled with their radius ranges
    (:func:`bin_labels`), slanted, and thinned to at most :data:`MAX_BIN_LABELS` labels."""
    runs = list(dict.fromkeys(table["run"]))
    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
    labels = bin_labels(table)
    if labels:
        step = math.ceil(len(labels) / MAX_BIN_LABELS)
        shown = [text if i % step == 0 else "" for i, text in enumerate(labels.values())]
        ax.set_xticks(list(labels), shown, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    several = f" per run ({' / '.join(runs)})" if len(runs) > 1 else ""
    ax.set_xlabel(f"radius quantile bin (1 = lowest mean {quantity}): {quantity} range{several}")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Accuracy per hyperbolic-radius bin")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(table: pd.DataFrame, path: Path) -> Path:
    """``reliability.png``: accuracy (%) per radius quantile bin (:func:`reliability_figure`)."""
    reliability_figure(table).savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------ alignment

SPECIFICITY_PNG = "radius_specificity.png"
GRID_PNG = "radius_grid.png"
LABELS_ALIGNMENT = {
    "rad": "hyperbolic radius (distance to the origin)",
    "ball_norm": "Poincare-ball norm",
    "norm_radius": "normalised radius tanh(sqrt(c) rad / 2)",
}


def specificity_figure(captions: pd.DataFrame, quantity: str = "rad") -> Figure:
    """Caption ``quantity`` per specificity level, one box per level and run (columns ``run``, ``specificity``,
    ``quantity``), each run's Spearman correlation in its legend entry (column ``spearman`` when present)."""
    runs = list(dict.fromkeys(captions["run"]))
    levels = sorted(set(captions["specificity"]))
    fig = Figure(figsize=(max(6.0, 1.2 * len(levels) * max(len(runs), 1) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(len(runs), 1)
    for i, (run, colour) in enumerate(zip(runs, _colours(len(runs)), strict=True)):
        rows = captions[captions["run"] == run]
        data = [rows.loc[rows["specificity"] == level, quantity].to_numpy() for level in levels]
        positions = [li - 0.4 + width * (i + 0.5) for li in range(len(levels))]
        kept = [(d, x) for d, x in zip(data, positions, strict=True) if d.size]
        parts = ax.boxplot([d for d, _ in kept], positions=[x for _, x in kept], widths=width * 0.8, patch_artist=True)
        for box in parts["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.5)
        rho = rows["spearman"].iloc[0] if "spearman" in rows and len(rows) else float("nan")
        ax.plot([], [], color=colour, linewidth=6, alpha=0.5, label=f"{run} (Spearman {rho:.3f}, n={len(rows)})")
    ax.set_xticks(range(len(levels)), [str(level) for level in levels])
    ax.set_xlabel("caption specificity")
    ax.set_ylabel(f"caption {LABELS_ALIGNMENT.get(quantity, quantity)}")
    ax.set_title("Caption radius by specificity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grid_figure(images: Sequence[tuple[Any, float, str]], columns: int = 8, title: str = "") -> Figure:
    """A grid of images in the order given, low to high radius (the paper's Figure 1): ``(PIL image, radius,
    label)`` per cell, the radius and label under each."""
    rows = max(1, math.ceil(len(images) / columns))
    cols = min(columns, max(len(images), 1))
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows + 0.6))
    FigureCanvasAgg(fig)
    for index, (image, radius, label) in enumerate(images):
        ax = fig.add_subplot(rows, cols, index + 1)
        ax.imshow(np.asarray(image))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{radius:.3f}\n{label}", fontsize=7)
    fig.suptitle(title or "Images sorted by radius (low → high)", fontsize=10)
    fig.tight_layout()
    return fig
