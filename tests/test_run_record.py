"""What a researcher sees of a run: the results on the console, last.ckpt always the latest run, MLflow runs that
can be told apart (names, tags linking a test to its fit) and parameters that are the values used."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.demo_cli import demo_args
from mlflow.tracking import MlflowClient

from lit_hyperet.__main__ import main
from lit_hyperet.progress import StepProgressBar


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two fits into one checkpoint dir (2 steps, then 3), then a test of last.ckpt; captured stdout and stderr."""
    out = tmp_path_factory.mktemp("run_record")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    patch.chdir(out)
    base = [*demo_args(tiny_model_dir, demo_data_dir, out), "--trainer.limit_val_batches", "1"]
    base += ["--data.init_args.eval_batch_size", "4", "--trainer.limit_test_batches", "1"]
    results: dict[str, Any] = {"out": out, "base": base}
    try:
        for steps in ("2", "3"):
            assert main(["fit", *base, "--trainer.max_steps", steps, "--trainer.val_check_interval", "2"]) == 0
        results["last_ckpt"] = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["test", *base, "--ckpt_path", str(out / "checkpoints" / "last.ckpt")]) == 0
        results["test_output"] = printed.getvalue()
    finally:
        patch.undo()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    results["runs"] = sorted(client.search_runs(experiments), key=lambda r: r.info.start_time)
    return results


def test_last_ckpt_is_the_latest_run(runs: dict[str, Any]) -> None:
    checkpoints = sorted(p.name for p in (runs["out"] / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]
    assert runs["last_ckpt"]["global_step"] == 3


def test_runs_are_named_by_config_and_stage_and_a_test_names_its_fit(runs: dict[str, Any]) -> None:
    first, second, test = runs["runs"]
    assert [r.info.run_name.rsplit("-", 1)[0] for r in runs["runs"]] == ["demo-fit", "demo-fit", "demo-test"]
    assert len({r.info.run_name for r in runs["runs"]}) == 3
    assert [r.data.tags["stage"] for r in runs["runs"]] == ["fit", "fit", "test"]
    assert test.data.tags["fit_run_id"] == second.info.run_id
    assert test.data.tags["checkpoint"].endswith("last.ckpt")
    assert first.data.tags["config_hash"] != second.data.tags["config_hash"]  # max_steps differs
    assert runs["last_ckpt"]["mlflow_run_id"] == second.info.run_id


def test_test_results_name_the_checkpoint_and_its_step(runs: dict[str, Any]) -> None:
    title = next(line for line in runs["test_output"].splitlines() if line.startswith("test results"))
    assert title.startswith(f"test results at step 3 · weights: {runs['out'] / 'checkpoints' / 'last.ckpt'}")


def test_params_are_the_values_used(runs: dict[str, Any]) -> None:
    fit = runs["runs"][1].data.params
    assert not [key for key in fit if key.startswith("_") or "/_" in key]
    assert "optimizer/init_args/lr" not in fit and "optimizer/init_args/weight_decay" not in fit
    assert fit["hyperet_lr"] == "0.01" and fit["weight_decay"] == "0.0"
    assert "hyperet/band_width" not in fit and fit["hyperet/variant"] == "diagonal"  # the demo's diagonal run
    assert fit["data/batch_size"] == "16" and fit["data/prompt_format"] == "QCM-A"
    assert fit["trainer/max_steps"] == "3" and fit["lr_scheduler/total_steps_resolved"] == "3"
    assert int(fit["params/trainable"]) > 0


def test_results_are_printed_with_weights_and_run(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["validate", *demo_args(tiny_model_dir, demo_data_dir, tmp_path), "--trainer.limit_val_batches", "1"]
    assert main([*args, "--data.init_args.eval_batch_size", "4"]) == 0
    captured = capsys.readouterr()
    assert "validate without --ckpt_path evaluates the model as configured" in captured.err
    title, header, values = captured.out.strip().splitlines()[-3:]
    assert title.startswith("val results at step 0 · weights: none given") and "MLflow run " in title
    assert header.split() == ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg"]
    assert len(values.split()) == 9


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "batches", "accumulate", "expected"),
    [(-1, 450, 45, 1, 9), (-1, 450, 45, 2, 19), (3, -1, 45, 1, 2), (3, 450, 45, 1, 2), (-1, -1, 45, 1, "?")],
)
def test_the_progress_bar_counts_the_epochs_the_run_reaches(
    max_epochs: int, max_steps: int, batches: int, accumulate: int, expected: int | str
) -> None:
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(  # the attributes Lightning's Trainer exposes to progress bars
        max_epochs=max_epochs, max_steps=max_steps, num_training_batches=batches, accumulate_grad_batches=accumulate
    )
    assert bar.last_epoch() == expected


def test_config_hash_ignores_where_outputs_go_and_what_is_loaded() -> None:
    from lit_hyperet.run_record import config_hash

    fit = {"model": {"init_args": {"hyperet_lr": 0.01}}, "trainer": {"max_steps": 3, "default_root_dir": "a"}}
    test = {**fit, "trainer": {"max_steps": 3, "default_root_dir": "b"}, "ckpt_path": "x.ckpt", "verbose": False}
    assert config_hash(fit) == config_hash(test)
    assert config_hash(fit) != config_hash({**fit, "model": {"init_args": {"hyperet_lr": 0.02}}})


def test_run_names_leave_strategy_configs_out() -> None:
    from lit_hyperet.run_record import default_run_name

    name = default_run_name(["configs/scienceqa/base.yaml", "encoders/clip.yaml", "configs/strategy/fsdp.yaml"], "fit")
    assert name.rsplit("-", 1)[0] == "base+clip-fit" and len(name.rsplit("-", 1)[1]) == 6
