"""The warm-up + cosine schedule, step by step, as a real ``fit`` applies it (read back from MLflow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lit_hyperet.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 6, 3


def expected_factor(step: int) -> float:
    """Linear warm-up over WARMUP steps to the peak, then half a cosine to 0 at STEPS."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def test_fit_runs_the_schedule_from_the_first_warmup_value(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    peak = 1e-2
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--model.init_args.model.init_args.path",
            str(tiny_model_dir),
            "--data.init_args.data_dir",
            str(demo_data_dir),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
            "--trainer.max_steps",
            str(STEPS),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--model.init_args.hyperet_lr",
            str(peak),
            "--model.init_args.lr_scheduler.init_args.warmup",
            str(WARMUP / STEPS),  # a fraction of the run, as the configs give it: known only once fit starts
        ]
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "lr-AdamW/hyperet_no_decay")  # M of diagonal HyperET is 1-D
    logged = {m.step: m.value for m in history}
    assert sorted(logged) == list(range(STEPS))
    for step, value in logged.items():
        assert value == pytest.approx(peak * expected_factor(step), rel=1e-6), step
