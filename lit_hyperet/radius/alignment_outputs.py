"""The files of an alignment-family radius analysis, and its MLflow run.

``radius_images.csv`` (per image: its queries' radius statistics, retrieval hit), ``radius_captions.csv`` (per
caption: specificity, radius, hit), ``radius_specificity.csv`` / ``.md`` / ``.png`` (caption radius per specificity
level, mean ± std, and Spearman's correlation of radius with specificity), ``reliability.csv`` / ``.md`` / ``.png``
(retrieval hit rate per radius quantile bin, images and captions), ``radius_grid.png`` (images sorted by radius, the
paper's Figure 1), ``radius_summary.json`` (everything with formulas and settings). Tables and bins come from
:mod:`lit_hyperet.radius.analysis`, files and the MLflow run from :mod:`lit_hyperet.radius.outputs`, figures from
:mod:`lit_hyperet.radius.plots`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lit_hyperet.mlflow_store import tracking_uri
from lit_hyperet.radius import analysis, outputs, plots
from lit_hyperet.radius.alignment import FORMULAS, IMAGE, NORMALISATION, TEXT, AlignmentRun
from lit_hyperet.radius.runs import RunSpec
from lit_hyperet.radius.tokens import QUANTITIES
from lit_hyperet.tables import markdown_table

IMAGES_CSV = "radius_images.csv"
CAPTIONS_CSV = "radius_captions.csv"
SPECIFICITY_CSV = "radius_specificity.csv"
SPECIFICITY_MD = "radius_specificity.md"
CAPTION_COLUMNS = ("run", "image_id", "caption_index", "caption", "specificity", *QUANTITIES, "correct")


# ------------------------------------------------------------------------------------------------ tables


def image_table(runs: Sequence[AlignmentRun]) -> pd.DataFrame:
    """One row per (run, image): id, path, query count, retrieval hit (1/0) and the :data:`analysis.STATS` of its
    queries' ``rad``, ``ball_norm`` and ``norm_radius`` (``image_<quantity>_<stat>``)."""
    parts = []
    for run in runs:
        labels = {
            "run": [run.name] * len(run.images),
            "id": [r.id for r in run.images],
            "image_path": [str(run.image_paths.get(r.id, "")) for r in run.images],
            "queries": [int(r.values[IMAGE]["rad"].size) for r in run.images],
            "correct": [int(bool(r.correct)) for r in run.images],
        }
        stats = [analysis.image_stats(run.images, IMAGE, q).add_prefix(f"image_{q}_") for q in QUANTITIES]
        parts.append(pd.concat([pd.DataFrame(labels, dtype=object), *stats], axis=1))
    return pd.concat(parts, ignore_index=True)


def caption_table(runs: Sequence[AlignmentRun]) -> pd.DataFrame:
    """One row per (run, caption): its image, index, text, specificity, radius quantities and retrieval hit (1/0)."""
    rows = [
        {
            "run": run.name,
            **{k: r.categories[k] for k in ("image_id", "caption_index", "caption", "specificity")},
            **{q: float(r.values[TEXT][q][0]) for q in QUANTITIES},
            "correct": int(bool(r.correct)),
        }
        for run in runs
        for r in run.captions
    ]
    return pd.DataFrame(rows, columns=list(CAPTION_COLUMNS))


def spearman(radius: pd.Series, level: pd.Series) -> float:
    """Spearman's correlation of caption radius with specificity (the alignment module's test metric)."""
    from lit_hyperet.alignment_module import specificity_spearman

    rho = specificity_spearman(torch.tensor(radius.to_numpy(float)), torch.tensor(level.to_numpy(float)))
    return float(rho)


def specificity_table(captions: pd.DataFrame) -> pd.DataFrame:
    """Per run and specificity level: caption count, ``rad`` and ``norm_radius`` mean and population std; per run
    Spearman's correlation of ``rad`` with specificity over all its captions (repeated on each of its rows)."""
    grouped = captions.groupby(["run", "specificity"], sort=False)
    table = grouped.agg(
        captions=("rad", "size"),
        rad_mean=("rad", "mean"),
        rad_std=("rad", lambda v: v.std(ddof=0)),
        norm_radius_mean=("norm_radius", "mean"),
        norm_radius_std=("norm_radius", lambda v: v.std(ddof=0)),
    ).reset_index()
    rho = {run: spearman(rows["rad"], rows["specificity"]) for run, rows in captions.groupby("run", sort=False)}
    table["spearman"] = table["run"].map(rho)
    return table.sort_values(["run", "specificity"], kind="stable", ignore_index=True)


