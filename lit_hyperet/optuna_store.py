"""Where Optuna studies live and how a sweep's trial finds its own: storage URLs, the environment a trial process
gets, pruners (torch-free, so the sweep imports it without the model stack)."""

from __future__ import annotations

import fcntl
import warnings
from typing import Any

import optuna

from lit_hyperet.user_errors import ConfigError

#: The sweep tells a trial's process its Optuna storage URL, study name and trial id through these.
STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "LIT_HYPERET_SWEEP_STORAGE", "LIT_HYPERET_SWEEP_STUDY", "LIT_HYPERET_SWEEP_TRIAL"
PRUNED_ATTR = "pruned_at_step"  # a trial's user attribute: the global step at which it was pruned


class LockedSQLiteStorage(optuna.storages.RDBStorage):
    """sqlite storage handing out queued trials under a file lock (PostgreSQL locks the row, sqlite does not)."""

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        with open(self.url.removeprefix("sqlite:///") + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            return super().set_trial_state_values(trial_id, state, values)


def open_storage(url: str, heartbeat: float | None = None) -> optuna.storages.BaseStorage:
    """``journal:PATH`` (Optuna's journal file, no heartbeat) or an SQLAlchemy URL; RDB storages get a heartbeat every
    ``heartbeat`` seconds, and a trial whose process stopped beating is failed and queued again."""
    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:")))
    sqlite, beat = url.startswith("sqlite:///"), {}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                beat = {"heartbeat_interval": max(1, round(heartbeat)), "grace_period": max(2, round(2 * heartbeat))}
                beat["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback()
            engine = {"connect_args": {"timeout": 60}} if sqlite else {}
            return (LockedSQLiteStorage if sqlite else optuna.storages.RDBStorage)(url, engine_kwargs=engine, **beat)
    except Exception as err:  # noqa: BLE001 - sqlalchemy's many errors for a URL it cannot use
        raise ConfigError(f"--storage {url}: cannot open the Optuna storage: {err}") from err


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median``: stop a trial below the median of the completed trials at a validation step; ``none``: never."""
    return optuna.pruners.MedianPruner(n_startup_trials=1) if name == "median" else optuna.pruners.NopPruner()
