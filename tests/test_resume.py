"""A fit killed (SIGKILL) after a checkpoint and resumed with ``--ckpt_path`` ends where the uninterrupted fit ends:
same loss at every step and same final trainable weights, bit for bit on CPU in float32, including a resume in the
middle of a shuffled epoch and across the next epoch boundary, and in the middle of the lr warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.resume import ROOT, assert_resume_matches, fit_command, run_fit

STEPS = 8  # 72 training problems in batches of 16: 5 steps per epoch, so the run crosses into a second epoch
KILL_AFTER = 2  # mid-epoch
WARMUP = 4  # steps: the resumed run goes on inside the lr warm-up and crosses into the cosine decay


def fit(tiny_model_dir: Path, data_dir: Path, out: Path, *extra: str, killed: bool = False) -> None:
    command = fit_command(ROOT / "configs" / "demo.yaml", out, STEPS, KILL_AFTER)
    command += ["--model.init_args.model.init_args.path", str(tiny_model_dir), "--data.init_args.data_dir"]
    command += [str(data_dir), "--model.init_args.lr_scheduler.init_args.warmup", str(WARMUP / STEPS), *extra]
    run_fit(command, out, killed)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("resume")
    fit(tiny_model_dir, demo_data_dir, base / "uninterrupted")
    kill = ["--trainer.callbacks+=helpers.rank_state.KillAtStep", f"--trainer.callbacks.step={KILL_AFTER}"]
    fit(tiny_model_dir, demo_data_dir, base / "killed", *kill, killed=True)
    last = base / "killed" / "ckpt" / "last.ckpt"
    name = ["--trainer.logger.init_args.run_name", "resumed-run"]
    fit(tiny_model_dir, demo_data_dir, base / "resumed", "--ckpt_path", str(last), *name)
    return {"base": base, **{name: base / name for name in ("uninterrupted", "killed", "resumed")}}


def test_killed_and_resumed_fit_ends_where_the_uninterrupted_fit_ends(runs: dict[str, Path]) -> None:
    assert_resume_matches(runs, KILL_AFTER, STEPS)
    ends = [torch.load(runs[name] / "ckpt" / "last.ckpt", weights_only=True) for name in ("uninterrupted", "resumed")]
    assert ends[0]["lr_schedulers"] == ends[1]["lr_schedulers"]  # the lr schedule ends in the same state


def test_checkpoint_every_n_steps_updates_last_and_resume_keeps_the_run_name(runs: dict[str, Path]) -> None:
    import mlflow

    checkpoint = torch.load(runs["uninterrupted"] / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs['base'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lit_hyperet_demo")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert "resumed-run" in names
