"""Pruning inside a trial: a Lightning callback reporting the monitored validation metric to the trial's Optuna trial.

Not ``optuna_integration.PyTorchLightningPruningCallback``: that one reports at the *epoch* (a step-based run validates
several times within epoch 0, and Optuna keeps only the first value of a step) and raises ``TrialPruned`` out of
``trainer.fit``, which ends the CLI process like a crash; this one reports at the global step, stops the fit cleanly
and records the step in the trial's ``pruned_at_step`` attribute. Storage, study and trial come in the environment,
so the callback's config (and the run's config hash) is the same for every trial.
"""

from __future__ import annotations

import os
import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback


class OptunaPruning(Callback):
    """Reports ``monitor`` after each validation (rank 0) and stops the fit when the trial should be pruned;
    ``pruner`` is the sweep file's (the storage does not keep it)."""

    def __init__(self, monitor: str = "val/Avg", pruner: str = "median") -> None:
        self.monitor, self.pruner, self._trial = monitor, pruner, None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, value = False, trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero and value is None:
            warnings.warn(f"pruning: the run logged no {self.monitor!r}; this validation is not reported", stacklevel=1)
        elif trainer.is_global_zero:
            import optuna

            from lit_hyperet.sweep.study import (
                PRUNED_ATTR,
                STORAGE_ENV,
                STUDY_ENV,
                TRIAL_ENV,
                make_pruner,
                open_storage,
            )

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
