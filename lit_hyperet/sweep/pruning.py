"""Pruning from inside a trial: a Lightning callback that reports the monitored validation metric to the trial's
Optuna trial and stops training when the study's pruner says the trial has fallen behind.

Written here rather than taken from ``optuna_integration.PyTorchLightningPruningCallback``: that callback reports at
the *epoch* (a step-based run validates several times within epoch 0, and Optuna keeps only the first value of a
step) and raises ``TrialPruned`` out of ``trainer.fit``, which ends the CLI process like a crash. This one reports at
the global step and stops the fit cleanly; the sweep reads the trial's ``pruned_at_step`` attribute afterwards.
The sweep passes the storage, study and trial in the environment, so the callback's config (and the run's config
hash) is the same for every trial.
"""

from __future__ import annotations

import os
import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "LIT_HYPERET_SWEEP_STORAGE", "LIT_HYPERET_SWEEP_STUDY", "LIT_HYPERET_SWEEP_TRIAL"
PRUNED_ATTR = "pruned_at_step"


def monitored(metric: str | None) -> str:
    """The validation metric that pruning watches for a sweep's main metric (``test/X`` is watched as ``val/X``)."""
    return "val/" + (metric or "val/Avg").split("/", 1)[-1]


class OptunaPruning(Callback):
    """Reports ``monitor`` after each validation (rank 0) and stops the fit when the trial should be pruned.

    Args:
        monitor: the logged validation metric, e.g. ``val/Avg``.
        pruner: the sweep file's ``pruner`` (the storage does not keep it).
    """

    def __init__(self, monitor: str = "val/Avg", pruner: str = "median") -> None:
        self.monitor, self.pruner = monitor, pruner
        self._trial = None

    def _optuna_trial(self):  # noqa: ANN202 - optuna is imported lazily
        if self._trial is None:
            import optuna

            from lit_hyperet.sweep.study import make_pruner, open_storage

            missing = [name for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV) if not os.environ.get(name)]
            if missing:
                raise RuntimeError(f"OptunaPruning runs inside sweep trials only ({', '.join(missing)} not set)")
            storage = open_storage(os.environ[STORAGE_ENV])
            study = optuna.load_study(
                study_name=os.environ[STUDY_ENV], storage=storage, pruner=make_pruner(self.pruner)
            )
            self._trial = optuna.Trial(study, int(os.environ[TRIAL_ENV]))
        return self._trial

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        value = trainer.callback_metrics.get(self.monitor)
        if value is None and trainer.is_global_zero:
            warnings.warn(f"pruning: the run logged no {self.monitor!r}; this validation is not reported", stacklevel=1)
        elif trainer.is_global_zero:
            trial = self._optuna_trial()
            trial.report(float(value), step=trainer.global_step)
            prune = trial.should_prune()
            if prune:
                trial.set_user_attr(PRUNED_ATTR, trainer.global_step)
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
