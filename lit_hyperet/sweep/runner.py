"""Running a sweep's queued trials: each a fresh ``python -m lit_hyperet fit`` (then ``test``) subprocess logging into
an MLflow child run of the sweep's parent run, ``--jobs N`` of them at once (Optuna's ``study.optimize(n_jobs=N)``,
which also keeps the heartbeat of RDB storages).

Outcomes: Optuna ``COMPLETE`` / MLflow ``FINISHED`` with the main metric as the trial's value; ``PRUNED`` / ``KILLED``
tagged ``sweep.outcome = pruned``; ``FAIL`` / ``FAILED`` with the log tail (tag ``sweep.log_tail`` and artifact
``log_tail.txt``). SIGTERM or Ctrl-C stops the running trials' process groups (SIGKILL after a grace period) and
records them as failed in Optuna and ``KILLED`` in MLflow. On Linux each trial is also killed when its sweep is
(``PR_SET_PDEATHSIG``), so no trial outlives a sweep ended by SIGKILL; its Optuna trial is failed by the heartbeat.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lit_hyperet.sweep.pruning import PRUNED_ATTR, STORAGE_ENV, STUDY_ENV, TRIAL_ENV, monitored
from lit_hyperet.sweep.spec import Sweep, Trial, axis_tags, command_line
from lit_hyperet.sweep.study import CONFIG_PARAM, PARENT_ATTR, SEED_PARAM, waiting

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

LOG_TAIL_LINES = 50
TAG_VALUE_LIMIT = 5000
PARENT_TAG = "mlflow.parentRunId"
STOP_GRACE_S = 20.0
PRUNING_CALLBACK = "lit_hyperet.sweep.pruning.OptunaPruning"
SURPLUS_ATTR = "surplus"


class TrialFailed(Exception):
    """A stage of a trial failed (Optuna records the trial as failed and the sweep goes on)."""


class Interrupted(Exception):
    """The sweep was stopped by a signal while trials ran."""


def main_metric(metrics: dict[str, float], metric: str | None = None) -> str | None:
    """The trial's value: ``metric`` (the sweep's), else ``test/Avg``, else ``val/Avg``, whichever the run logged."""
    return next((m for m in (metric, "test/Avg", "val/Avg") if m and m in metrics), None)


def log_tail(paths: Iterable[Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines over the given logs (progress-bar carriage returns collapsed)."""
    rows: list[str] = []
    for path in paths:
        if path.is_file():
            rows.append(f"==> {path.name} <==")
            rows += [row.rsplit("\r", 1)[-1] for row in path.read_text(errors="replace").split("\n")]
    rows = [row for row in rows if row.strip()]
    return "\n".join(rows[-lines:]) + "\n" if rows else ""