# ------------------------------------------------------------------------------------------------ writing


def write_specificity(path: Path, table: pd.DataFrame, how: str) -> Path:
    """``radius_specificity.md``: what specificity is, the quantity, and the table (mean ± std per level)."""
    shown = pd.DataFrame(
        {
            "run": table["run"],
            "specificity": table["specificity"],
            "captions": table["captions"],
            "rad": [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["rad_mean"], table["rad_std"], strict=True)],
            "norm_radius": [
                f"{m:.4f} ± {s:.4f}" for m, s in zip(table["norm_radius_mean"], table["norm_radius_std"], strict=True)
            ],
            "Spearman (rad, specificity)": [f"{v:.4f}" for v in table["spearman"]],
        }
    )
    source = "the annotations' levels" if how == "level" else "the caption's word count"
    lines = [
        "# Caption radius by specificity",
        "",
        f"Specificity: {source}. `rad`: {FORMULAS['rad']}. `norm_radius`: {FORMULAS['norm_radius']}.",
        "Mean ± population std over the captions of each level; Spearman over all captions of the run (ties get "
        "their average rank).",
        "",
    ]
    path.write_text("\n".join(lines) + "\n" + markdown_table(shown) + "\n")
    return path


def grid_images(run: AlignmentRun, count: int) -> list[tuple[Any, float, str]]:
    """Up to ``count`` of the run's images evenly spaced along their mean query ``rad`` order (low → high)."""
    from PIL import Image

    order = sorted(run.images, key=lambda r: float(r.values[IMAGE]["rad"].mean()))
    picks = np.unique(np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int))
    cells = []
    for index in picks:
        record = order[int(index)]
        path = run.image_paths.get(record.id)
        if path is None:
            continue
        with Image.open(path) as image:
            cells.append((image.convert("RGB"), float(record.values[IMAGE]["rad"].mean()), record.id))
    return cells


