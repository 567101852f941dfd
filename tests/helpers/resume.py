"""A one-process ``fit`` in a subprocess for the kill-and-resume tests: checkpoints every few steps, each step's loss
and the final trainable tensors written to ``out/ranks`` (:class:`helpers.rank_state.SaveTrainableStatePerRank`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def fit_command(config: Path, out: Path, steps: int, checkpoint_every: int) -> list[str]:
    """``python -m lit_hyperet fit`` of ``config`` for ``steps`` steps into ``out``, without validation, logging every
    step, a checkpoint (``out/ckpt/last.ckpt``) every ``checkpoint_every`` steps."""
    command = [sys.executable, "-m", "lit_hyperet", "fit", "--config", str(config), "--trainer.default_root_dir"]
    command += [str(out), "--checkpoint.dirpath", str(out / "ckpt"), "--trainer.max_steps", str(steps)]
    command += ["--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1"]
    command += ["--checkpoint.every_n_train_steps", str(checkpoint_every), "--trainer.enable_progress_bar", "false"]
    command += ["--trainer.callbacks+=helpers.rank_state.SaveTrainableStatePerRank"]
    return [*command, f"--trainer.callbacks.out_dir={out / 'ranks'}"]


def run_fit(command: list[str], out: Path, killed: bool = False) -> None:
    """Run ``command`` in ``out`` (MLflow's store beside it); it must finish, or with ``killed`` die by SIGKILL."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent / 'mlflow.db'}"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    if killed:
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]


def assert_resume_matches(runs: dict[str, Path], kill_after: int, steps: int) -> dict[str, Any]:
    """The ``killed`` run died after its step-``kill_after`` checkpoint; the ``resumed`` run's losses from there on and
    its final trainable tensors equal the ``uninterrupted`` run's, bit for bit. Returns the killed run's checkpoint."""
    uninterrupted = torch.load(runs["uninterrupted"] / "ranks" / "rank0.pt", weights_only=True)
    resumed = torch.load(runs["resumed"] / "ranks" / "rank0.pt", weights_only=True)
    assert not (runs["killed"] / "ranks").exists()  # the killed run never reached the end of fit
    checkpoint = torch.load(runs["killed"] / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == kill_after
    assert sorted(resumed["losses"]) == list(range(kill_after + 1, steps + 1))
    for step, loss in resumed["losses"].items():
        assert torch.equal(loss, uninterrupted["losses"][step]), step
    assert uninterrupted["state"].keys() == resumed["state"].keys()
    for name, value in uninterrupted["state"].items():
        assert torch.equal(resumed["state"][name], value), name
    return checkpoint
