"""``python -m lit_hyperet sweep FILE.yaml``: an ablation grid as an Optuna study whose trials are CLI subprocesses
under an MLflow parent run.

* ``spec``: sweep files, the grid's configurations in a spread-out order, trial command lines (no torch, no Optuna);
* ``study``: the Optuna study (storage, ``GridSampler``, the queue of trials still to run);
* ``runner``: workers taking queued trials (``--jobs N`` at once), MLflow child runs, signals;
* ``pruning``: the Lightning callback reporting to the trial's Optuna trial;  ``launch``: submitit workers;
* ``report``: the ablation table (markdown, CSV, bar chart) from the study and the MLflow runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lit_hyperet.sweep.spec import Sweep, SweepError, Trial, expand, load_sweep, shell_line

__all__ = ["Sweep", "SweepError", "Trial", "expand", "load_sweep", "main"]

DEFAULT_HEARTBEAT_S = 60.0


def build_parser() -> argparse.ArgumentParser:
    """The ``sweep`` subcommand's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_hyperet sweep",
        description="Run a grid of `python -m lit_hyperet fit` trials (then `test` when the data has a test split) "
        "as an Optuna study: one MLflow child run per trial under a parent run, then the ablation table. Re-running "
        "skips finished trials and reruns failed or interrupted ones. MLflow: $MLFLOW_TRACKING_URI or "
        "sqlite:///mlflow.db (passed on to the trials).",
    )
    add = parser.add_argument
    add("file", help="the sweep YAML (see sweeps/*.yaml)")
    add("--dry-run", action="store_true", help="print one command line per trial and exit")
    add("--override", action="append", nargs="+", default=[], metavar="KEY=VALUE", help="dotted CLI key=value for "
        "every trial (last wins), e.g. trainer.max_steps=5")  # fmt: skip
    add("--config", action="append", default=[], metavar="FILE", help="extra config file for every trial, after the "
        "sweep's own, e.g. configs/strategy/ddp.yaml")  # fmt: skip
    add("--max-trials", type=int, default=None, metavar="N", help="queue at most N of the trials still to run, "
        "spread over the grid (finished ones are skipped and not counted)")  # fmt: skip
    add("--trial", action="append", default=[], metavar="I|NAME", help="queue only these trials (index in --dry-run "
        "order, or name); repeatable")  # fmt: skip
    add("--report", action="store_true", help="only (re)build the ablation table from the study and MLflow")
    add("--jobs", type=int, default=1, metavar="N", help="trials at once on this machine (each gets "
        "cpu_count/N torch threads unless OMP_NUM_THREADS is set)")  # fmt: skip
    add("--storage", default=None, metavar="URL", help="Optuna storage: an SQLAlchemy URL (sqlite:///…, "
        "postgresql://…) or journal:PATH; default: optuna.db beside a sqlite MLflow store")  # fmt: skip
    add("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_S, metavar="S", help="RDB storages: seconds between a "
        "worker's heartbeats; a trial silent for twice that is failed and queued again")  # fmt: skip
    add("--prepare", action="store_true", help="create the study, queue the trials and the parent run, then exit")
    add("--worker", action="store_true", help="join the prepared study (from any machine reaching --storage and "
        "MLflow) and run queued trials until none is left; no report")  # fmt: skip
    add("--launcher", choices=("slurm", "local"), default=None, help="prepare, submit --workers `sweep --worker` "
        "jobs with submitit, wait for them and report")  # fmt: skip
    add("--workers", type=int, default=2, metavar="N", help="jobs the launcher submits (default 2)")
    add("--launcher-option", action="append", default=[], metavar="KEY=VALUE", help="submitit executor parameter, "
        "e.g. slurm_partition=gpu, gpus_per_node=8, timeout_min=600")  # fmt: skip
    return parser


def select_trials(trials: list[Trial], wanted: list[str], where: str) -> list[Trial]:
    """The trials named by index or name (all when ``wanted`` is empty)."""
    by_name = {t.name: t for t in trials}
    chosen = []
    for item in wanted:
        if item.isdigit() and int(item) < len(trials):
            chosen.append(trials[int(item)])
        elif item in by_name:
            chosen.append(by_name[item])
        else:
            raise SweepError(f"sweep {where}: --trial {item!r}: no such trial (0..{len(trials) - 1} or a name)")
    return list({t.index: t for t in chosen}.values()) if wanted else trials


def _ensure_parent(client, sweep: Sweep, study, trials: list[Trial]) -> str:  # noqa: ANN001 - lazy imports
    """The study's MLflow parent run (created with the study), marked running."""
    from lit_hyperet.sweep.study import PARENT_ATTR

    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    experiment = client.get_experiment_by_name(sweep.experiment)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        experiment_id = client.create_experiment(sweep.experiment)
    else:
        experiment_id = experiment.experiment_id
    tags = {"sweep.role": "parent", "sweep.name": sweep.name, "sweep.study": study.study_name}
    tags |= {"sweep.file": str(sweep.path), "sweep.trials": str(len(trials))}
    run_id = client.create_run(experiment_id, run_name=study.study_name, tags=tags).info.run_id
    client.log_text(run_id, sweep.path.read_text(), "sweep.yaml")
    client.log_text(run_id, "\n".join(shell_line(sweep, t) for t in trials) + "\n", "trials.txt")
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def _close_dead_runs(client, study) -> None:  # noqa: ANN001 - lazy imports
    """MLflow runs of failed trials still marked running (their sweep was killed) become ``KILLED``."""
    for frozen in study.get_trials(deepcopy=False):
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if frozen.state.name == "FAIL" and run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweep.outcome", "killed")
            client.set_terminated(run_id, "KILLED")