def metrics(runs: Sequence[AlignmentRun], specificity: pd.DataFrame, bins: pd.DataFrame) -> dict[str, float]:
    """MLflow metrics per run: recall, mean image and caption ``rad``, mean caption ``rad`` per level, Spearman,
    saturated fraction, and the hit rate per radius bin (``<run>/reliability/<images|captions>_bin<k>``)."""
    out: dict[str, float] = {}
    for run in runs:
        key = outputs.metric_key(run.name)
        out.update({f"{key}/{name}": value for name, value in run.recall.items()})
        out[f"{key}/images"] = float(len(run.images))
        out[f"{key}/captions"] = float(len(run.captions))
        out[f"{key}/image_rad_mean"] = float(np.mean([r.values[IMAGE]["rad"].mean() for r in run.images]))
        out[f"{key}/caption_rad_mean"] = float(np.mean([r.values[TEXT]["rad"][0] for r in run.captions]))
        embeddings = sum(r.values[IMAGE]["rad"].size for r in run.images) + len(run.captions)
        out[f"{key}/saturated_fraction"] = sum(run.saturated.values()) / max(embeddings, 1)
        for row in specificity[specificity["run"] == run.name].itertuples():
            out[f"{key}/caption_rad_level{row.specificity}_mean"] = float(row.rad_mean)
            out[f"{key}/specificity_spearman"] = float(row.spearman)
        for row in bins.itertuples():
            for kind in ("images", "captions"):
                if row.run == f"{run.name} {kind}":
                    out[f"{key}/reliability/{kind}_bin{row.bin}"] = float(row.accuracy)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def write_alignment_outputs(
    runs: Sequence[AlignmentRun], out: Path, args: argparse.Namespace, specs: Sequence[RunSpec]
) -> dict[str, Path]:
    """Write every file into ``out`` and, unless ``--no-mlflow``, log them as one MLflow run."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["images_csv"] = outputs.write_csv(out / IMAGES_CSV, image_table(runs))
    captions = caption_table(runs)
    written["captions_csv"] = outputs.write_csv(out / CAPTIONS_CSV, captions)
    specificity = specificity_table(captions)
    written["specificity_csv"] = outputs.write_csv(out / SPECIFICITY_CSV, specificity)
    how = runs[0].specificity
    written["specificity_md"] = write_specificity(out / SPECIFICITY_MD, specificity, how)
    with_rho = captions.merge(specificity[["run", "spearman"]].drop_duplicates("run"), on="run")
    figure = plots.specificity_figure(with_rho, args.plot_quantity)
    written["specificity_plot"] = out / plots.SPECIFICITY_PNG
    figure.savefig(written["specificity_plot"], dpi=110)
    results = [part for run in runs for part in run.as_results()]
    bins = pd.concat(
        [
            analysis.reliability_table(results[0::2], args.bins, IMAGE, args.bin_quantity),
            analysis.reliability_table(results[1::2], args.bins, TEXT, args.bin_quantity),
        ],
        ignore_index=True,
    )
    written["reliability_csv"] = outputs.write_csv(out / outputs.RELIABILITY_CSV, bins)
    k = runs[0].recall_k
    note = (
        f"Images sorted by the mean `{args.bin_quantity}` of their queries, captions by their own "
        f"(`{args.bin_quantity}`: {FORMULAS[args.bin_quantity]}), each split into {args.bins} equal-count bins per "
        f"run; `accuracy`: retrieval hits at {k} (%): an image whose best caption ranks within the top {k} "
        f"(image→text), a caption whose image does (text→image), ranked among the analysed images and captions."
    )
    written["reliability_md"] = outputs.write_reliability(out / outputs.RELIABILITY_MD, bins, note)
    written["reliability_plot"] = plots.plot_reliability(bins, out / plots.RELIABILITY_PNG)
    cells = grid_images(runs[0], args.grid)
    if cells:
        title = f"{runs[0].name}: images sorted by mean query radius (low → high), {runs[0].model['space']}"
        written["grid"] = out / plots.GRID_PNG
        plots.grid_figure(cells, title=title).savefig(written["grid"], dpi=110)
    summary = {
        "quantities": dict(FORMULAS),
        "normalisation": NORMALISATION,
        "statistics": "images: over the per-image mean of its queries; captions: one embedding each; std: population",
        "settings": settings(args, specs),
        "runs": {run.name: run_summary(run) for run in runs},
        "specificity": specificity.to_dict("records"),
        "reliability": bins.to_dict("records"),
    }
    written["summary_json"] = outputs.write_json(out / outputs.SUMMARY_JSON, summary)
    if not args.no_mlflow:
        params = {k: v for k, v in summary["settings"].items() if k != "runs"}
        params.update({f"run/{s.name}": ",".join(s.configs) + (f":{s.ckpt}" if s.ckpt else "") for s in specs})
        values = metrics(runs, specificity, bins)
        run_id = outputs.log_run(out, params, summary, out.name, args.experiment, metrics=values)
        print(f"MLflow run {run_id} in {tracking_uri()} (experiment {args.experiment})")
    return written


def settings(args: argparse.Namespace, specs: Sequence[RunSpec]) -> dict[str, Any]:
    """The analysis settings written into the summary and logged as MLflow params."""
    return {
        "family": "alignment",
        "split": args.split,
        "max_samples": args.max_samples,
        "specificity": args.specificity,
        "recall_k": args.recall_k,
        "bins": args.bins,
        "bin_quantity": args.bin_quantity,
        "plot_quantity": args.plot_quantity,
        "overrides": list(args.override),
        "runs": {s.name: {"configs": s.configs, "ckpt": s.ckpt, "overrides": s.overrides} for s in specs},
    }


def run_summary(run: AlignmentRun) -> dict[str, Any]:
    """Model, counts, recall and the :data:`analysis.STATS` of image (per-image mean) and caption radii."""
    image_means = pd.DataFrame({q: analysis.image_means(run.images, IMAGE, q) for q in QUANTITIES})
    caption_values = pd.DataFrame({q: analysis.token_values(run.captions, TEXT, q) for q in QUANTITIES})
    return {
        "configs": run.configs,
        "ckpt": run.ckpt,
        "split": run.split,
        "model": run.model,
        "specificity": run.specificity,
        "counts": {"images": len(run.images), "captions": len(run.captions), "saturated": run.saturated},
        "recall": run.recall,
        "recall_k": run.recall_k,
        "image_mean": analysis.describe(image_means).to_dict(),
        "caption": analysis.describe(caption_values).to_dict(),
    }
