"""Running trials as fresh CLI subprocesses under an MLflow parent run, one child run per trial; resumable.

Each trial gets a child run created here (tag ``mlflow.parentRunId``, its axis values, its config hash); the trial's
``MLFlowLogger`` logs into it through ``--trainer.logger.init_args.run_id``. ``fit`` runs first, then ``test`` from the
trial's last checkpoint when the data config has a test split. This process sets the child's final status
(``FINISHED`` / ``FAILED``) and the tag ``sweep.outcome`` once every stage has ended; a failed trial also gets its log
tail as the artifact ``log_tail.txt`` and the tag ``sweep.log_tail``. A later run skips trials whose child run
``FINISHED`` with ``sweep.outcome = ok`` and the same hash, and reruns the others in a new child run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lit_hyperet.mlflow_store import tracking_uri
from lit_hyperet.sweep.report import is_accuracy
from lit_hyperet.sweep.spec import (
    Sweep,
    Trial,
    command_line,
    config_tags,
    has_test_split,
    shell_line,
    trial_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

LOG_TAIL_LINES = 50
TAG_VALUE_LIMIT = 5000
PARENT_TAG = "mlflow.parentRunId"
TIMEOUT_RC = 124


@dataclass
class TrialOutcome:
    """What happened to one trial in this invocation."""

    trial: Trial
    status: str  # FINISHED | FAILED | SKIPPED
    run_id: str | None = None
    seconds: float = 0.0
    message: str = ""


# ------------------------------------------------------------------------------------------------ MLflow


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


class Tracker:
    """MLflow bookkeeping of one sweep: its experiment, parent run and child runs."""

    def __init__(self, sweep: Sweep, uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.sweep = sweep
        self.uri = uri or tracking_uri()
        self.client: MlflowClient = MlflowClient(self.uri)
        self.experiment_id = self._experiment_id(create=True)

    def _experiment_id(self, create: bool) -> str | None:
        experiment = self.client.get_experiment_by_name(self.sweep.experiment)
        if experiment is not None and experiment.lifecycle_stage != "deleted":
            return experiment.experiment_id
        return self.client.create_experiment(self.sweep.experiment) if create else None

    def search(self, filter_string: str) -> list[Run]:
        """All active runs of the experiment matching ``filter_string``, newest first."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string,
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def find_parent(self) -> str | None:
        """The newest parent run of this sweep (by name), if any."""
        runs = self.search(f"tags.`sweep.name` = {_quote(self.sweep.name)} and tags.`sweep.role` = 'parent'")
        return runs[0].info.run_id if runs else None

    def parent(self, trials: list[Trial]) -> str:
        """Reuse (and mark running) this sweep's parent run, or create it; tags and artifacts describe the sweep."""
        run_id = self.find_parent()
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=self.sweep.name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        tags = {
            "sweep.role": "parent",
            "sweep.name": self.sweep.name,
            "sweep.file": str(self.sweep.path),
            "sweep.trials": str(len(trials)),
            "sweep.configurations": str(len({t.config_name for t in trials})),
            "sweep.overrides": " ".join(f"{k}={v}" for k, v in self.sweep.cli_overrides.items())[:TAG_VALUE_LIMIT],
        }
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.log_text(run_id, self.sweep.path.read_text(), "sweep.yaml")
        self.client.log_text(run_id, "\n".join(shell_line(self.sweep, t) for t in trials) + "\n", "trials.txt")
        return run_id

    def children(self, parent_id: str) -> list[Run]:
        """The parent's child runs, newest first."""
        return self.search(f"tags.`{PARENT_TAG}` = {_quote(parent_id)}")

    def create_child(self, parent_id: str, trial: Trial, attempt: int) -> str:
        """A RUNNING child run for ``trial`` (the trial's logger logs into it)."""
        tags = trial_tags(self.sweep, trial) | {PARENT_TAG: parent_id, "sweep.attempt": str(attempt)}
        tags |= {f"cfg.{k}": v for k, v in config_tags(trial.resolved).items()}
        run = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags)
        return run.info.run_id

    def logged_config(self, run_id: str) -> dict[str, Any] | None:
        """The resolved ``config.yaml`` the CLI logged into the run, if any."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, "config.yaml", tmp)
                data = yaml.safe_load(Path(path).read_text())
            except Exception:  # noqa: BLE001 - absent or unreadable: fall back to the sweep's own resolution
                return None
        return data if isinstance(data, dict) else None

    def end_child(self, run_id: str, outcome: TrialOutcome, tail: str = "") -> None:
        """Final tags and status of a child run (``FAILED`` ones get their log tail)."""
        ok = outcome.status == "FINISHED"
        self.client.set_tag(run_id, "sweep.outcome", "ok" if ok else "failed")
        self.client.set_tag(run_id, "sweep.seconds", f"{outcome.seconds:.1f}")
        self.client.set_tag(run_id, "sweep.log", str(Path(outcome.trial.output_dir).resolve()))
        if not ok:
            self.client.set_tag(run_id, "sweep.error", outcome.message[:TAG_VALUE_LIMIT])
            self.client.set_tag(run_id, "sweep.log_tail", tail[-TAG_VALUE_LIMIT:])
            self.client.log_text(run_id, tail, "log_tail.txt")
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


# ------------------------------------------------------------------------------------------------ processes


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the trial's process group (the trial and what it started), then kill it after a grace period."""
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(cmd: list[str], log_path: Path, env: dict[str, str], timeout: float | None = None) -> int:
    """Run ``cmd`` with stdout and stderr into ``log_path``; returns its exit code (124 on timeout)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            log.write(f"\n[sweep] timed out after {timeout:g} s\n")
            return TIMEOUT_RC
        except BaseException:
            _stop(proc)
            raise


def log_tail(paths: Iterable[Path], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines over the given logs (progress-bar carriage returns collapsed)."""
    rows: list[str] = []
    for path in paths:
        if path.is_file():
            rows.append(f"==> {path.name} <==")
            rows += [row.rsplit("\r", 1)[-1] for row in path.read_text(errors="replace").split("\n")]
    rows = [row for row in rows if row.strip()]
    return "\n".join(rows[-lines:]) + "\n" if rows else ""


