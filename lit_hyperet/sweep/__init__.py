"""Run an ablation grid of `python -m lit_hyperet fit` (then `test`) trials as an Optuna study, each trial an MLflow
child run under the sweep's parent run, then the ablation table; running it again resumes (README: "Sweeps and
ablations"). MLflow: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lit_hyperet.sweep import spec
from lit_hyperet.sweep.spec import Sweep, SweepError, Trial, expand, load_sweep

__all__ = ["Sweep", "SweepError", "Trial", "expand", "load_sweep", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``sweep`` subcommand's arguments."""
    parser = argparse.ArgumentParser(prog="python -m lit_hyperet sweep", description=__doc__)
    add, mode = parser.add_argument, parser.add_mutually_exclusive_group().add_argument
    add("file", help="the sweep YAML (see sweeps/*.yaml)")
    mode("--dry-run", action="store_true", help="print one command line per trial and exit")
    add("--override", action="append", nargs="+", default=[], metavar="KEY=VALUE", help="dotted CLI key=value for "
        "every trial (last wins), e.g. trainer.max_steps=5")  # fmt: skip
    add("--config", action="append", default=[], metavar="FILE", help="extra config file for every trial")
    add("--max-trials", type=int, metavar="N", help="queue at most N trials still to run, spread over the grid")
    add("--trial", action="append", default=[], metavar="I|NAME", help="queue only these (--dry-run index or name)")
    mode("--report", action="store_true", help="only (re)build the ablation table from the study and MLflow")
    add("--jobs", type=int, default=1, metavar="N", help="trials at once here (cpu_count/N torch threads each)")
    add("--storage", metavar="URL", help="Optuna storage: SQLAlchemy URL or journal:PATH (default: optuna.db)")
    add("--heartbeat", type=float, default=60.0, metavar="S", help="seconds between a worker's heartbeats")
    mode("--prepare", action="store_true", help="create the study, queue the trials and the parent run, then exit")
    mode("--worker", action="store_true", help="join the prepared study and run queued trials until none is left")
    mode("--launcher", choices=("slurm", "local"), help="submit --workers `sweep --worker` jobs with submitit")
    add("--workers", type=int, default=2, metavar="N", help="jobs the launcher submits (default 2)")
    add("--launcher-option", action="append", default=[], metavar="KEY=VALUE", help="submitit executor parameter")
    return parser


