"""``python -m lit_hyperet sweep FILE.yaml``: an ablation grid as an Optuna study whose trials are CLI subprocesses
under an MLflow parent run: ``spec`` (sweep files, the grid, command lines), ``study`` (storage, ``GridSampler``, queue,
workers), ``pruning`` (the callback inside trials), ``report`` (the ablation table); ``--launcher`` uses submitit."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lit_hyperet.sweep.spec import (
    Sweep,
    SweepError,
    Trial,
    command_line,
    expand,
    load_sweep,
    parse_override,
    shell_line,
)

__all__ = ["Sweep", "SweepError", "Trial", "expand", "load_sweep", "main"]


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
    add(
        "--max-trials",
        type=int,
        metavar="N",
        help="queue at most N trials still to run (done ones not counted), spread over the grid",
    )
    add("--trial", action="append", default=[], metavar="I|NAME", help="queue only these (--dry-run index or name)")
    add("--report", action="store_true", help="only (re)build the ablation table from the study and MLflow")
    add("--jobs", type=int, default=1, metavar="N", help="trials at once here (each gets cpu_count/N torch threads "
        "unless OMP_NUM_THREADS is set)")  # fmt: skip
    add("--storage", metavar="URL", help="Optuna storage: an SQLAlchemy URL (sqlite:///…, postgresql://…) or "
        "journal:PATH; default: optuna.db beside a sqlite MLflow store")  # fmt: skip
    add("--heartbeat", type=float, default=60.0, metavar="S", help="RDB storages: seconds between a worker's "
        "heartbeats; a trial silent for twice that is failed and queued again")  # fmt: skip
    add("--prepare", action="store_true", help="create the study, queue the trials and the parent run, then exit")
    add("--worker", action="store_true", help="join the prepared study (from any machine reaching --storage and "
        "MLflow) and run queued trials until none is left; no report")  # fmt: skip
    add(
        "--launcher",
        choices=("slurm", "local"),
        help="submit --workers `sweep --worker` jobs with submitit, wait, report",
    )
    add("--workers", type=int, default=2, metavar="N", help="jobs the launcher submits (default 2)")
    add("--launcher-option", action="append", default=[], metavar="KEY=VALUE", help="submitit executor parameter, "
        "e.g. slurm_partition=gpu, gpus_per_node=8, timeout_min=600")  # fmt: skip
    return parser


def select_trials(trials: list[Trial], wanted: list[str], where: str) -> list[Trial]:
    """The trials named by index or name (all when ``wanted`` is empty)."""
    by_name, chosen = {t.name: t for t in trials}, {}
    for item in wanted:
        trial = trials[int(item)] if item.isdigit() and int(item) < len(trials) else by_name.get(item)
        if trial is None:
            raise SweepError(f"sweep {where}: --trial {item!r}: no such trial (0..{len(trials) - 1} or a name)")
        chosen[trial.index] = trial
    return list(chosen.values()) if wanted else trials


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_hyperet sweep``; returns the exit code (1 when a trial failed)."""
    args = build_parser().parse_args(argv)
    modes = [
        f"--{m}".replace("_", "-") for m in ("dry_run", "report", "prepare", "worker", "launcher") if getattr(args, m)
    ]
    problem = f"{modes[0]} and {modes[1]} exclude each other" if len(modes) > 1 else ""
    problem = "--jobs and --workers take a positive number" if min(args.jobs, args.workers) < 1 else problem
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        args.override = [item for group in args.override for item in group]
        sweep = load_sweep(args.file, args.override, args.config)
        trials = expand(sweep)
        if not args.dry_run:
            return _run(args, sweep, trials)
        try:
            for trial in select_trials(trials, args.trial, str(sweep.path)):
                print(shell_line(sweep, trial))
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `| head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, sweep: Sweep, trials: list[Trial]) -> int:
    import mlflow
    from mlflow import MlflowClient

    from lit_hyperet.mlflow_store import prepare_tracking_store, tracking_uri
    from lit_hyperet.sweep.report import report
    from lit_hyperet.sweep.study import PARENT_ATTR, Runner, default_storage, open_storage, open_study, queue, waiting

    mlflow.set_tracking_uri(uri := tracking_uri())
    storage_url = args.storage or default_storage(uri)
    storage = open_storage(storage_url, None if args.report else args.heartbeat)
    client = MlflowClient(uri)
    if args.report:
        return report(sweep, trials, open_study(sweep, trials, storage, create=False), client)
    prepare_tracking_store(uri)
    study = open_study(sweep, trials, storage, create=not args.worker)
    if args.worker:
        return Runner(sweep, trials, study, storage_url, client, args.jobs).run()
    if (parent_id := study.user_attrs.get(PARENT_ATTR)) is None:
        tags = {"sweep.role": "parent", "sweep.name": sweep.name, "sweep.study": study.study_name}
        tags |= {"sweep.file": str(sweep.path), "sweep.trials": str(len(trials))}
        experiment_id = mlflow.set_experiment(sweep.experiment).experiment_id
        parent_id = client.create_run(experiment_id, run_name=study.study_name, tags=tags).info.run_id
        client.log_text(parent_id, sweep.path.read_text(), "sweep.yaml")
        client.log_text(parent_id, "\n".join(shell_line(sweep, t) for t in trials) + "\n", "trials.txt")
        study.set_user_attr(PARENT_ATTR, parent_id)
    client.update_run(parent_id, status="RUNNING")
    queued, done = queue(study, select_trials(trials, args.trial, str(sweep.path)), args.max_trials)
    for frozen in study.get_trials(deepcopy=False):  # runs of trials failed by the heartbeat (a killed sweep)
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if frozen.state.name == "FAIL" and run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweep.outcome", "killed")
            client.set_terminated(run_id, "KILLED")
    print(
        f"sweep {sweep.name}: {len(trials)} trials, {done} done, {waiting(study)} queued; study {study.study_name!r} "
        f"in {storage_url}; MLflow parent run {parent_id} at {uri}",
        flush=True,
    )
    if args.prepare:
        return 0
    if args.jobs > 1 and queued:
        _prepare_inputs(sweep, queued[0])
    rc = (
        _launch(args, sweep, storage_url)
        if args.launcher
        else Runner(sweep, trials, study, storage_url, client, args.jobs).run()
    )
    client.set_terminated(parent_id, "KILLED" if rc > 128 else "FAILED" if rc else "FINISHED")
    report(sweep, trials, study, client)
    return rc


def _prepare_inputs(sweep: Sweep, trial: Trial) -> None:
    """Create what trials create on first use (the demo model and data) once, before parallel trials: ``validate``
    of the first trial's configuration with no batches and no logger."""
    cmd = command_line(sweep, trial, "validate") + ["--trainer.logger=false", "--trainer.limit_val_batches=0"]
    (log := Path(sweep.output_dir) / "prepare.log").parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | sweep.env).returncode
    if rc != 0:  # the trial itself will fail the same way and be recorded with its log
        print(f"warning: preparing shared inputs with {trial.name} failed (exit {rc}, log {log})", file=sys.stderr)


def _launch(args: argparse.Namespace, sweep: Sweep, storage_url: str) -> int:
    """Submit ``--workers`` jobs of ``sweep FILE --worker`` with submitit and wait for them; the worst exit code."""
    try:
        import submitit
    except ImportError as err:
        raise SweepError('--launcher needs submitit: pip install -e ".[cluster]"') from err
    executor = submitit.AutoExecutor(folder=Path(sweep.output_dir) / "submitit", cluster=args.launcher)
    try:
        options = dict(parse_override(item, "--launcher-option") for item in args.launcher_option)
        executor.update_parameters(name=f"sweep-{sweep.path.stem}", **options)
    except (ValueError, TypeError) as err:
        raise SweepError(f"--launcher-option: {err}") from err
    argv = [
        args.file,
        "--worker",
        "--storage",
        storage_url,
        "--heartbeat",
        str(args.heartbeat),
        "--jobs",
        str(args.jobs),
    ]
    argv += [arg for config in args.config for arg in ("--config", config)]
    argv += ["--override", *args.override] if args.override else []
    jobs = executor.map_array(main, [argv] * args.workers)
    print(f"submitted {len(jobs)} worker(s): {', '.join(job.job_id for job in jobs)}", flush=True)
    codes = []
    try:
        for job in jobs:
            if (err := job.exception()) is not None:  # submitit's job errors carry the worker's log
                print(f"worker job {job.job_id} failed: {err}", file=sys.stderr)
            codes.append(1 if err is not None else int(job.result() or 0))
    except KeyboardInterrupt:  # Ctrl-C: the submitted workers are cancelled (their trials stop as on SIGTERM)
        for job in jobs:
            job.cancel(check=False)
        return 130
    return max(codes)