def find_checkpoint(trial: Trial) -> Path | None:
    """The trial's ``last.ckpt`` (else its newest checkpoint)."""
    folder = Path(trial.checkpoint_dir)
    if (folder / "last.ckpt").exists():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------------ the sweep


def main_metric_summary(metrics: dict[str, float], metric: str | None = None) -> str:
    """``", test/Avg=49.17"``: ``metric`` (the sweep's), else test/Avg, else val/Avg, whichever the run logged first;
    accuracies are logged in percent and printed with two decimals, other metrics with four significant digits.
    Empty when the run logged none of them."""
    name = next((m for m in (metric, "test/Avg", "val/Avg") if m and m in metrics), None)
    if name is None:
        return ""
    return f", {name}={metrics[name]:.2f}" if is_accuracy(name) else f", {name}={metrics[name]:.4g}"


class SweepRunner:
    """Runs trials one after another (each as fresh subprocesses) and keeps MLflow up to date."""

    def __init__(self, sweep: Sweep, tracker: Tracker, echo: Callable[[str], None] | None = None) -> None:
        self.sweep = sweep
        self.tracker = tracker
        self.echo = echo or (lambda text: print(text, flush=True))
        self.env = dict(os.environ, **sweep.env, MLFLOW_TRACKING_URI=tracker.uri, PYTHONUNBUFFERED="1")

    def run(self, trials: list[Trial], parent_id: str, max_trials: int | None = None) -> list[TrialOutcome]:
        """Run the trials not already finished with the same hash; stop after ``max_trials`` executed trials."""
        children = self.tracker.children(parent_id)
        outcomes: list[TrialOutcome] = []
        executed = 0
        for trial in trials:
            same = [r for r in children if r.data.tags.get("sweep.hash") == trial.config_hash]
            done = next((r for r in same if _finished_ok(r)), None)
            prefix = f"[{trial.index + 1}/{len(trials)}] {trial.name}"
            if done is not None:
                outcomes.append(TrialOutcome(trial, "SKIPPED", done.info.run_id, message="finished before"))
                self.echo(f"{prefix}: skipped (run {done.info.run_id} finished with hash {trial.config_hash})")
                continue
            if max_trials is not None and executed >= max_trials:
                self.echo(f"stopping after {executed} trial(s) (--max-trials {max_trials})")
                break
            self.echo(f"{prefix}: running (logs in {trial.output_dir})")
            outcome = self.run_trial(trial, parent_id, attempt=len(same) + 1)
            executed += 1
            outcomes.append(outcome)
            detail = f": {outcome.message}" if outcome.message else self._main_metric(outcome.run_id)
            self.echo(f"{prefix}: {outcome.status} in {outcome.seconds:.1f} s (run {outcome.run_id}){detail}")
        return outcomes

    def _main_metric(self, run_id: str | None) -> str:
        """``", test/Avg=49.17"`` (see :func:`main_metric_summary`) when the run logged its main metric."""
        if run_id is None:
            return ""
        return main_metric_summary(self.tracker.client.get_run(run_id).data.metrics, self.sweep.metric)

    def run_trial(self, trial: Trial, parent_id: str, attempt: int = 1) -> TrialOutcome:
        """Create the child run, run ``fit`` (then ``test``), record the outcome."""
        run_id = self.tracker.create_child(parent_id, trial, attempt)
        folder = Path(trial.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a rerun must not resume from or pick old files
        logs: list[Path] = []
        start = time.monotonic()
        try:
            message = self._stages(trial, run_id, logs)
        except BaseException:
            self.tracker.client.set_tag(run_id, "sweep.outcome", "killed")
            self.tracker.client.set_terminated(run_id, "KILLED")
            raise
        status = "FAILED" if message else "FINISHED"
        outcome = TrialOutcome(trial, status, run_id, time.monotonic() - start, message)
        self.tracker.end_child(run_id, outcome, log_tail(logs) if message else "")
        return outcome

    def _stages(self, trial: Trial, run_id: str, logs: list[Path]) -> str:
        """Run the stages; returns an error message, or ``""`` when all succeeded."""
        logs.append(Path(trial.output_dir) / "fit.log")
        rc = run_process(command_line(self.sweep, trial, "fit", run_id), logs[-1], self.env, self.sweep.timeout)
        if rc != 0:
            return _failure("fit", rc, logs[-1], self.sweep.timeout)
        if not self._wants_test(trial, run_id):
            return ""
        ckpt = find_checkpoint(trial)
        if ckpt is None:
            return f"test: no checkpoint in {trial.checkpoint_dir} (enable checkpoint.save_last)"
        logs.append(Path(trial.output_dir) / "test.log")
        cmd = command_line(self.sweep, trial, "test", run_id, ckpt_path=str(ckpt))
        rc = run_process(cmd, logs[-1], self.env, self.sweep.timeout)
        return _failure("test", rc, logs[-1], self.sweep.timeout) if rc != 0 else ""

    def _wants_test(self, trial: Trial, run_id: str) -> bool:
        if trial.test is not None:
            return trial.test
        logged = self.tracker.logged_config(run_id)  # resolved by the CLI itself, class defaults included
        return has_test_split(logged) if logged is not None else False


def _finished_ok(run: Run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get("sweep.outcome") == "ok"


def _failure(stage: str, rc: int, log: Path, timeout: float | None) -> str:
    if rc == TIMEOUT_RC and timeout is not None:
        return f"{stage} timed out after {timeout:g} s (log {log})"
    return f"{stage} exited with code {rc} (log {log})"


def finish_parent(tracker: Tracker, parent_id: str, outcomes: list[TrialOutcome], total: int) -> None:
    """Status and progress tags of the parent run after this invocation."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("FINISHED", "FAILED", "SKIPPED")}
    tracker.client.set_tag(
        parent_id,
        "sweep.progress",
        f"{counts['FINISHED']} ran, {counts['FAILED']} failed, {counts['SKIPPED']} skipped of {total}",
    )
    tracker.client.set_terminated(parent_id, "FAILED" if counts["FAILED"] else "FINISHED")


def echo_err(text: str) -> None:
    """Print to stderr (keeps stdout for dry-run command lines)."""
    print(text, file=sys.stderr, flush=True)
