"""The Optuna study of a sweep: its storage, the grid, and the queue of trials still to run.

The grid is a :class:`~optuna.samplers.GridSampler` over ``config`` (the configuration names) × ``seed``. Trials are
queued (``enqueue_trial``) in the sweep's spread-out order, and workers take them from the queue, which the storage
hands out once each: two workers never run the same grid point. A point counts as done when a trial of it completed
or was pruned; a failed point is queued again by the next ``sweep FILE`` run. On RDB storages a worker's heartbeat
marks its running trials; a trial whose worker died (SIGKILL, a lost node) is failed and queued again by the first
worker that notices (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import fcntl
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_hyperet.sweep.spec import Sweep, SweepError, Trial, definition_digest

if TYPE_CHECKING:
    import optuna

CONFIG_PARAM, SEED_PARAM = "config", "seed"
#: Study user attribute holding the MLflow parent run of the sweep.
PARENT_ATTR = "mlflow_parent_run_id"
JOURNAL_PREFIX = "journal:"
DONE = ("COMPLETE", "PRUNED")
ACTIVE = ("RUNNING", "WAITING")


def default_storage(mlflow_uri: str) -> str:
    """``sqlite:///…/optuna.db`` beside a sqlite MLflow store, else ``sqlite:///optuna.db`` in the working dir."""
    if mlflow_uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(mlflow_uri.removeprefix("sqlite:///")).with_name("optuna.db"))
    return "sqlite:///optuna.db"


def open_storage(url: str, heartbeat: float | None = None) -> optuna.storages.BaseStorage:
    """``journal:PATH`` (a journal file on a shared filesystem) or an SQLAlchemy URL (sqlite, PostgreSQL, …); RDB
    storages get a heartbeat every ``heartbeat`` seconds (trials silent for twice that are failed and retried)."""
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        path = url.removeprefix(JOURNAL_PREFIX)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    sqlite = url.startswith("sqlite:///")
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return (_locked_sqlite_storage() if sqlite else optuna.storages.RDBStorage)(
                url,
                engine_kwargs=engine,
                heartbeat_interval=max(1, round(heartbeat)) if heartbeat else None,
                grace_period=max(2, round(2 * heartbeat)) if heartbeat else None,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback()
                if heartbeat
                else None,
            )
    except Exception as err:  # noqa: BLE001 - sqlalchemy's many errors for a URL it cannot use
        raise SweepError(f"--storage {url}: cannot open the Optuna storage: {err}") from err


def _locked_sqlite_storage() -> type:
    import optuna

    class LockedSQLiteStorage(optuna.storages.RDBStorage):
        """RDBStorage whose trial state changes hold an exclusive lock on a file beside the sqlite database.

        Taking a queued trial reads its state and sets it to RUNNING; PostgreSQL and MySQL lock the row (``SELECT …
        FOR UPDATE``), sqlite does not, so two workers could both take the same trial. The lock makes the change
        atomic for every worker on this machine (the lock, like sqlite itself, needs a local filesystem).
        """

        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            database = Path(self.url.removeprefix("sqlite:///"))
            with open(database.with_name(database.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    return super().set_trial_state_values(trial_id, state, values)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    return LockedSQLiteStorage


def _queued_grid_sampler() -> type:
    import optuna

    class QueuedGridSampler(optuna.samplers.GridSampler):
        """The grid, its points handed out by the queue. ``GridSampler.after_trial`` would stop the study once every
        point has been tried (a failed point counts as tried, yet the sweep queues it again) and expects a grid id
        that queued trials do not carry; the sweep stops when the queue is empty instead."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return QueuedGridSampler


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The sweep file's ``pruner``: ``median`` stops a trial whose value at a validation step is below the median
    of the completed trials' values at that step (from the first completed trial on); ``none`` never prunes."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def study_name(sweep: Sweep, trials: list[Trial]) -> str:
    """``<sweep name>-<digest of its trials' commands and config files>``."""
    return f"{sweep.name}-{definition_digest(sweep, trials)}"


def open_study(sweep: Sweep, trials: list[Trial], storage: optuna.storages.BaseStorage, create: bool) -> optuna.Study:
    """The sweep's study (created when ``create``; a worker only joins one that exists)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints each trial's outcome itself
    labels = list(dict.fromkeys(t.config_name for t in trials))
    sampler = _queued_grid_sampler()({CONFIG_PARAM: labels, SEED_PARAM: sweep.seeds}, seed=0)
    pruner = make_pruner(sweep.pruner)
    name = study_name(sweep, trials)
    direction = "minimize" if sweep.metric and "loss" in sweep.metric else "maximize"
    if create:
        return optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        )
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError as err:
        raise SweepError(
            f"sweep {sweep.path}: no study {name!r} in the storage yet: run or `--prepare` the sweep first, with the "
            "same --override/--config options and --storage"
        ) from err


def point(frozen: optuna.trial.FrozenTrial) -> tuple[str, int | None] | None:
    """The grid point ``(configuration, seed)`` of a queued trial (``None`` for a trial that was not queued)."""
    params = frozen.system_attrs.get("fixed_params") or frozen.params
    if CONFIG_PARAM not in params:
        return None
    return params[CONFIG_PARAM], params.get(SEED_PARAM)


def latest_by_point(study: optuna.Study) -> dict[tuple[str, int | None], list[optuna.trial.FrozenTrial]]:
    """Each grid point's trials, oldest first."""
    out: dict[tuple[str, int | None], list[optuna.trial.FrozenTrial]] = {}
    for frozen in study.get_trials(deepcopy=False):
        key = point(frozen)
        if key is not None:
            out.setdefault(key, []).append(frozen)
    return out


def queue(study: optuna.Study, trials: list[Trial], max_trials: int | None = None) -> tuple[list[Trial], int]:
    """Queue the trials not done, running or queued (failed ones again), at most ``max_trials`` of them in run
    order; returns the queued trials and how many were already done."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of a worker that died: failed, and queued again
    by_point = latest_by_point(study)
    states = {key: {t.state.name for t in found} for key, found in by_point.items()}
    done = [t for t in trials if states.get((t.config_name, t.seed), set()) & set(DONE)]
    pending = [t for t in trials if not states.get((t.config_name, t.seed), set()) & {*DONE, *ACTIVE}]
    chosen = pending if max_trials is None else pending[: max(0, max_trials)]
    for trial in chosen:
        study.enqueue_trial({CONFIG_PARAM: trial.config_name, SEED_PARAM: trial.seed})
    return chosen, len(done)


def waiting(study: optuna.Study) -> int:
    """How many queued trials no worker has taken yet."""
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