def _prepare_inputs(sweep: Sweep, trial: Trial) -> None:
    """Create what trials share and create on first use (the demo model and data) once, before parallel trials:
    the first trial's configuration through ``validate`` with no batches and no logger."""
    from lit_hyperet.sweep.spec import command_line

    cmd = command_line(sweep, trial, "validate") + ["--trainer.logger=false", "--trainer.limit_val_batches=0"]
    log = Path(sweep.output_dir) / "prepare.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | sweep.env).returncode
    if rc != 0:  # the trial itself will fail the same way and be recorded with its log
        print(f"warning: preparing shared inputs with {trial.name} failed (exit {rc}, log {log})", file=sys.stderr)


def _run(args: argparse.Namespace, sweep: Sweep, trials: list[Trial]) -> int:
    from mlflow import MlflowClient

    from lit_hyperet.mlflow_store import prepare_tracking_store, tracking_uri
    from lit_hyperet.sweep.study import default_storage, open_storage, open_study, queue, waiting

    uri = tracking_uri()
    storage_url = args.storage or default_storage(uri)
    storage = open_storage(storage_url, None if args.report else args.heartbeat)
    if args.report:
        return _report(sweep, trials, open_study(sweep, trials, storage, create=False), MlflowClient(uri))
    prepare_tracking_store(uri)
    client = MlflowClient(uri)
    study = open_study(sweep, trials, storage, create=not args.worker)
    if args.worker:
        return _work(sweep, trials, study, storage_url, client, args.jobs)
    parent_id = _ensure_parent(client, sweep, study, trials)
    queued, done = queue(study, select_trials(trials, args.trial, str(sweep.path)), args.max_trials)
    _close_dead_runs(client, study)
    print(
        f"sweep {sweep.name}: {len(trials)} trials, {done} done, {waiting(study)} queued; study {study.study_name!r} "
        f"in {storage_url}; MLflow parent run {parent_id} at {uri}",
        flush=True,
    )
    if args.prepare:
        return 0
    if args.jobs > 1 and queued:
        _prepare_inputs(sweep, queued[0])
    if args.launcher:
        from lit_hyperet.sweep.launch import submit

        argv = [str(sweep.path), "--worker", "--storage", storage_url, "--heartbeat", str(args.heartbeat)]
        argv += ["--jobs", str(args.jobs), *[a for c in args.config for a in ("--config", c)]]
        overrides = [item for group in args.override for item in group]
        argv += ["--override", *overrides] if overrides else []
        jobs = submit(argv, args.workers, args.launcher, Path(sweep.output_dir) / "submitit", args.launcher_option)
        print(f"submitted {len(jobs)} worker(s): {', '.join(j.job_id for j in jobs)}", flush=True)
        try:
            rc = max([_job_exit_code(job) for job in jobs] or [0])
        except KeyboardInterrupt:  # Ctrl-C: the submitted workers are cancelled (their trials stop as on SIGTERM)
            for job in jobs:
                job.cancel(check=False)
            rc = 130
    else:
        rc = _work(sweep, trials, study, storage_url, client, args.jobs)
    client.set_terminated(parent_id, "KILLED" if rc > 128 else "FAILED" if rc else "FINISHED")
    _report(sweep, trials, study, client)
    return rc


def _job_exit_code(job) -> int:  # noqa: ANN001 - a submitit job
    """A submitted worker's exit code once it ends (1 when the job itself failed, with submitit's reason)."""
    try:
        return int(job.result() or 0)
    except Exception as err:  # noqa: BLE001 - submitit's job errors carry the worker's log
        print(f"worker job {job.job_id} failed: {err}", file=sys.stderr)
        return 1


def _work(sweep: Sweep, trials: list[Trial], study, storage_url: str, client, jobs: int) -> int:  # noqa: ANN001
    from lit_hyperet.sweep.runner import Runner

    return Runner(sweep, trials, study, storage_url, client, jobs).run()


def _report(sweep: Sweep, trials: list[Trial], study, client) -> int:  # noqa: ANN001 - lazy imports
    from lit_hyperet.sweep.report import build_report, console_table, write_report

    report = build_report(sweep, trials, study, client)
    paths = write_report(report, Path(sweep.output_dir), client)
    print(console_table(report))
    print("wrote " + ", ".join(map(str, paths)) + f" (logged to parent run {report.parent_id})", flush=True)
    return 0


def _dry_run(sweep: Sweep, trials: list[Trial]) -> int:
    try:
        for trial in trials:
            print(shell_line(sweep, trial))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_hyperet sweep``; returns the exit code (1 when a trial failed)."""
    args = build_parser().parse_args(argv)
    modes = [name for name in ("dry_run", "report", "prepare", "worker", "launcher") if getattr(args, name)]
    if args.jobs < 1 or args.workers < 1:
        print("--jobs and --workers take a positive number", file=sys.stderr)
        return 2
    if len(modes) > 1:
        print(f"--{modes[0].replace('_', '-')} and --{modes[1].replace('_', '-')} exclude each other", file=sys.stderr)
        return 2
    try:
        overrides = [item for group in args.override for item in group]
        sweep = load_sweep(args.file, overrides, args.config)
        trials = expand(sweep)
        if args.dry_run:
            return _dry_run(sweep, select_trials(trials, args.trial, str(sweep.path)))
        return _run(args, sweep, trials)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
