"""Where Optuna studies live and how a sweep's trial finds its own: storage URLs, the environment a trial process
gets, pruners (torch-free, so the sweep imports it without the model stack)."""

from __future__ import annotations

import fcntl
import time
import warnings
from datetime import datetime
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat

from lit_hyperet.user_errors import ConfigError

#: The sweep tells a trial's process its Optuna storage URL, study name and trial id through these.
STORAGE_ENV, STUDY_ENV, TRIAL_ENV = "LIT_HYPERET_SWEEP_STORAGE", "LIT_HYPERET_SWEEP_STUDY", "LIT_HYPERET_SWEEP_TRIAL"
PRUNED_ATTR = "pruned_at_step"  # a trial's user attribute: the global step at which it was pruned
BEAT_ATTR = "heartbeat"  # a journal trial's system attribute: the time of its worker's last heartbeat


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat Optuna gives only RDB storages (written by hand for that reason):
    the worker running a trial records the time among the trial's system attributes every ``interval`` seconds, and a
    running trial silent for ``grace`` seconds is stale. The times are the workers' clocks, not a server's."""

    def __init__(
        self, backend: Any, heartbeat_interval: int, grace_period: int, heartbeat_stale_trial_callback: Any = None
    ) -> None:  # RDBStorage's names
        super().__init__(backend)
        self.interval, self.grace, self.callback = heartbeat_interval, grace_period, heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        last = {
            t._trial_id: t.system_attrs.get(BEAT_ATTR, (t.datetime_start or datetime.now()).timestamp())
            for t in running
        }
        return [trial_id for trial_id, beat in last.items() if time.time() - beat > self.grace]

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self.callback


class LockedSQLiteStorage(optuna.storages.RDBStorage):
    """sqlite storage handing out queued trials under a file lock (PostgreSQL locks the row, sqlite does not)."""

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        with open(self.url.removeprefix("sqlite:///") + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            return super().set_trial_state_values(trial_id, state, values)


def open_storage(url: str, heartbeat: float | None = None) -> optuna.storages.BaseStorage:
    """``journal:PATH`` (Optuna's journal file) or an SQLAlchemy URL, with a heartbeat every ``heartbeat`` seconds: a
    trial whose worker stopped beating for twice that is failed and queued again."""
    sqlite, beat = url.startswith("sqlite:///"), {}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                beat = {"heartbeat_interval": max(1, round(heartbeat)), "grace_period": max(2, round(2 * heartbeat))}
                beat["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback()
            if url.startswith("journal:"):
                backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
                return HeartbeatJournalStorage(backend, **beat) if beat else optuna.storages.JournalStorage(backend)
            engine = {"connect_args": {"timeout": 60}} if sqlite else {}
            return (LockedSQLiteStorage if sqlite else optuna.storages.RDBStorage)(url, engine_kwargs=engine, **beat)
    except Exception as err:  # noqa: BLE001 - sqlalchemy's many errors for a URL it cannot use
        raise ConfigError(f"--storage {url}: cannot open the Optuna storage: {err}") from err


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``median``: stop a trial below the median of the completed trials at a validation step; ``none``: never."""
    return optuna.pruners.MedianPruner(n_startup_trials=1) if name == "median" else optuna.pruners.NopPruner()
