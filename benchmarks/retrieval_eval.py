"""Can image–text retrieval be scored at COCO's size on one CPU thread? Wall time and peak memory of
``ImageTextRecall`` (update + compute) on 5,000 images × 32 query embeddings against 25,000 captions (5 per image)
at width 256: random normalised embeddings, the default scorer (cosine, max over the queries), updates of 100 images
and their 500 captions as a validation loop brings them. Goal: under 2 minutes and under 2 GiB peak RSS.

Each chunk size runs in its own fresh process (``spawn``: only torch and the metric imported), which runs one tiny
warm-up evaluation (kernels and code pages load on first use), builds the embeddings, resets the kernel's peak-RSS
mark (``/proc/self/clear_refs`` ← 5), then runs update + compute once; the peak RSS is that process's ``ru_maxrss``
from there on (torch, the inputs, the states the metric keeps and its working memory), the working memory the peak
above the RSS just before the first update. ``--tiny`` (the test suite) runs a small case in this process. Usage:
``python benchmarks/retrieval_eval.py [--quick] [--json FILE] [--chunk-sizes 64 256 1024]``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.retrieval_eval`` so children can unpickle
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.retrieval_eval import main

    raise SystemExit(main())

import torch
import torch.nn.functional as F

from benchmarks._common import _reset_peak_rss, _rss_kib, fmt, machine, script_main, table
from lit_hyperet.tasks.captions.retrieval import DEFAULT_CHUNK_SIZE, ImageTextRecall

NAME = "retrieval_eval"
GOAL_S = 120.0
GOAL_MIB = 2048.0
MEMORY_METHOD = (
    "fresh spawned process per chunk size: a tiny warm-up evaluation, inputs built, peak RSS mark reset "
    "(/proc/self/clear_refs=5), peak = getrusage(RUSAGE_SELF).ru_maxrss during update + compute (whole process: "
    "torch, inputs, metric states, working memory); working = peak - RSS before the first update"
)
TIME_METHOD = "one run of update (all batches) + compute; wall clock (perf_counter) and process CPU time"


@dataclass(frozen=True)
class Size:
    """The evaluation set: images × queries × width against images × captions texts, updates of ``batch`` images."""

    images: int
    queries: int
    width: int
    captions: int
    batch: int


FULL = Size(images=5000, queries=32, width=256, captions=5, batch=100)
QUICK = Size(images=1000, queries=32, width=256, captions=5, batch=100)
TINY = Size(images=40, queries=4, width=16, captions=5, batch=16)


def make_inputs(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random unit-norm query and caption embeddings; caption t belongs to image ``t // captions``."""
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(size.images, size.queries, size.width, generator=g), dim=-1)
    texts = F.normalize(torch.randn(size.images * size.captions, size.width, generator=g), dim=-1)
    return images, texts, torch.arange(size.images).repeat_interleave(size.captions)


def measure(size: Size, chunk_size: int, threads: int = 1) -> dict[str, Any]:
    """Update in batches of ``size.batch`` images and compute, once; seconds and MiB (see the module docstring)."""
    torch.set_num_threads(threads)
    warm = ImageTextRecall(chunk_size=chunk_size)  # first calls load kernels and code pages: not the metric's memory
    warm.update(*make_inputs(TINY))
    warm.compute()
    images, texts, text_image = make_inputs(size)
    gc.collect()
    reset = _reset_peak_rss()
    base_kib = _rss_kib()
    wall, cpu = time.perf_counter(), time.process_time()
    metric = ImageTextRecall(chunk_size=chunk_size)
    for start in range(0, size.images, size.batch):
        stop = min(start + size.batch, size.images)
        lo, hi = start * size.captions, stop * size.captions
        metric.update(images[start:stop], texts[lo:hi], text_image[lo:hi] - start)
    update_s = time.perf_counter() - wall
    result = metric.compute()
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "chunk_size": chunk_size,
        "eval_wall_s": wall_s,
        "update_wall_s": update_s,
        "compute_wall_s": wall_s - update_s,
        "eval_cpu_s": cpu_s,
        "peak_rss_mib": peak_kib / 1024.0,
        "rss_before_update_mib": base_kib / 1024.0,
        "working_mib": max(0, peak_kib - base_kib) / 1024.0,
        "peak_reset": reset,  # False: the peak also holds building the inputs
        "r_mean": float(result["r_mean"]),  # random embeddings: about chance
        "goal_met": wall_s < GOAL_S and peak_kib / 1024.0 < GOAL_MIB,
    }


def in_fresh_process(size: Size, chunk_size: int) -> dict[str, Any]:
    """:func:`measure` in a new spawned process (its RSS is this measurement's alone)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(measure, size, chunk_size, torch.get_num_threads()).result()


def run(quick: bool = False, tiny: bool = False, chunk_sizes: Sequence[int] = (DEFAULT_CHUNK_SIZE,)) -> dict[str, Any]:
    """``{"runs": {chunk_size: figures}, "goal_met": the default chunk size meets both goals, …}``."""
    size = TINY if tiny else QUICK if quick else FULL
    runs = {
        str(chunk): measure(size, chunk, torch.get_num_threads()) if tiny else in_fresh_process(size, chunk)
        for chunk in chunk_sizes
    }
    default = runs.get(str(DEFAULT_CHUNK_SIZE))
    return {
        "machine": machine(),
        "quick": quick,
        "tiny": tiny,
        **asdict(size),
        "texts": size.images * size.captions,
        "default_chunk_size": DEFAULT_CHUNK_SIZE,
        "runs": runs,
        "goal_wall_s": GOAL_S,
        "goal_peak_rss_mib": GOAL_MIB,
        "goal_met": bool(default and default["goal_met"]),
        "in_process": tiny,
        "memory_method": MEMORY_METHOD if not tiny else "this process: " + MEMORY_METHOD.split(": ", 1)[1],
        "time_method": TIME_METHOD,
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per chunk size."""
    head = ["chunk size", "update + compute s (wall)", "of which compute s", "CPU s", "peak RSS MiB",
            "working MiB", "goal (< 120 s, < 2048 MiB)"]  # fmt: skip
    rows = []
    for run_ in result["runs"].values():
        default = " (default)" if run_["chunk_size"] == result["default_chunk_size"] else ""
        rows.append([f"{run_['chunk_size']}{default}", fmt(run_["eval_wall_s"], 2), fmt(run_["compute_wall_s"], 2),
                     fmt(run_["eval_cpu_s"], 2), fmt(run_["peak_rss_mib"], 0), fmt(run_["working_mib"], 0),
                     "met" if run_["goal_met"] else "MISSED"])  # fmt: skip
    where = "this process" if result["in_process"] else "a fresh process per chunk size"
    return "\n".join(
        [
            f"{result['images']:,} images × {result['queries']} queries against {result['texts']:,} captions, width "
            f"{result['width']}, updates of {result['batch']} images; default scorer; "
            f"{result['machine']['torch_threads']} torch thread(s); {where}",
            table(head, rows),
            f"memory: {result['memory_method']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[DEFAULT_CHUNK_SIZE])
        parser.add_argument("--tiny", action="store_true", help="a small case in this process (the test suite)")

    def run_args(args: argparse.Namespace) -> dict[str, Any]:
        return run(quick=args.quick, tiny=args.tiny, chunk_sizes=args.chunk_sizes)

    quick = "1,000 images against 5,000 captions"
    return script_main(__doc__, quick, run_args, format_table, argv, add_arguments=add_arguments)
