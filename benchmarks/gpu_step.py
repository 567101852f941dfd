"""One-GPU training step of a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14-336 tower + Llama-2-7B-shaped LLM, random
weights from config, bf16 weights): LoRA (r 8) on the LLM, trainable projector, with and without HyperET (diagonal,
hyperbolic) on the tower's q/v. Reports tokens/s, peak GPU memory and MFU against the card's dense bf16 peak.

FLOPs per step are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one step (matmuls and
attention, forward and backward as executed — a frozen LLM needs no weight gradients, so this is below 6·N·tokens).
The peak comes from the device name (H100 SXM / H200: 989 TFLOP/s, H100 PCIe: 756, A100: 312) or
``BENCH_PEAK_BF16_TFLOPS``. Runs only when CUDA is available (``tiny=True`` exercises the code on CPU for tests).

Usage: ``python benchmarks/gpu_step.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.gpu_step``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.gpu_step import main

    raise SystemExit(main())

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import fmt, machine, script_main, table
from benchmarks._models import LLAVA_7B, TINY, Shape, adamw_step, batch, build, trainable
from lit_hyperet.hyperet import HyperETConfig

NAME = "gpu_step"
QUICK_SHAPE = replace(LLAVA_7B, batch=2)
CONFIGS: dict[str, HyperETConfig | None] = {"no_hyperet": None, "diagonal": HyperETConfig(variant="diagonal")}
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0))


def available() -> str | None:
    """``None`` when this benchmark can run, else why not."""
    return None if torch.cuda.is_available() else "no CUDA device"


def peak_flops(device: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device (env ``BENCH_PEAK_BF16_TFLOPS`` overrides), ``None`` when unknown."""
    if os.environ.get("BENCH_PEAK_BF16_TFLOPS"):
        return 1e12 * float(os.environ["BENCH_PEAK_BF16_TFLOPS"])
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((1e12 * tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(shape: Shape, hyperet: HyperETConfig | None, device: str, dtype: torch.dtype) -> Any:
    """A zero-argument training step (forward, backward, AdamW, zero_grad) of a freshly built model."""
    model = build(shape, hyperet, device=device, dtype=dtype)
    step, inputs = adamw_step(model, trainable(model)), batch(shape, device=device, dtype=dtype)
    return lambda: step(inputs)


def count_flops(step: Any) -> int:
    """FLOPs of one step as executed (``FlopCounterMode``)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def measure(shape: Shape, hyperet: HyperETConfig | None, device: str, steps: int, warmup: int) -> dict[str, float]:
    """Step time, tokens/s, peak memory and MFU of one configuration."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    step = make_step(shape, hyperet, device, dtype)
    for _ in range(warmup):
        step()
    flops = count_flops(step)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = shape.batch * (1 + shape.image_tokens + shape.text_tokens)
    out = {
        "step_ms": 1e3 * seconds,
        "tokens_per_s": tokens / seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
    }
    if device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    peak = peak_flops(device)
    if peak is not None:
        out["mfu"] = flops / seconds / peak
    del step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def run(quick: bool = False, tiny: bool = False) -> dict:
    """``{config: {step_ms, tokens_per_s, peak_mem_gib, mfu, …}, "time_ratio": diagonal ÷ no_hyperet, …}``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not tiny:
        raise RuntimeError("gpu_step needs CUDA (tiny=True runs the code path on CPU for tests)")
    shape = TINY if tiny else QUICK_SHAPE if quick else LLAVA_7B
    steps, warmup = (2, 1) if tiny else (5, 2) if quick else (15, 3)
    result: dict[str, Any] = {
        "machine": machine(),
        "shape": asdict(shape),
        "quick": quick,
        "device": device,
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "steps": steps,
    }
    for name, config in CONFIGS.items():
        result[name] = measure(shape, config, device, steps, warmup)
    result["time_ratio"] = result["diagonal"]["step_ms"] / result["no_hyperet"]["step_ms"]
    if "peak_mem_gib" in result["diagonal"]:
        result["peak_mem_ratio"] = result["diagonal"]["peak_mem_gib"] / result["no_hyperet"]["peak_mem_gib"]
    return result


def format_table(result: dict) -> str:
    """Markdown table: one row per configuration."""
    head = ["config", "step ms", "tokens/s", "TFLOP/step", "TFLOP/s", "MFU", "peak GiB"]
    rows = [
        [
            name,
            fmt(r["step_ms"], 1),
            fmt(r["tokens_per_s"], 0),
            fmt(r["tflops_per_step"], 2),
            fmt(r["achieved_tflops"], 1),
            fmt(r.get("mfu"), 3),
            fmt(r.get("peak_mem_gib"), 1),
        ]
        for name, r in ((n, result[n]) for n in CONFIGS)
    ]
    s = result["shape"]
    return "\n".join(
        [
            f"{result['device']} {result['machine'].get('gpu', '')}, {result['dtype']}; batch {s['batch']} × "
            f"(1 + {s['image_size'] // s['patch_size']}² image + {s['text_tokens']} text) tokens; median of "
            f"{result['steps']} steps (run one after the other, not interleaved)",
            table(head, rows),
            f"HyperET diagonal ÷ no HyperET: time {fmt(result['time_ratio'], 3)}, peak memory "
            f"{fmt(result.get('peak_mem_ratio'), 3)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""
    return script_main(
        __doc__, "batch 2, fewer steps", lambda args: run(quick=args.quick), format_table, argv, available=available
    )
