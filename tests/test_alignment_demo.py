"""The alignment demo config from a fresh directory: tiny BLIP-2 and caption data created on first use, a few steps
of training, retrieval metrics on the console and in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lit_hyperet.__main__ import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "alignment_demo.yaml"


def test_alignment_demo_creates_its_model_and_data_and_reports_retrieval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["fit", "--config", str(CONFIG), "--trainer.max_steps", "3", "--trainer.val_check_interval", "3"]
    args += [
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
    ]
    assert main(args) == 0
    assert (tmp_path / "outputs" / "tiny_blip2_itm" / "config.json").is_file()
    assert (tmp_path / "outputs" / "caption_demo" / "dataset_demo.json").is_file()
    assert (tmp_path / "outputs" / "alignment_demo" / "checkpoints" / "last.ckpt").is_file()
    title, header, values = capsys.readouterr().out.strip().splitlines()[-3:]
    assert title.startswith("val results at step 3")
    assert header.split()[:7] == ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"]
    assert all(0.0 <= float(v) <= 100.0 for v in values.split()[:7])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name.startswith("alignment_demo-fit-")
    # MLflow stores recall without "@" (it refuses the character in metric names)
    assert {"val/i2t_R1", "val/t2i_R10", "val/r_mean", "val/radius_image_mean", "train/loss"} <= set(run.data.metrics)


def test_euclidean_and_poincare_cosine_train_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cos(exp0 u, exp0 v) = cos(u, v): the same seed trained with BLIP-2's Euclidean ITC and with the paper's
    Poincaré-cosine recipe gives retrieval metrics within one evaluation item (57 validation images, 228 captions)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = {}
    for space in ("euclidean", "poincare_cosine"):
        args = ["fit", "--config", str(CONFIG), "--trainer.max_steps", "20", "--trainer.val_check_interval", "20"]
        args += ["--trainer.enable_progress_bar", "false", "--model.init_args.space", space]
        args += ["--trainer.logger.init_args.run_name", space, "--checkpoint.dirpath", str(tmp_path / space)]
        assert main(args) == 0
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        (run,) = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], filter_string=f"attributes.run_name = '{space}'"
        )
        metrics[space] = {k: v for k, v in run.data.metrics.items() if "_R" in k}
    assert set(metrics["euclidean"]) == set(metrics["poincare_cosine"]) and metrics["euclidean"]
    for name, value in metrics["euclidean"].items():
        one_item = 100.0 / (57 if name.startswith("val/i2t") else 228)
        assert abs(value - metrics["poincare_cosine"][name]) <= one_item + 1e-9, name
