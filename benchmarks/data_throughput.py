"""Is the data pipeline fast enough? Samples/s of the ScienceQA datamodule's training loader (image loading and
processing, the sample's stored token ids and labels, collation; ``num_workers=0``, one process) on the synthetic
demo data, divided by the samples/s of a training step of the tiny model (HyperET diagonal + LoRA + projector, AdamW)
on the same batches. Goal: ≥ 10, i.e. one loader process keeps ten training processes of this size busy.

Chat templating, tokenization and label masks run once per sample when the datamodule sets up (the dataset keeps the
result, :mod:`lit_hyperet.data.token_store`); that one-time cost is reported per sample beside the ratio, not in it.
Each round fetches one batch (as the DataLoader does with ``num_workers=0``: ``collate_fn([dataset[i] …])``, timed
in two parts) and then trains on it; the ratio is the median over rounds of step time ÷ fetch time. Clock: process CPU
time with one torch thread (see :mod:`benchmarks._common`).
Usage: ``python benchmarks/data_throughput.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.data_throughput``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.data_throughput import main

    raise SystemExit(main())

import torch
from torch import nn

from benchmarks._common import clock, clock_name, fmt, machine, script_main, table, time_call
from benchmarks._models import adamw_step
from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.models.llava.build import LoraSettings, build_llava
from lit_hyperet.models.llava.sources import TinyLlava
from lit_hyperet.tasks.scienceqa.datamodule import ScienceQADataModule
from lit_hyperet.tasks.scienceqa.demo import make_demo_data

NAME = "data_throughput"
GOAL = 10.0
BATCH_SIZE = 8


def train_loader(data_dir: Path, processor: Any, batch_size: int) -> tuple[torch.utils.data.DataLoader, float]:
    """The ScienceQA datamodule's training DataLoader (train split only, one process) and the seconds its setup took
    (reading the data, templating and tokenizing every sample once)."""
    dm = ScienceQADataModule(
        str(data_dir),
        val_split=None,
        test_split=None,
        predict_split=None,
        processor=processor,
        batch_size=batch_size,
        num_workers=0,
    )
    setup_s = time_call(lambda: dm.setup("fit"))
    return dm.train_dataloader(), setup_s


def train_step(model: nn.Module) -> Any:
    """One training step (forward, backward, AdamW, zero_grad) on a collated batch."""
    step = adamw_step(model, [p for p in model.parameters() if p.requires_grad])
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")
    return lambda batch: step({k: batch[k] for k in keys if k in batch})


def measure(loader: torch.utils.data.DataLoader, step: Any, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Per round: seconds to fetch one batch, split into reading its samples (``dataset[i]``: image loading and
    processing, stored token ids and labels) and collating them, seconds to train on it, and its size.

    Fetching is what the DataLoader does with ``num_workers=0``: ``collate_fn([dataset[i] for i in indices])``, with
    the indices drawn from its batch sampler.
    """
    now = clock()
    out: dict[str, list[float]] = {"getitem": [], "collate": [], "fetch": [], "step": [], "size": []}
    indices = iter(loader.batch_sampler)
    for i in range(warmup + rounds):
        try:
            batch_indices = next(indices)
        except StopIteration:
            indices = iter(loader.batch_sampler)
            batch_indices = next(indices)
        start = now()
        samples = [loader.dataset[j] for j in batch_indices]
        read = now()
        batch = loader.collate_fn(samples)
        fetched = now()
        step(batch)
        done = now()
        if i >= warmup:
            out["getitem"].append(read - start)
            out["collate"].append(fetched - read)
            out["fetch"].append(fetched - start)
            out["step"].append(done - fetched)
            out["size"].append(float(batch["input_ids"].shape[0]))
    return out


def run(quick: bool = False, tiny: bool = False) -> dict:
    """``{"ratio": data samples/s ÷ step samples/s, "data_samples_per_s", "step_samples_per_s", ...}``."""
    problems = 40 if tiny else 200 if quick else 600
    rounds, warmup = (3, 1) if tiny else (15, 2) if quick else (60, 3)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        source = TinyLlava(path=str(Path(tmp) / "tiny_model"), vision="clip", seed=0)
        model = build_llava(
            source,
            HyperETConfig(variant="diagonal"),
            train_projector=True,
            lora=LoraSettings(r=8, alpha=16, dropout=0.0),
        )
        data_dir = make_demo_data(Path(tmp) / "demo_data", num_problems=problems, seed=0)
        loader, setup_s = train_loader(data_dir, source.load_processor(), BATCH_SIZE)
        train_samples = len(loader.dataset)
        times = measure(loader, train_step(model), rounds, warmup)
    size, fetch, step = sum(times["size"]), sum(times["fetch"]), sum(times["step"])
    ratio = statistics.median(s / f for s, f in zip(times["step"], times["fetch"], strict=True))
    return {
        "machine": machine(),
        "quick": quick,
        "batch_size": BATCH_SIZE,
        "num_workers": 0,
        "demo_problems": problems,
        "rounds": rounds,
        "data_samples_per_s": size / fetch,
        "step_samples_per_s": size / step,
        "fetch_ms_median": 1e3 * statistics.median(times["fetch"]),
        "getitem_ms_per_sample": 1e3 * sum(times["getitem"]) / size,
        "collate_ms_per_batch": 1e3 * statistics.median(times["collate"]),
        "step_ms_median": 1e3 * statistics.median(times["step"]),
        # once per run, at setup: reading the data file, chat template, tokenization and label masks of every sample
        "setup_ms_per_sample": 1e3 * setup_s / train_samples,
        "throughput_ratio": ratio,
        "goal_ratio": GOAL,
        "goal_met": ratio >= GOAL,
        # loader processes (num_workers) on otherwise idle cores that would reach the goal if encoding scales per worker
        "workers_for_goal": math.ceil(GOAL / ratio),
        "clock": clock_name(),
    }


def format_table(result: dict) -> str:
    """Markdown table of both throughputs, the split of the fetch, and their ratio."""
    rows = [
        ["ScienceQA datamodule: fetch = dataset[i] + collate", fmt(result["data_samples_per_s"], 1),
         fmt(result["fetch_ms_median"], 2)],
        ["  of which dataset[i] (image + stored text)", "", fmt(result["getitem_ms_per_sample"], 2) + " per sample"],
        ["  of which collate", "", fmt(result["collate_ms_per_batch"], 2)],
        ["training step, tiny model (HyperET + LoRA)", fmt(result["step_samples_per_s"], 1),
         fmt(result["step_ms_median"], 2)],
    ]  # fmt: skip
    met = "met" if result["goal_met"] else "MISSED"
    return "\n".join(
        [
            f"batch {result['batch_size']}, num_workers {result['num_workers']}, demo data ({result['demo_problems']} "
            f"problems), {result['rounds']} rounds, clock: {result['clock']}",
            table(["stage", "samples/s", "ms per batch (median)"], rows),
            f"ratio data/step (median of per-batch step÷fetch): {fmt(result['throughput_ratio'], 2)} "
            f"(goal ≥ {result['goal_ratio']:.0f}: {met}; loader workers on free cores for the goal: "
            f"{result['workers_for_goal']})",
            f"once at setup, not in the ratio: {fmt(result['setup_ms_per_sample'], 2)} ms per sample (read, chat "
            "template, tokenize, label masks)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""
    return script_main(__doc__, "fewer problems and rounds", lambda args: run(quick=args.quick), format_table, argv)
