"""Optuna storages: the journal file gets the heartbeat RDB storages have: a killed worker's trial is queued again."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lit_hyperet.optuna_store import BEAT_ATTR, open_storage


def _fail_stale(url: str) -> optuna.Study:
    """What another worker (its own storage object) does before asking for a trial; the study as it then sees it."""
    study = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return study


def test_journal_heartbeat_keeps_a_running_trial_and_requeues_a_silent_one(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'optuna.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=1))
    seen: dict[str, TrialState] = {}

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int("x", 0, 9)
        time.sleep(3)  # longer than the 2 s grace: only the heartbeat keeps the trial running
        seen["while running"] = _fail_stale(url).trials[trial.number].state
        return 1.0

    study.optimize(objective, n_trials=1)
    assert seen["while running"] == TrialState.RUNNING and study.trials[0].state == TrialState.COMPLETE
    assert BEAT_ATTR in study.trials[0].system_attrs

    study.enqueue_trial({"x": 3})  # as the sweep queues its grid points
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() outside optimize() starts no heartbeat
        silent = study.ask()  # a worker that died: it never beats
    silent.suggest_int("x", 0, 9)
    assert [t.state for t in _fail_stale(url).trials] == [TrialState.COMPLETE, TrialState.RUNNING]  # within grace
    time.sleep(2.5)
    after = _fail_stale(url).trials
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert after[2].system_attrs["fixed_params"] == {"x": 3}  # queued again with its grid point
