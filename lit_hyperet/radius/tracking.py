"""Logging one radius analysis to MLflow: parameters, headline metrics and the output folder as artifacts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lit_hyperet.mlflow_store import tracking_uri

EXPERIMENT = "lit_hyperet_radius"
_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``<run>/<source>/<quantity>_mean`` (group ``all``, token mean) plus image and skip counts, per run."""
    metrics: dict[str, float] = {}
    for run, entry in summary["runs"].items():
        key = _BAD.sub("_", run)
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
    out_dir: Path, params: dict[str, Any], summary: dict[str, Any], run_name: str, experiment: str = EXPERIMENT
) -> str:
    """Log params, headline metrics and every file of ``out_dir`` to a new MLflow run; returns its run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(headline_metrics(summary))
        mlflow.log_artifacts(str(out_dir))
        return run.info.run_id
