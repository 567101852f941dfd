"""The evaluation results on the console: after ``validate`` / ``test`` and at the end of ``fit``."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import pandas as pd
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from lit_hyperet.run_record import mlflow_loggers


def stage_metrics(metrics: dict[str, Any], stage: str) -> dict[str, float]:
    """The ``stage/<name>`` metrics (not ``stage/<group>/<name>``, e.g. the 26 ScienceQA topics), in logging order."""
    prefix = f"{stage}/"
    return {
        key[len(prefix) :]: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and "/" not in key[len(prefix) :]
    }


def results_text(stage: str, metrics: dict[str, float], weights: str, run: str | None, step: int | None) -> str:
    """A title line naming the training step the weights come from (when known), the weights and the MLflow run,
    then the metrics (percent) in one table."""
    at = f" at step {step}" if step is not None else ""
    title = f"{stage} results{at} · weights: {weights}" + (f" · MLflow run {run}" if run else "")
    if not metrics:
        return f"{title}\n  (no {stage} metrics were logged)"
    table = pd.DataFrame([metrics]).to_string(index=False, float_format="{:.2f}".format)
    return title + "\n" + "\n".join("  " + line for line in table.splitlines())


class ResultsTable(Callback):
    """Prints the metrics of the evaluation that just ended (rank 0 only): after ``validate`` and ``test``, and the
    last validation at the end of ``fit``, with the checkpoint evaluated (or that none was: the model as configured)
    and the MLflow run the numbers were logged to."""

    def __init__(self, stream: TextIO | None = None, checkpoint_step: int | None = None) -> None:
        """``checkpoint_step``: the training step of the checkpoint an evaluation loads (``--ckpt_path``)."""
        self.stream = stream
        self.checkpoint_step = checkpoint_step
        self.validated_at: int | None = None  # the step of fit's last validation

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._print(trainer, "val", _evaluated_weights(trainer), self._evaluated_step(trainer))
        else:
            self.validated_at = trainer.global_step

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, "test", _evaluated_weights(trainer), self._evaluated_step(trainer))

    def _evaluated_step(self, trainer: Trainer) -> int | None:
        """The checkpoint's training step, 0 for the model as configured."""
        return self.checkpoint_step if trainer.ckpt_path else 0

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if stage_metrics(trainer.callback_metrics, "val"):
            callback = trainer.checkpoint_callback
            last = getattr(callback, "last_model_path", "") if callback is not None else ""
            weights = f"this run's (last checkpoint: {last})" if last else "this run's"
            self._print(trainer, "val", weights, self.validated_at)

    def _print(self, trainer: Trainer, stage: str, weights: str, step: int | None) -> None:
        if not trainer.is_global_zero:
            return
        metrics = stage_metrics(trainer.callback_metrics, stage)
        text = results_text(stage, metrics, weights, _mlflow_run(trainer), step)
        print(text, file=self.stream or sys.stdout, flush=True)


def _evaluated_weights(trainer: Trainer) -> str:
    if trainer.ckpt_path:
        return str(trainer.ckpt_path)
    return "none given: the model as configured (adapters at their initial values); pass --ckpt_path to evaluate a run"


def _mlflow_run(trainer: Trainer) -> str | None:
    loggers = mlflow_loggers(trainer)
    return loggers[0].run_id if loggers else None
