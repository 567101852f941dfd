"""Writing one analysis's files into ``--out`` and logging them to MLflow.

``radius_images.csv`` (per image), ``radius_groups.csv`` and ``radius_table.md`` (per run, source and group),
``radius_summary.json`` (everything, with formulas and settings), ``radius.png``; with ``--with-accuracy`` also
``reliability.csv`` / ``reliability.md`` / ``reliability.png`` (accuracy per radius quantile bin). The tables come
from :mod:`lit_hyperet.radius.analysis`, the PNGs from :mod:`lit_hyperet.radius.plots`. Unless ``--no-mlflow``, the
folder is logged as one MLflow run (parameters, headline metrics, every file as an artifact).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lit_hyperet.mlflow_store import tracking_uri
from lit_hyperet.radius import analysis, plots
from lit_hyperet.radius.runs import RunResult, RunSpec
from lit_hyperet.radius.tokens import FORMULAS, QUANTITIES
from lit_hyperet.tables import markdown_table

IMAGES_CSV = "radius_images.csv"
GROUPS_CSV = "radius_groups.csv"
TABLE_MD = "radius_table.md"
SUMMARY_JSON = "radius_summary.json"
RELIABILITY_CSV = "reliability.csv"
RELIABILITY_MD = "reliability.md"
DEFAULT_GROUP_BY = ("subject", "grade_band")
EXPERIMENT = "lit_hyperet_radius"


def settings(args: argparse.Namespace, specs: Sequence[RunSpec]) -> dict[str, Any]:
    """The analysis settings written into the summary and logged as MLflow params."""
    return {
        "curvature": args.curvature,
        "layer": "config vision_feature_layer" if args.layer is None else args.layer,
        "include_cls": args.include_cls,
        "projector": args.projector,
        "split": args.split,
        "max_samples": args.max_samples,
        "with_accuracy": args.with_accuracy,
        "bins": args.bins,
        "bin_quantity": args.bin_quantity,
        "plot_quantity": args.plot_quantity,
        "overrides": list(args.override),
        "runs": {s.name: {"configs": s.configs, "ckpt": s.ckpt, "overrides": s.overrides} for s in specs},
    }


def write_outputs(
    results: Sequence[RunResult], out: Path, args: argparse.Namespace, specs: Sequence[RunSpec]
) -> dict[str, Path]:
    """Write CSV, JSON summary and plot (plus the reliability files with accuracy) into ``out``; log to MLflow."""
    out.mkdir(parents=True, exist_ok=True)
    group_by = list(args.group_by or DEFAULT_GROUP_BY)
    conf = settings(args, specs)
    written: dict[str, Path] = {}
    written["images_csv"] = write_csv(out / IMAGES_CSV, analysis.image_table(results))
    summary = analysis.summary(results, conf, group_by)
    table = analysis.group_table(summary)
    written["groups_csv"] = write_csv(out / GROUPS_CSV, table)
    written["table_md"] = write_table(out / TABLE_MD, table, args.curvature)
    layers = sorted({str(r.model.get("layer")) for r in results})
    title = (
        f"{plots.LABELS[args.plot_quantity]} of visual tokens (c = {args.curvature}, layer {', '.join(layers)}, "
        f"{args.split})"
    )
    written["plot"] = plots.plot_radius(results, out / plots.RADIUS_PNG, args.plot_quantity, group_by[0], title)
    if args.with_accuracy:
        bins = analysis.reliability_table(results, args.bins, "vision", args.bin_quantity)
        written["reliability_csv"] = write_csv(out / RELIABILITY_CSV, bins)
        note = (
            f"Images sorted by their mean vision-token `{args.bin_quantity}` "
            f"({FORMULAS[args.bin_quantity]}) and split into {args.bins} equal-count bins per run; accuracy (%) "
            "of the greedy answer (ScienceQA answer extraction) per bin. `text-only`: samples without an image."
        )
        written["reliability_md"] = write_reliability(out / RELIABILITY_MD, bins, note)
        written["reliability_plot"] = plots.plot_reliability(bins, out / plots.RELIABILITY_PNG)
        summary["reliability"] = bins.to_dict("records")
    written["summary_json"] = write_json(out / SUMMARY_JSON, summary)
    if not args.no_mlflow:
        params = {k: v for k, v in conf.items() if k != "runs"}
        params.update({f"run/{s.name}": ",".join(s.configs) + (f":{s.ckpt}" if s.ckpt else "") for s in specs})
        run_id = log_run(out, params, summary, run_name=out.name, experiment=args.experiment)
        print(f"MLflow run {run_id} in {tracking_uri()} (experiment {args.experiment})")
    return written


# ------------------------------------------------------------------------------------------------ files


def write_csv(path: Path, table: pd.DataFrame) -> Path:
    """Write ``table`` as CSV: no index, CRLF row ends (RFC 4180, like the ``csv`` module), NaN as ``nan``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, na_rep="nan", lineterminator="\r\n")
    return path


