"""Run every benchmark and print its table: ``python benchmarks/run.py [--quick] [--json OUT] [--only NAME …]
[--threads N]``.

Torch runs one thread by default (``--threads``): timings then use the process's CPU time, which another process's
load on a shared machine does not inflate (see :mod:`benchmarks._common`); the measurement children follow suit.

Each benchmark is a module in :data:`REGISTRY` exposing ``run(quick: bool, tiny: bool = False) -> dict`` and
``format_table(result) -> str``, and optionally ``available() -> str | None`` (a reason to skip, e.g. no CUDA). To add
one, write the module and add its name here. The JSON maps each benchmark name to its figures, or to
``{"skipped": reason}`` / ``{"error": message}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.run``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.run import main

    raise SystemExit(main())

from benchmarks._common import THREADS_HELP, machine, quiet, set_threads, steady_allocator

REGISTRY: tuple[str, ...] = (
    "adapter_ops",
    "step_overhead",
    "merged_inference",
    "data_throughput",
    "retrieval_eval",
    "gpu_step",
    "strategy_step",
    "fsdp_step",
)


def load(name: str) -> ModuleType:
    """The benchmark module ``benchmarks.<name>``."""
    return importlib.import_module(f"benchmarks.{name}")


def run_one(name: str, quick: bool, tiny: bool = False) -> dict[str, Any]:
    """Figures of one benchmark, ``{"skipped": …}`` when it cannot run here, ``{"error": …}`` when it failed."""
    try:
        module = load(name)
    except ImportError as err:  # a piece it needs is not there (yet)
        return {"skipped": f"cannot import: {err}"}
    available: Callable[[], str | None] = getattr(module, "available", lambda: None)
    reason = available()
    if reason:
        return {"skipped": reason}
    start, load_before = time.perf_counter(), list(os.getloadavg())
    try:
        result = module.run(quick=quick, tiny=tiny)
    except Exception as err:  # keep the other benchmarks' figures
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}
    result["wall_s"] = time.perf_counter() - start
    result["load_avg_before_1_5_15m"] = load_before  # other processes on the machine skew timings
    result["load_avg_after_1_5_15m"] = list(os.getloadavg())
    return result


def render(name: str, result: dict[str, Any]) -> str:
    """A benchmark's section: its table, or why it has none."""
    title = f"## {name}"
    if "skipped" in result:
        return f"{title}\n\nskipped: {result['skipped']}\n"
    if "error" in result:
        return f"{title}\n\nerror: {result['error']}\n"
    load_avg = ", ".join(f"{x:.2f}" for x in result["load_avg_before_1_5_15m"])
    return f"{title} ({result['wall_s']:.0f} s; load average before: {load_avg})\n\n{load(name).format_table(result)}\n"


def run_all(names: tuple[str, ...] | list[str], quick: bool, tiny: bool = False, echo: bool = True) -> dict[str, Any]:
    """Run ``names`` in order; print each section as it finishes when ``echo``."""
    results: dict[str, Any] = {}
    for name in names:
        if echo:
            print(f"[run] {name} …", file=sys.stderr, flush=True)
        results[name] = run_one(name, quick, tiny)
        if echo:
            print(render(name, results[name]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 1 when a benchmark raised."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller models (< 5 min on 2 cores)")
    parser.add_argument("--json", type=Path, help="write {benchmark: figures} as JSON to this file")
    parser.add_argument("--only", nargs="+", choices=REGISTRY, help="run only these benchmarks")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    steady_allocator()
    quiet()
    start = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    results = run_all(args.only or REGISTRY, args.quick)
    print(
        f"total: {time.perf_counter() - start:.0f} s ({'quick' if args.quick else 'full'}); load average now: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results.values()) else 0
