"""A non-finite loss or gradient norm never ends as a successful run: it stops with a message naming the step (exit 1,
MLflow run FAILED), or, with ``non_finite: skip``, the step's update is dropped and counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lit_hyperet.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _helpers_importable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # the poisoning callbacks, named by class path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def fit(tiny_model_dir: Path, data_dir: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml")]
    args += ["--model.init_args.model.init_args.path", str(tiny_model_dir), "--data.init_args.data_dir", str(data_dir)]
    args += ["--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "ckpt")]
    args += ["--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.run_name", out.name, *extra]
    return main(args)


def mlflow_run(tmp_path: Path, name: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run


def trainable_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]


def test_diverging_run_stops_with_the_step_and_a_failed_mlflow_run(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    lrs = [f"--model.init_args.{k}_lr=1e6" for k in ("hyperet", "projector", "lora")]
    assert fit(tiny_model_dir, demo_data_dir, tmp_path / "diverging", 6, *lrs) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss (nan) at step ") and "non_finite: skip" in err
    assert mlflow_run(tmp_path, "diverging").info.status == "FAILED"


@pytest.mark.parametrize(
    ("poison", "extra"),
    [("PoisonBatch", []), ("PoisonGradient", ["--trainer.gradient_clip_val", "1.0"])],
    ids=["loss", "gradient_norm"],
)
def test_skip_drops_the_update_and_counts_it(
    poison: str, extra: list[str], tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    """Step 1 of a 2-step run is poisoned and skipped: the weights are those of a clean 1-step run (same lr at
    step 0, 0 warm-up steps in both), the run finishes and logs one skipped step."""
    callback = [f"--trainer.callbacks+=helpers.poison.{poison}", "--trainer.callbacks.step=1", *extra]
    stopped = tmp_path / "stopped"
    assert fit(tiny_model_dir, demo_data_dir, stopped, 2, *callback) == 1  # the default policy stops
    assert mlflow_run(tmp_path, "stopped").info.status == "FAILED"
    skipped = tmp_path / "skipped"
    assert fit(tiny_model_dir, demo_data_dir, skipped, 2, *callback, "--model.init_args.non_finite", "skip") == 0
    clean = tmp_path / "clean"
    assert fit(tiny_model_dir, demo_data_dir, clean, 1, *extra) == 0
    expected, got = trainable_state(clean), trainable_state(skipped)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    run = mlflow_run(tmp_path, "skipped")
    assert run.info.status == "FINISHED" and run.data.metrics["train/skipped_non_finite_steps"] == 1
    assert torch.load(skipped / "ckpt" / "last.ckpt", weights_only=True)["non_finite_skipped_steps"] == 1
