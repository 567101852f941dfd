"""Shared benchmark helpers: interleaved timing, per-configuration peak memory in fresh processes, machine facts.

Timing: the sides of a comparison run interleaved in one process (A B C, then C B A, …) after warm-up rounds, and a
time ratio is the median over rounds of the per-round ratio, so slow drifts of the machine hit both sides alike and no
side always runs right after the same other one. The clock is the process's CPU time when torch runs one thread (the
default of ``run.py``): on a shared machine another process's load then delays a call without being counted in it;
with more threads it is wall-clock time (CPU time would count OpenMP spin-waiting). The command-line entry points
also keep freed memory in glibc's heap (:func:`steady_allocator`) so steps do not fault in fresh pages each time.

Peak memory (CPU): PyTorch's CPU allocator has no resettable peak counter and ``tracemalloc`` does not see tensor
storage, so each configuration runs in its own child process (forked from a forkserver that has only imported the
modules). The child builds its inputs, runs the operation a few times to warm up, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs`` ← 5; without it the warm-up and setup peaks would hide the operation's), takes its current
RSS as the baseline, runs the operation once more and reports ``ru_maxrss − baseline`` (``getrusage(RUSAGE_SELF)``).
glibc's mmap threshold is pinned to 64 KiB in the child so freed tensors go back to the kernel at once instead of
staying in the heap for reuse, which would hide them from RSS. Resolution: the kernel batches RSS counters per CPU,
so figures are good to about ±0.25 MiB; ratios are left out when either side is under 1 MiB.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

MEMORY_METHOD = (
    "peak RSS above baseline in a fresh child process per configuration: warm-up calls, reset peak RSS "
    "(/proc/self/clear_refs=5), baseline = current RSS, one call, getrusage(RUSAGE_SELF).ru_maxrss - baseline; "
    "glibc mmap threshold pinned to 64 KiB; resolution about 0.25 MiB (per-CPU batched RSS counters), ratios "
    "only where both sides are >= 1 MiB"
)
TIME_METHOD = (
    "sides interleaved in one process (A B C, C B A, …) after warm-up; ratio = median over rounds of the per-round "
    "ratio"
)
_STEADY = False  # set by steady_allocator()

# The forkserver imports these once (missing ones are skipped); measurement children are forked with them loaded.
PRELOAD = ["torch", "geoopt", "lit_hyperet.hyperet", "transformers", "peft", "lit_hyperet.models.llava.build"]
PRELOAD += ["benchmarks._models", "benchmarks.adapter_ops", "benchmarks.step_overhead"]
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
WARMUP_CALLS = 3
# Warm-up stops after a call (or round) this slow: JIT specialisation and first-touch costs are then negligible.
SLOW_CALL_S = 2.0


# ----------------------------------------------------------------------------- timing


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


THREADS_HELP = "torch threads (default 1: timings on the process CPU-time clock; more: wall clock)"


def set_threads(threads: int) -> None:
    """Torch threads here and in the measurement children (``OMP_NUM_THREADS`` before the forkserver starts)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def steady_allocator() -> None:
    """For the timing process (call before building models): glibc keeps freed memory for reuse (no ``mmap`` for
    large blocks, no trimming), as a caching allocator would, instead of returning it and faulting in fresh zeroed
    pages on every step. On the CPU step_overhead shape this cut page faults about 5× and the spread across rounds.
    The memory-measurement children are separate processes (forkserver) and keep their own settings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TOP_PAD, 1 << 28)
    except (OSError, AttributeError):
        return
    global _STEADY
    _STEADY = True


def clock_name() -> str:
    """``cpu`` (this process's CPU time) when torch runs one thread, else ``wall``."""
    return "cpu" if _torch_threads() == 1 else "wall"


def time_method() -> str:
    """:data:`TIME_METHOD` plus the clock in use."""
    clock = (
        "process CPU time (1 torch thread)"
        if clock_name() == "cpu"
        else f"wall-clock time ({_torch_threads()} torch threads)"
    )
    heap = "; freed memory kept in the heap (steady_allocator)" if _STEADY else ""
    return f"{TIME_METHOD}; clock: {clock}{heap}"


def clock() -> Callable[[], float]:
    """The clock :func:`clock_name` names: ``time.process_time`` or ``time.perf_counter``."""
    return time.process_time if clock_name() == "cpu" else time.perf_counter


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call on the clock of :func:`clock_name`."""
    now = clock()
    start = now()
    fn()
    return now() - start


def warm_up(fns: Sequence[Callable[[], Any]], calls: int, enough_s: float = SLOW_CALL_S) -> None:
    """Call each of ``fns`` up to ``calls`` times, one at a time, stopping early once a round is slow anyway."""
    for _ in range(calls):
        if sum(time_call(fn) for fn in fns) > enough_s:
            break


def interleaved_times(sides: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run ``sides`` as A B C … for up to ``warmup`` discarded rounds (fewer when a round takes over
    :data:`SLOW_CALL_S`: one-off costs are then negligible), then ``rounds`` timed rounds in alternating order
    (A B C, C B A, …); seconds per call."""
    warm_up(list(sides.values()), warmup)
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(rounds):
        for name in order if i % 2 == 0 else reversed(order):
            times[name].append(time_call(sides[name]))
    return times


def rounds_for(sides: dict[str, Callable[[], Any]], budget_s: float, lo: int, hi: int) -> int:
    """Rounds that fit ``budget_s`` given one (also warming) round of ``sides``, clamped to ``[lo, hi]``."""
    one_round = sum(time_call(fn) for fn in sides.values())
    return max(lo, min(hi, int(budget_s / max(one_round, 1e-9))))


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[i] / den[i]``."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def ratio_quartiles(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """First and third quartile of the per-round ratios ``num[i] / den[i]`` (the spread of the median's inputs)."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    if len(ratios) < 2:
        return [ratios[0], ratios[0]]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return [q1, q3]


def median_ms(times: Sequence[float]) -> float:
    """Median of ``times`` (seconds) in milliseconds."""
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------- memory


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _pin_mmap_threshold() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):
        pass


def _peak_child(
    setup: Callable[..., Callable[[], Any]], args: tuple, warmup: int, threads: int | None = None
) -> dict[str, float]:
    """In the child: build the operation, warm up, reset the peak, run once.

    Returns ``op_mib`` (peak above the RSS just before the measured call: the operation's working memory) and
    ``total_mib`` (peak above the RSS at child start: inputs, model, optimizer state and working memory).
    """
    _pin_mmap_threshold()
    if threads is not None:  # as many torch threads as the parent (per-thread scratch buffers count in RSS)
        import torch

        torch.set_num_threads(threads)
    start = _rss_kib()
    op = setup(*args)
    warm_up([op], warmup)  # TorchScript'd geoopt maps profile and recompile on their first calls
    gc.collect()
    reset = _reset_peak_rss()
    base = _rss_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    op()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"op_mib": max(0, peak - base) / 1024.0, "total_mib": max(0, peak - start) / 1024.0}