def _numbers(table: pd.DataFrame, spec: str) -> dict[str, Callable[[Any], str]]:
    """Every column's floats written with ``spec``, other values with ``str``."""

    def cell(value: Any) -> str:
        return format(value, spec) if isinstance(value, float) else str(value)

    return {column: cell for column in table.columns}


def write_table(path: Path, table: pd.DataFrame, c: float) -> Path:
    """``radius_table.md``: the formulas, then the per-group table (ratio column only when comparing runs)."""
    cols = ["run", "source", "group", "images", "tokens", "rad_mean", "rad_std", "ball_norm_mean", "norm_radius_mean"]
    cols += ["rad_mean_ratio_to_first"] if table["run"].nunique() > 1 else []
    lines = [f"# Hyperbolic radius of visual tokens (c = {c})", ""]
    lines += [f"- `{q}`: {FORMULAS[q]}" for q in QUANTITIES]
    lines += [
        "- means and std over all tokens of the group's images; `rad_mean_ratio_to_first`: rad_mean over the "
        "first run's rad_mean for the same source and group",
        "",
    ]
    body = markdown_table(table[cols], _numbers(table[cols], ".4f"), na_rep="nan")
    path.write_text("\n".join(lines) + "\n" + body + "\n")
    return path


def write_reliability(path: Path, table: pd.DataFrame, note: str) -> Path:
    """``reliability.md``: a title, one paragraph explaining the bins, and the table (empty cells for NaN)."""
    body = markdown_table(table, _numbers(table, ".4g"), na_rep="")
    path.write_text(f"# Accuracy per radius quantile bin\n\n{note}\n\n{body}\n")
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")
    return path


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------ MLflow

_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metric_key(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric name replaced by ``_``."""
    return _BAD.sub("_", name)


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``<run>/<source>/<quantity>_mean`` (group ``all``, token mean) plus image and skip counts, per run."""
    metrics: dict[str, float] = {}
    for run, entry in summary["runs"].items():
        key = metric_key(run)
        metrics[f"{key}/images"] = float(entry["counts"]["images"])
        metrics[f"{key}/skipped_text_only"] = float(entry["counts"]["skipped_text_only"])
        for source, per in entry["groups"].get("all", {}).items():
            if not isinstance(per, dict):
                continue
            for quantity, stats in per.items():
                if isinstance(stats, dict) and stats["tokens"]["mean"] == stats["tokens"]["mean"]:
                    metrics[f"{key}/{source}/{quantity}_mean"] = float(stats["tokens"]["mean"])
    return metrics


def log_run(
    out_dir: Path,
    params: dict[str, Any],
    summary: dict[str, Any],
    run_name: str,
    experiment: str = EXPERIMENT,
    metrics: dict[str, float] | None = None,
) -> str:
    """Log params, metrics (default: the summary's :func:`headline_metrics`) and every file of ``out_dir`` to a new
    MLflow run; returns its run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(headline_metrics(summary) if metrics is None else metrics)
        mlflow.log_artifacts(str(out_dir))
        return run.info.run_id
