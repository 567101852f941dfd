"""Early stopping of a sweep's trial from inside its ``fit``: a Lightning callback reporting the validation metric to
the trial's Optuna study (not optuna_integration's callback, which reports per epoch, though a step-based run
validates within epoch 0, and ends ``trainer.fit`` like a crash)."""

from __future__ import annotations

import os
import warnings

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_hyperet.optuna_store import PRUNED_ATTR, STORAGE_ENV, STUDY_ENV, TRIAL_ENV, make_pruner, open_storage


class OptunaPruning(Callback):
    """Reports ``monitor`` at the global step after each validation (rank 0) to the trial the environment names, stops
    the fit cleanly when the trial should be pruned and records the step; ``pruner`` is the sweep file's."""

    def __init__(self, monitor: str = "val/Avg", pruner: str = "median") -> None:
        self.monitor, self.pruner, self._trial = monitor, pruner, None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, value = False, trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero and value is None:
            warnings.warn(f"pruning: the run logged no {self.monitor!r}; this validation is not reported", stacklevel=1)
        elif trainer.is_global_zero:
            if self._trial is None:
                if missing := [name for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV) if not os.environ.get(name)]:
                    raise RuntimeError(f"OptunaPruning runs inside sweep trials only ({', '.join(missing)} not set)")
                storage, pruner = open_storage(os.environ[STORAGE_ENV]), make_pruner(self.pruner)
                study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=storage, pruner=pruner)
                self._trial = optuna.Trial(study, int(os.environ[TRIAL_ENV]))
            self._trial.report(float(value), step=trainer.global_step)
            if prune := self._trial.should_prune():
                self._trial.set_user_attr(PRUNED_ATTR, trainer.global_step)
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
