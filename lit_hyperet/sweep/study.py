"""A sweep's Optuna study (``GridSampler``, queue) and the workers running its trials as CLI subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient

from lit_hyperet.optuna_store import PRUNED_ATTR, STORAGE_ENV, STUDY_ENV, TRIAL_ENV, make_pruner
from lit_hyperet.sweep.spec import LOGGER_KEY, Sweep, SweepError, Trial, axis_tags, command_line, definition_digest

CONFIG_PARAM, SEED_PARAM = "config", "seed"
PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute
STOP_GRACE_S = 20.0


class QueuedGridSampler(optuna.samplers.GridSampler):
    """The grid, handed out by the queue (failed points are queued again; the sweep stops on an empty queue)."""

    def after_trial(self, *args: Any) -> None:  # GridSampler's stops once every point was tried, needs a grid id
        return None


def open_study(sweep: Sweep, trials: list[Trial], storage: optuna.storages.BaseStorage, create: bool) -> optuna.Study:
    """The sweep's study ``<name>-<digest>`` (created when ``create``; a worker only joins one that exists)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints each trial's outcome itself
    grid = {CONFIG_PARAM: list(dict.fromkeys(t.config_name for t in trials)), SEED_PARAM: sweep.seeds}
    name = f"{sweep.name}-{definition_digest(sweep, trials)}"
    kwargs = {"study_name": name, "storage": storage, "sampler": QueuedGridSampler(grid, seed=0)}
    kwargs["pruner"] = make_pruner(sweep.pruner)
    if create:
        direction = "minimize" if sweep.metric and "loss" in sweep.metric else "maximize"
        return optuna.create_study(**kwargs, direction=direction, load_if_exists=True)
    try:
        return optuna.load_study(**kwargs)
    except KeyError as err:
        raise SweepError(f"sweep {sweep.path}: no study {name!r} in the storage yet: run or `--prepare` the sweep "
                         "first, with the same --override/--config options and --storage") from err  # fmt: skip


