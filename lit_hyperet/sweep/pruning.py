"""A Lightning callback reporting a trial's validation metric to its Optuna trial (not optuna_integration's, which
reports per epoch, though a step-based run validates within epoch 0, and ends ``trainer.fit`` like a crash)."""

from __future__ import annotations

import os
import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback


class OptunaPruning(Callback):
    """Reports ``monitor`` at the global step after each validation (rank 0), stops the fit cleanly when the trial
    should be pruned and records the step; ``pruner`` is the sweep file's. Storage, study and trial: the environment."""

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

            from lit_hyperet.sweep import study as sweep_study

            if self._trial is None:
                names = (sweep_study.STORAGE_ENV, sweep_study.STUDY_ENV, sweep_study.TRIAL_ENV)
                if missing := [name for name in names if not os.environ.get(name)]:
                    raise RuntimeError(f"OptunaPruning runs inside sweep trials only ({', '.join(missing)} not set)")
                storage, pruner = sweep_study.open_storage(os.environ[names[0]]), sweep_study.make_pruner(self.pruner)
                study = optuna.load_study(study_name=os.environ[names[1]], storage=storage, pruner=pruner)
                self._trial = optuna.Trial(study, int(os.environ[names[2]]))
            self._trial.report(float(value), step=trainer.global_step)
            if prune := self._trial.should_prune():
                self._trial.set_user_attr(sweep_study.PRUNED_ATTR, trainer.global_step)
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
