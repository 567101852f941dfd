"""``python -m lit_hyperet sweep FILE.yaml``: grids of trials run as CLI subprocesses under an MLflow parent run.

* ``spec``: sweep files, grid expansion, trial command lines and config hashes (no torch, no MLflow);
* ``runner``: MLflow parent/child runs and the trial subprocesses (``fit``, then ``test`` when there is a test split);
* ``report``: the ablation table (markdown, CSV, bar chart) from the child runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from lit_hyperet.sweep.spec import Sweep, SweepError, Trial, command_line, expand, load_sweep, shell_line

__all__ = ["Sweep", "SweepError", "Trial", "command_line", "expand", "load_sweep", "main", "shell_line"]


def build_parser() -> argparse.ArgumentParser:
    """The ``sweep`` subcommand's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_hyperet sweep",
        description="Run a grid of `python -m lit_hyperet fit` trials (then `test` when the data has a test split) "
        "as subprocesses, one MLflow child run per trial under a parent run, and write the ablation table. "
        "Tracking URI: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db (passed on to the trials).",
    )
    parser.add_argument("file", help="the sweep YAML (see sweeps/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print one command line per trial and exit")
    parser.add_argument(
        "--override",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="dotted CLI key=value applied to every trial (last wins), e.g. trainer.max_steps=5",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="extra config file for every trial, after the sweep's own, e.g. configs/strategy/ddp.yaml",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=None,
        metavar="N",
        help="run at most N trials this time (finished ones are skipped and not counted)",
    )
    parser.add_argument("--report", action="store_true", help="only (re)build the ablation table from MLflow")
    parser.add_argument(
        "--trial",
        action="append",
        default=[],
        metavar="I|NAME",
        help="run only these trials (0-based index in --dry-run order, or name); repeatable. "
        "For one trial per cluster job: no report and the parent run is left running",
    )
    return parser


def select_trials(trials: list[Trial], wanted: list[str], where: str) -> list[Trial]:
    """The trials named by index or name (all when ``wanted`` is empty)."""
    if not wanted:
        return trials
    by_name = {t.name: t for t in trials}
    chosen = []
    for item in wanted:
        if item.isdigit() and int(item) < len(trials):
            chosen.append(trials[int(item)])
        elif item in by_name:
            chosen.append(by_name[item])
        else:
            raise SweepError(f"sweep {where}: --trial {item!r}: no such trial (0..{len(trials) - 1} or a name)")
    return list({t.index: t for t in chosen}.values())


def _run(args: argparse.Namespace, sweep: Sweep, trials: list[Trial]) -> int:
    from lit_hyperet.sweep.report import report_sweep, to_markdown
    from lit_hyperet.sweep.runner import SweepRunner, Tracker, finish_parent

    tracker = Tracker(sweep)
    if args.report:
        parent_id = tracker.find_parent()
        if parent_id is None:
            print(
                f"sweep {sweep.path}: no parent run named {sweep.name!r} in experiment {sweep.experiment!r} "
                f"at {tracker.uri}",
                file=sys.stderr,
            )
            return 1
        report, paths = report_sweep(sweep, trials, tracker, parent_id)
        print(to_markdown(report))
        print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
        return 0
    selected = select_trials(trials, args.trial, str(sweep.path))
    # A cluster job (--trial) joins the existing parent run as it is; otherwise the parent is (re)described.
    parent_id = tracker.find_parent() if args.trial else None
    parent_id = parent_id or tracker.parent(trials)
    print(
        f"sweep {sweep.name}: {len(selected)} trial(s), experiment {sweep.experiment!r}, parent run {parent_id}, "
        f"tracking {tracker.uri}",
        flush=True,
    )
    try:
        outcomes = SweepRunner(sweep, tracker).run(selected, parent_id, args.max_trials)
    except KeyboardInterrupt:
        tracker.client.set_terminated(parent_id, "KILLED")
        print("interrupted", file=sys.stderr)
        return 130
    failed = sum(o.status == "FAILED" for o in outcomes)
    if args.trial:
        return 1 if failed else 0
    finish_parent(tracker, parent_id, outcomes, len(trials))
    report, paths = report_sweep(sweep, trials, tracker, parent_id)
    print(to_markdown(report))
    print("wrote " + ", ".join(map(str, paths)) + f" (logged to parent run {parent_id})", flush=True)
    return 1 if failed else 0


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
    if args.dry_run and args.report:
        print("--dry-run and --report exclude each other", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.file, [item for group in args.override for item in group], args.config)
        trials = expand(sweep)
        if args.dry_run:
            return _dry_run(sweep, select_trials(trials, args.trial, str(sweep.path)))
        return _run(args, sweep, trials)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