def select_trials(trials: list[Trial], wanted: list[str], where: str) -> list[Trial]:
    """The trials named by index or name (all when ``wanted`` is empty)."""
    by_key = {t.name: t for t in trials} | {str(i): t for i, t in enumerate(trials)}
    for item in (item for item in wanted if item not in by_key):
        raise SweepError(f"sweep {where}: --trial {item!r}: no such trial (0..{len(trials) - 1} or a name)")
    return list({by_key[item].index: by_key[item] for item in wanted}.values()) if wanted else trials


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_hyperet sweep``; returns the exit code (1 when a trial failed). A
    :class:`SweepError` reaches ``python -m lit_hyperet``, which prints it and exits with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.jobs, args.workers) < 1:
        parser.error("--jobs and --workers take a positive number")
    args.override = [item for group in args.override for item in group]
    sweep = load_sweep(args.file, args.override, args.config)
    trials = expand(sweep)
    if not args.dry_run:
        return _run(args, sweep, trials)
    try:
        print("\n".join(spec.shell_line(sweep, t) for t in select_trials(trials, args.trial, str(sweep.path))))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run(args: argparse.Namespace, sweep: Sweep, trials: list[Trial]) -> int:
    import mlflow
    from mlflow import MlflowClient

    from lit_hyperet.mlflow_store import prepare_tracking_store, tracking_uri
    from lit_hyperet.optuna_store import open_storage
    from lit_hyperet.sweep.report import report
    from lit_hyperet.sweep.study import PARENT_ATTR, Runner, open_study, queue, waiting

    mlflow.set_tracking_uri(uri := tracking_uri())
    beside = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else "mlflow.db"  # default: next to MLflow
    storage_url, client = args.storage or f"sqlite:///{Path(beside).with_name('optuna.db')}", MlflowClient(uri)
    storage = open_storage(storage_url, None if args.report else args.heartbeat)
    if args.report:
        return report(sweep, trials, open_study(sweep, trials, storage, create=False), client)
    prepare_tracking_store(uri)
    study = open_study(sweep, trials, storage, create=not args.worker)
    if args.worker:
        return Runner(sweep, trials, study, storage_url, args.jobs).run()
    if (parent_id := study.user_attrs.get(PARENT_ATTR)) is None:
        tags = {"sweep.role": "parent", "sweep.name": sweep.name, "sweep.study": study.study_name}
        tags |= {"sweep.file": str(sweep.path), "sweep.trials": str(len(trials))}
        experiment_id = mlflow.set_experiment(sweep.experiment).experiment_id
        parent_id = client.create_run(experiment_id, run_name=study.study_name, tags=tags).info.run_id
        client.log_text(parent_id, sweep.path.read_text(), "sweep.yaml")
        client.log_text(parent_id, "\n".join(spec.shell_line(sweep, t) for t in trials) + "\n", "trials.txt")
        study.set_user_attr(PARENT_ATTR, parent_id)
    client.update_run(parent_id, status="RUNNING")
    queued, done = queue(study, select_trials(trials, args.trial, str(sweep.path)), args.max_trials)
    for frozen in study.get_trials(deepcopy=False):  # runs of trials failed by the heartbeat (a killed sweep)
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if frozen.state.name == "FAIL" and run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "sweep.outcome", "killed")
            client.set_terminated(run_id, "KILLED")
    print(f"sweep {sweep.name}: {len(trials)} trials, {done} done, {waiting(study)} queued; study "
          f"{study.study_name!r} in {storage_url}; MLflow parent run {parent_id} at {uri}", flush=True)  # fmt: skip
    if args.prepare:
        return 0
    if args.jobs > 1 and queued:  # what trials create on first use (the demo model and data), once: `validate`
        quiet = ["--trainer.logger=false", "--trainer.limit_val_batches=0"]
        cmd = spec.command_line(sweep, queued[0], "validate", quiet)
        (log := Path(sweep.output_dir) / "prepare.log").parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | sweep.env).returncode
        if rc != 0:  # the trial itself will fail the same way and be recorded with its log
            print(f"warning: preparing shared inputs failed (exit {rc}, log {log})", file=sys.stderr)
    if args.launcher:
        rc = _launch(args, sweep, storage_url)
    else:
        rc = Runner(sweep, trials, study, storage_url, args.jobs).run()
    client.set_terminated(parent_id, "KILLED" if rc > 128 else "FAILED" if rc else "FINISHED")
    report(sweep, trials, study, client)
    return rc


def _launch(args: argparse.Namespace, sweep: Sweep, storage_url: str) -> int:
    """Submit ``--workers`` jobs of ``sweep FILE --worker`` with submitit and wait for them; the worst exit code."""
    try:
        import submitit
    except ImportError as err:
        raise SweepError('--launcher needs submitit: pip install -e ".[cluster]"') from err
    executor = submitit.AutoExecutor(folder=Path(sweep.output_dir) / "submitit", cluster=args.launcher)
    try:
        options = dict(spec.parse_override(item, "--launcher-option") for item in args.launcher_option)
        executor.update_parameters(name=f"sweep-{sweep.path.stem}", **options)
    except (ValueError, TypeError) as err:
        raise SweepError(f"--launcher-option: {err}") from err
    argv = [args.file, "--worker", "--storage", storage_url, "--heartbeat", str(args.heartbeat)]
    argv += ["--jobs", str(args.jobs), *(arg for config in args.config for arg in ("--config", config))]
    argv += ["--override", *args.override] if args.override else []
    jobs = executor.map_array(main, [argv] * args.workers)
    print(f"submitted {len(jobs)} worker(s): {', '.join(job.job_id for job in jobs)}", flush=True)
    try:
        errors = [job.exception() for job in jobs]  # waits; submitit's job errors carry the worker's log
    except KeyboardInterrupt:  # Ctrl-C: the submitted workers are cancelled (their trials stop as on SIGTERM)
        for job in jobs:
            job.cancel(check=False)
        return 130
    for job, err in zip(jobs, errors, strict=True):
        if err:
            print(f"worker job {job.job_id} failed: {err}", file=sys.stderr)
    return max(1 if err else int(job.result() or 0) for job, err in zip(jobs, errors, strict=True))