@lru_cache(maxsize=1)
def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def peak_memory_mib(
    jobs: Sequence[tuple[Callable[..., Callable[[], Any]], tuple]], warmup: int = WARMUP_CALLS
) -> list[dict[str, float]]:
    """Peak MiB (see :func:`_peak_child`) of each ``(setup, args)`` job, each in its own fresh child process;
    ``setup(*args)`` returns the zero-argument operation.

    ``setup`` must be a module-level function (it is pickled by reference). Each job runs after up to ``warmup``
    unmeasured calls. Two children run at a time: RSS is per process, so they do not see each other's memory.
    """
    workers = max(1, min(2, os.cpu_count() or 1))
    threads = _torch_threads()
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context(), max_tasks_per_child=1) as pool:
        futures = [pool.submit(_peak_child, setup, args, warmup, threads) for setup, args in jobs]
        return [f.result() for f in futures]


def mem_ratio(num_mib: float, den_mib: float, floor_mib: float = 1.0) -> float | None:
    """``num / den`` when both are well above the resolution (≥ ``floor_mib``), else ``None``."""
    return num_mib / den_mib if min(num_mib, den_mib) >= floor_mib else None


# ----------------------------------------------------------------------------- machine and output


def quiet() -> None:
    """No hub access, no progress bars, no known third-party warnings in the tables (children inherit the env)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::UserWarning")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, versions and the load average (other processes skew timings)."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clock": clock_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1_5_15m": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell (``n/a`` for ``None`` or non-finite)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, with blank lines around it so text next to it stays out of it (rows shorter
    than the header end in empty cells)."""
    import pandas as pd

    from lit_hyperet.tables import markdown_table

    cells = [[*row, *[""] * (len(header) - len(row))] for row in rows]
    frame = pd.DataFrame(cells, columns=list(header), dtype=object)
    return "\n" + markdown_table(frame) + "\n"


def script_main(
    doc: str,
    quick_help: str,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    available: Callable[[], str | None] | None = None,
) -> int:
    """The command line every benchmark script shares: ``[--quick] [--json OUT] [--threads N]`` (plus its own
    options), the timing set-up, the table on stdout and the figures as JSON."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    steady_allocator()
    quiet()
    reason = available() if available else None
    if reason:
        print(f"skipped: {reason}")
        return 0
    result = run(args)
    print(f"machine: {result['machine']}")
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0