def _die_with_parent() -> Callable[[], Any] | None:
    """Linux: a ``preexec_fn`` asking the kernel to SIGKILL the trial when the thread that started it ends (also when
    the sweep is killed with SIGKILL, which no handler sees). The libc function is looked up here, before any fork,
    so the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


class Runner:
    """Takes queued trials of ``study`` until none is left, ``jobs`` at a time, and records each in MLflow."""

    def __init__(
        self,
        sweep: Sweep,
        trials: list[Trial],
        study: optuna.Study,
        storage_url: str,
        client: MlflowClient,
        jobs: int = 1,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.sweep, self.study, self.client, self.jobs = sweep, study, client, max(1, jobs)
        self.by_point = {(t.config_name, t.seed): t for t in trials}
        self.total = len(trials)
        self.echo = echo or (lambda text: print(text, flush=True))
        self.parent_id = study.user_attrs[PARENT_ATTR]
        self.experiment_id = client.get_run(self.parent_id).info.experiment_id
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        self.env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} | dict(os.environ) | sweep.env
        self.env |= {"MLFLOW_TRACKING_URI": client.tracking_uri, "PYTHONUNBUFFERED": "1"}
        self.env |= {STORAGE_ENV: storage_url, STUDY_ENV: study.study_name}
        self.procs: set[subprocess.Popen] = set()
        self.stopping, self.stopping_signal = 0, signal.SIGTERM
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self._lock = threading.Lock()
        self._preexec = _die_with_parent()

    # ------------------------------------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Run until the queue is empty; returns the exit code (1 when a trial failed, 128 + signal when stopped)."""
        if waiting(self.study) == 0:
            return 0
        main_thread = threading.current_thread() is threading.main_thread()  # only it may install handlers
        signals = (signal.SIGTERM, signal.SIGINT) if main_thread else ()
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        try:
            self.study.optimize(
                self._objective,
                n_jobs=self.jobs,
                catch=(TrialFailed,),
                callbacks=[self._after_trial],
                gc_after_trial=False,
            )
        except Interrupted:
            return 128 + int(self.stopping_signal)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if self.counts["FAIL"] else 0

    def _after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Count the outcome; stop taking trials once the queue is empty."""
        with self._lock:
            if frozen.state.name in self.counts and SURPLUS_ATTR not in frozen.user_attrs:
                self.counts[frozen.state.name] += 1
        if waiting(study) == 0:
            study.stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """First signal: SIGTERM to every running trial's process group, SIGKILL after a grace period; second: SIGKILL
        at once."""
        self.stopping += 1
        self.stopping_signal = signum
        sig = signal.SIGTERM if self.stopping == 1 else signal.SIGKILL
        self.echo(f"sweep: {signal.Signals(signum).name}: stopping {len(self.procs)} running trial(s)")
        for proc in list(self.procs):
            _signal_group(proc, sig)
        if self.stopping == 1:
            timer = threading.Timer(STOP_GRACE_S, lambda: [_signal_group(p, signal.SIGKILL) for p in list(self.procs)])
            timer.daemon = True
            timer.start()

    # ------------------------------------------------------------------------------------------------ one trial

    def _objective(self, ot: optuna.Trial) -> float:
        import optuna

        if self.stopping:
            raise Interrupted
        if "fixed_params" not in self._frozen(ot).system_attrs:
            # Two workers asked for the last queued trial at once and this one lost: nothing to run.
            ot.set_user_attr(SURPLUS_ATTR, "the queue was empty when this worker asked; nothing ran")
            raise TrialFailed("queue empty")
        labels = list(dict.fromkeys(c for c, _ in self.by_point))
        key = (ot.suggest_categorical(CONFIG_PARAM, labels), ot.suggest_categorical(SEED_PARAM, self.sweep.seeds))
        trial = self.by_point[key]
        run_id = self._create_child(trial, ot.number)
        for name, value in {"mlflow_run_id": run_id, "trial_name": trial.name, "output_dir": trial.output_dir}.items():
            ot.set_user_attr(name, value)
        prefix = f"[{trial.index + 1}/{self.total}] {trial.name} (trial {ot.number})"
        self.echo(f"{prefix}: running (logs in {trial.output_dir})")
        start = time.monotonic()
        logs: list[Path] = []
        try:
            message, pruned_at = self._stages(trial, ot, run_id, logs)
        except Interrupted:
            self._end_child(run_id, "killed", "KILLED", time.monotonic() - start)
            self.echo(f"{prefix}: killed")
            raise
        seconds = time.monotonic() - start
        metrics = self.client.get_run(run_id).data.metrics
        name = main_metric(metrics, self.sweep.metric)
        if not message and pruned_at is None and name is None:
            message = f"the run logged none of {self.sweep.metric or 'test/Avg, val/Avg'}"
        if message:
            tail = log_tail(logs)
            self._end_child(run_id, "failed", "FAILED", seconds, {"sweep.error": message, "sweep.log_tail": tail})
            self.client.log_text(run_id, tail, "log_tail.txt")
            self.echo(f"{prefix}: FAILED in {seconds:.1f} s: {message}")
            raise TrialFailed(message)
        if pruned_at is not None:
            self._end_child(run_id, "pruned", "KILLED", seconds, {"sweep.pruned_at_step": str(pruned_at)})
            self.echo(f"{prefix}: pruned at step {pruned_at} after {seconds:.1f} s")
            raise optuna.TrialPruned(f"pruned at step {pruned_at}")
        self._end_child(run_id, "ok", "FINISHED", seconds)
        self.echo(f"{prefix}: finished in {seconds:.1f} s, {name}={metrics[name]:.4g}")
        return float(metrics[name])

    def _frozen(self, ot: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The trial as the storage has it now."""
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == ot.number)

    def _stages(self, trial: Trial, ot: optuna.Trial, run_id: str, logs: list[Path]) -> tuple[str, int | None]:
        """Run ``fit`` then ``test``; returns an error message (``""`` when all succeeded) and the step where the
        trial was pruned (``None`` when it was not)."""
        folder = Path(trial.output_dir)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a rerun must not resume from or pick old files
        folder.mkdir(parents=True, exist_ok=True)
        env = self.env | {TRIAL_ENV: str(ot._trial_id)}
        extra = []
        if self.sweep.pruner != "none":
            args = {"monitor": monitored(self.sweep.metric), "pruner": self.sweep.pruner}
            spec = {"class_path": PRUNING_CALLBACK, "init_args": args}
            extra = [f"--trainer.callbacks+={json.dumps(spec)}"]
        logs.append(folder / "fit.log")
        rc = self._process(command_line(self.sweep, trial, "fit", run_id, extra), logs[-1], env)
        if rc != 0:
            return f"fit exited with code {rc} (log {logs[-1]})", None
        attrs = self._frozen(ot).user_attrs  # read again: the trial's own process may have set pruned_at_step
        if PRUNED_ATTR in attrs:
            return "", int(attrs[PRUNED_ATTR])
        if not (trial.test if trial.test is not None else self._has_test_split(run_id)):
            return "", None
        ckpt = folder / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            return f"test: no {ckpt} (enable checkpoint.save_last)", None
        logs.append(folder / "test.log")
        rc = self._process(command_line(self.sweep, trial, "test", run_id, ["--ckpt_path", str(ckpt)]), logs[-1], env)
        return (f"test exited with code {rc} (log {logs[-1]})" if rc != 0 else ""), None

    def _process(self, cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
        """Run ``cmd`` in its own process group with stdout and stderr into ``log_path``; its exit code."""
        with log_path.open("w") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            with self._lock:
                if self.stopping:
                    raise Interrupted
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=self._preexec
                )
                self.procs.add(proc)
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

    # ------------------------------------------------------------------------------------------------ MLflow

    def _create_child(self, trial: Trial, number: int) -> str:
        tags = axis_tags(trial) | {
            PARENT_TAG: self.parent_id,
            "sweep.name": self.sweep.name,
            "sweep.study": self.study.study_name,
            "sweep.role": "trial",
            "sweep.trial": trial.name,
            "sweep.config": trial.config_name,
            "sweep.seed": "" if trial.seed is None else str(trial.seed),
            "optuna.trial_number": str(number),
        }
        return self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags).info.run_id

    def _end_child(self, run_id: str, outcome: str, status: str, seconds: float, tags: dict | None = None) -> None:
        for key, value in ({"sweep.outcome": outcome, "sweep.seconds": f"{seconds:.1f}"} | (tags or {})).items():
            self.client.set_tag(run_id, key, value[-TAG_VALUE_LIMIT:])
        self.client.set_terminated(run_id, status)

    def _has_test_split(self, run_id: str) -> bool:
        """Whether the config the CLI resolved and logged (``config.yaml``) names a test split."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, "config.yaml", tmp)
                config = yaml.safe_load(Path(path).read_text()) or {}
            except Exception:  # noqa: BLE001 - no config logged: no test stage
                return False
        return bool(((config.get("data") or {}).get("init_args") or {}).get("test_split"))


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
