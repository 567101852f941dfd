"""Writing one analysis's files (CSV, JSON, PNGs, reliability table) and logging them to MLflow."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_hyperet.radius import plots, reliability, report
from lit_hyperet.radius.compute import FORMULAS
from lit_hyperet.radius.records import RunResult
from lit_hyperet.radius.runs import RunSpec

DEFAULT_GROUP_BY = ("subject", "grade_band")


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
    header, rows = report.image_rows(results)
    written["images_csv"] = report.write_csv(out / report.IMAGES_CSV, header, rows)
    summary = report.summary(results, conf, group_by)
    table = report.group_rows(summary)
    written["groups_csv"] = report.write_csv(out / report.GROUPS_CSV, list(report.GROUP_COLUMNS), table)
    written["table_md"] = report.write_table(out / report.TABLE_MD, table, args.curvature)
    layers = sorted({str(r.model.get("layer")) for r in results})
    title = (
        f"{plots.LABELS[args.plot_quantity]} of visual tokens (c = {args.curvature}, layer {', '.join(layers)}, "
        f"{args.split})"
    )
    written["plot"] = plots.plot_radius(results, out / plots.RADIUS_PNG, args.plot_quantity, group_by[0], title)
    if args.with_accuracy:
        rows_rel = reliability.reliability_rows(results, args.bins, "vision", args.bin_quantity)
        written["reliability_csv"] = report.write_csv(
            out / reliability.RELIABILITY_CSV, list(reliability.COLUMNS), rows_rel
        )
        note = (
            f"Images sorted by their mean vision-token `{args.bin_quantity}` "
            f"({FORMULAS[args.bin_quantity]}) and split into {args.bins} equal-count bins per run; accuracy of "
            "the greedy answer (ScienceQA answer extraction) per bin. `text-only`: samples without an image."
        )
        written["reliability_md"] = reliability.write_markdown(out / reliability.RELIABILITY_MD, rows_rel, note)
        written["reliability_plot"] = plots.plot_reliability(rows_rel, out / plots.RELIABILITY_PNG)
        summary["reliability"] = rows_rel
    written["summary_json"] = report.write_json(out / report.SUMMARY_JSON, summary)
    if not args.no_mlflow:
        from lit_hyperet.radius.tracking import log_run, tracking_uri

        params = {k: v for k, v in conf.items() if k != "runs"}
        params.update({f"run/{s.name}": ",".join(s.configs) + (f":{s.ckpt}" if s.ckpt else "") for s in specs})
        run_id = log_run(out, params, summary, run_name=out.name, experiment=args.experiment)
        print(f"MLflow run {run_id} in {tracking_uri()} (experiment {args.experiment})")
    return written