def queue(study: optuna.Study, trials: list[Trial], max_trials: int | None = None) -> tuple[list[Trial], int]:
    """Queue up to ``max_trials`` trials not done, running or queued (failed ones again); them and how many are done."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of a worker that died: failed, and queued again
    states: dict[Any, set[str]] = {}
    for frozen in study.get_trials(deepcopy=False):
        params = frozen.system_attrs.get("fixed_params") or frozen.params
        states.setdefault((params.get(CONFIG_PARAM), params.get(SEED_PARAM)), set()).add(frozen.state.name)
    done = [t for t in trials if states.get((t.config_name, t.seed), set()) & {"COMPLETE", "PRUNED"}]
    active = {"COMPLETE", "PRUNED", "RUNNING", "WAITING"}
    pending = [t for t in trials if not states.get((t.config_name, t.seed), set()) & active]
    chosen = pending if max_trials is None else pending[: max(0, max_trials)]
    for trial in chosen:
        study.enqueue_trial({CONFIG_PARAM: trial.config_name, SEED_PARAM: trial.seed})
    return chosen, len(done)


def waiting(study: optuna.Study) -> int:
    """How many queued trials no worker has taken yet."""
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


class TrialFailed(Exception):
    """A stage of a trial failed (Optuna records the trial as failed and the sweep goes on)."""


class Interrupted(Exception):
    """The sweep was stopped by a signal while trials ran."""


LINUX = sys.platform.startswith("linux")
#: Linux: starts a trial's command after asking the kernel to SIGKILL it when the thread that started it ends, also in
#: a sweep killed by SIGKILL (PR_SET_PDEATHSIG = 1, kept across exec). Not a ``preexec_fn``: that runs between fork and
#: exec, where a sweep starting trials from several threads can crash the child.
DIE_WITH_SWEEP = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
    "os.getppid() == int(sys.argv[1]) or os._exit(137); os.execvp(sys.argv[2], sys.argv[2:])"
)


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Runner:
    """Takes queued trials of ``study`` until none is left, ``jobs`` at a time, and records each in MLflow."""

    def __init__(self, sweep: Sweep, trials: list[Trial], study: optuna.Study, storage: str, jobs: int) -> None:
        self.sweep, self.study, self.jobs, self.client = sweep, study, jobs, MlflowClient()
        self.by_point = {(t.config_name, t.seed): t for t in trials}
        self.parent_id = study.user_attrs[PARENT_ATTR]
        self.experiment_id = self.client.get_run(self.parent_id).info.experiment_id
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        self.env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} | dict(os.environ) | sweep.env
        self.env |= {"MLFLOW_TRACKING_URI": self.client.tracking_uri, "PYTHONUNBUFFERED": "1"}
        self.env |= {STORAGE_ENV: storage, STUDY_ENV: study.study_name}
        self.procs: set[subprocess.Popen] = set()
        self.stopping, self.signum, self.failed = 0, 0, False

    def run(self) -> int:
        """Run until the queue is empty; returns the exit code (1 when a trial failed, 128 + signal when stopped)."""
        if waiting(self.study) == 0:
            return 0
        main_thread = threading.current_thread() is threading.main_thread()  # only it may install handlers
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT) if main_thread}
        stop_when_empty = lambda study, _: waiting(study) or study.stop()  # noqa: E731
        try:
            self.study.optimize(self._objective, n_jobs=self.jobs, catch=(TrialFailed,), callbacks=[stop_when_empty])
        except Interrupted:
            return 128 + self.signum
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        """First signal: SIGTERM to the trials' process groups, SIGKILL after a grace period; second: SIGKILL."""
        self.stopping, self.signum = self.stopping + 1, signum
        print(f"sweep: {signal.Signals(signum).name}: stopping {len(self.procs)} running trial(s)", flush=True)
        for proc in list(self.procs):
            _signal_group(proc, signal.SIGTERM if self.stopping == 1 else signal.SIGKILL)
        if self.stopping == 1:
            timer = threading.Timer(STOP_GRACE_S, lambda: [_signal_group(p, signal.SIGKILL) for p in list(self.procs)])
            timer.daemon = True
            timer.start()

    def _objective(self, ot: optuna.Trial) -> float:
        if self.stopping:
            raise Interrupted
        if "fixed_params" not in ot._cached_frozen_trial.system_attrs:
            # Two workers asked for the last queued trial at once and this one lost: nothing to run.
            ot.set_user_attr("surplus", "the queue was empty when this worker asked; nothing ran")
            raise TrialFailed("queue empty")
        configs = list(dict.fromkeys(c for c, _ in self.by_point))
        point = ot.suggest_categorical(CONFIG_PARAM, configs), ot.suggest_categorical(SEED_PARAM, self.sweep.seeds)
        trial, seed = self.by_point[point], "" if point[1] is None else str(point[1])
        tags = axis_tags(trial) | {"mlflow.parentRunId": self.parent_id, "sweep.role": "trial", "sweep.seed": seed}
        tags |= {"sweep.name": self.sweep.name, "sweep.study": self.study.study_name, "sweep.config": trial.config_name}
        tags |= {"sweep.trial": trial.name, "optuna.trial_number": str(ot.number)}
        run_id = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags).info.run_id
        for name, value in {"mlflow_run_id": run_id, "trial_name": trial.name, "output_dir": trial.output_dir}.items():
            ot.set_user_attr(name, value)
        prefix = f"[{trial.index + 1}/{len(self.by_point)}] {trial.name} (trial {ot.number})"
        print(f"{prefix}: running (logs in {trial.output_dir})", flush=True)
        start, logs = time.monotonic(), []

        def end(outcome: str, status: str, detail: str = "", **extra: str) -> None:
            """End the MLflow run tagged ``sweep.<key>``; print the outcome, the seconds taken and ``detail``."""
            seconds = time.monotonic() - start
            for key, value in ({"outcome": outcome, "seconds": f"{seconds:.1f}"} | extra).items():
                self.client.set_tag(run_id, f"sweep.{key}", value[-5000:])  # MLflow's limit on a tag value
            self.client.set_terminated(run_id, status)
            print(f"{prefix}: {outcome} after {seconds:.1f} s{detail}", flush=True)

        try:
            self._stages(trial, ot, run_id, logs)
            metrics = self.client.get_run(run_id).data.metrics
            main = next((m for m in (self.sweep.metric, "test/Avg", "val/Avg") if m and m in metrics), None)
            if main is None:
                raise TrialFailed(f"the run logged none of {self.sweep.metric or 'test/Avg, val/Avg'}")
        except Interrupted:
            end("killed", "KILLED")
            raise
        except optuna.TrialPruned as step:
            end("pruned", "KILLED", f" at step {step}", pruned_at_step=str(step))
            raise
        except TrialFailed as err:  # the logs' last 50 lines, progress bars in their last state
            rows = [f"==> {log.name} <==\n" + log.read_text(errors="replace") for log in logs if log.is_file()]
            rows = [row.rsplit("\r", 1)[-1] for text in rows for row in text.split("\n")]
            self.client.log_text(run_id, tail := "\n".join([r for r in rows if r.strip()][-50:]) + "\n", "log_tail.txt")
            end("failed", "FAILED", f": {err}", error=str(err), log_tail=tail)
            self.failed = True
            raise
        end("ok", "FINISHED", f", {main}={metrics[main]:.4g}")
        return float(metrics[main])

    def _stages(self, trial: Trial, ot: optuna.Trial, run_id: str, logs: list[Path]) -> None:
        """Run ``fit`` then ``test``; raises ``TrialFailed`` or ``optuna.TrialPruned`` (with the step)."""
        folder = Path(trial.output_dir)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a rerun must not resume from or pick old files
        folder.mkdir(parents=True, exist_ok=True)

        def stage(name: str, extra: list[str]) -> None:
            logs.append(folder / f"{name}.log")
            cmd = command_line(self.sweep, trial, name, [f"--{LOGGER_KEY}.run_id", run_id, *extra])
            if rc := self._process(cmd, logs[-1], self.env | {TRIAL_ENV: str(ot._trial_id)}):
                raise TrialFailed(f"{name} exited with code {rc} (log {logs[-1]})")

        monitor = "val/" + (self.sweep.metric or "val/Avg").split("/", 1)[-1]  # test/X is watched as val/X
        pruning = {"monitor": monitor, "pruner": self.sweep.pruner}
        pruning = {"class_path": "lit_hyperet.pruning.OptunaPruning", "init_args": pruning}
        stage("fit", [f"--trainer.callbacks+={json.dumps(pruning)}"] * (self.sweep.pruner != "none"))
        attrs = self.study._storage.get_trial(ot._trial_id).user_attrs  # the trial's process may have set pruned_at
        if PRUNED_ATTR in attrs:
            raise optuna.TrialPruned(int(attrs[PRUNED_ATTR]))
        test = self.sweep.test
        if test is None:  # auto: whether the config the CLI resolved (and logged as run parameters) has a test split
            test = self.client.get_run(run_id).data.params.get("data/test_split", "None") not in ("None", "")
        if test and not (ckpt := folder / "checkpoints" / "last.ckpt").is_file():
            raise TrialFailed(f"test: no {ckpt} (enable checkpoint.save_last)")
        if test:
            stage("test", ["--ckpt_path", str(ckpt)])

    def _process(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        """Run ``cmd`` in its own process group, output into ``log_path``; its exit code."""
        with log_path.open("w") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            if self.stopping:
                raise Interrupted
            run = [sys.executable, "-c", DIE_WITH_SWEEP, str(os.getpid()), *cmd] if LINUX else cmd
            proc = subprocess.Popen(run, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.add(proc)  # a signal arriving just before is caught up by the SIGKILL after the grace period
            try:
                rc = proc.wait(timeout=self.sweep.timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                rc = proc.wait()
                log.write(f"\n[sweep] timed out after {self.sweep.timeout:g} s\n")
            finally:
                self.procs.discard(proc)
        if self.stopping:
            raise Interrupted
        return rc
