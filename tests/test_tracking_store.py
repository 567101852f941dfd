"""Two fits starting at once on a fresh sqlite MLflow store both land (the store is created under a file lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_fits_initialising_one_fresh_sqlite_store_both_land(
    tiny_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    fits = []
    for name in ("first", "second"):
        command = [sys.executable, "-m", "lit_hyperet", "fit", "--config", str(ROOT / "configs" / "demo.yaml")]
        command += ["--model.init_args.model.init_args.path", str(tiny_model_dir), "--data.init_args.data_dir"]
        command += [str(demo_data_dir), "--trainer.default_root_dir", str(tmp_path / name), "--checkpoint.dirpath"]
        command += [str(tmp_path / name / "ckpt"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
        command += ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.run_name", name]
        fits.append(subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=300)[1] for p in fits]
    assert [p.returncode for p in fits] == [0, 0], [e[-2000:] for e in errors]
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("first", "FINISHED"), ("second", "FINISHED")]
