"""FSDP2 training step of a LLaVA-1.5-7B-shaped model (CLIP ViT-L/14-336 tower + Llama-2-7B-shaped LLM, random
weights from config) on 1..N GPUs, sharded by the suite's own code (:func:`lit_hyperet.sharding.shard_model`, as
``configs/strategy/fsdp.yaml`` does): HyperET diagonal (hyperbolic) on the tower's q/v, trainable projector, LoRA
(r 8) on the LLM, bf16-mixed (bf16 compute, float32 master weights and gradient reduction), AdamW.

Each rank runs its own batch (data parallel). Reports the step time (slowest rank, median over steps), tokens/s of
the whole job, peak GPU memory per GPU (largest rank) and MFU. FLOPs per rank are counted as executed
(``torch.utils.flop_counter.FlopCounterMode`` over one step); the peak comes from the device name as in
:mod:`benchmarks.gpu_step`. Each rank builds the full float32 model on its GPU before sharding (28 GiB at the 7B
shape), so a GPU needs that much free memory at start-up.

Usage (one node, N GPUs; ``--nproc-per-node 1`` for one GPU)::

    torchrun --nproc-per-node N benchmarks/fsdp_step.py [--quick] [--activation-checkpointing] [--json FILE]

``--tiny`` runs the same code at a tiny shape on CPU processes (gloo), e.g. under ``torchrun --nproc-per-node 2``.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.fsdp_step``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.fsdp_step import main

    raise SystemExit(main())

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import fmt, machine, script_main, table
from benchmarks._models import LLAVA_7B, TINY, adamw_step, batch, build, trainable
from benchmarks.gpu_step import peak_flops
from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.sharding import shard_model

NAME = "fsdp_step"
QUICK_SHAPE = replace(LLAVA_7B, batch=2)


def available() -> str | None:
    """``None`` when this benchmark can run, else why not."""
    return None if torch.cuda.is_available() else "no CUDA device"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(device_type: str) -> bool:
    """Join the job's process group (torchrun's environment, else a group of one); ``True`` when created here."""
    if dist.is_initialized():
        return False
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return True


def _max_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(quick: bool = False, tiny: bool = False, activation_checkpointing: bool = False) -> dict[str, Any]:
    """Figures of the FSDP2 step over every process of the job (a collective: every rank calls it)."""
    device_type = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if device_type == "cpu" and not tiny:
        raise RuntimeError("fsdp_step needs CUDA (tiny=True runs the code path on CPU processes)")
    created = _join(device_type)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device_type == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        shape = TINY if tiny else QUICK_SHAPE if quick else LLAVA_7B
        steps, warmup = (2, 1) if tiny else (5, 2) if quick else (15, 3)
        precision = "bf16-mixed" if device.type == "cuda" else "32-true"
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("data_parallel",))
        model = build(shape, HyperETConfig(variant="diagonal"), device=str(device), dtype=torch.float32)
        if activation_checkpointing:
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        shard_model(model, mesh["data_parallel"], precision)
        step = adamw_step(model, trainable(model))
        inputs = {**batch(shape, device=str(device), seed=rank), "use_cache": False}
        for _ in range(warmup):
            step(inputs)
        counter = FlopCounterMode(display=False)
        with counter:
            step(inputs)
        flops = int(counter.get_total_flops())
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            dist.barrier()
            start = time.perf_counter()
            step(inputs)
            _sync(device)
            times.append(_max_over_ranks(time.perf_counter() - start))
        seconds = statistics.median(times)
        tokens = world * shape.batch * (1 + shape.image_tokens + shape.text_tokens)
        result: dict[str, Any] = {
            "machine": machine(),
            "shape": asdict(shape),
            "world_size": world,
            "device": device.type,
            "precision": precision,
            "activation_checkpointing": activation_checkpointing,
            "steps": steps,
            "step_ms": 1e3 * seconds,
            "tokens_per_s": tokens / seconds,
            "tflops_per_step_per_rank": _max_over_ranks(flops) / 1e12,
        }
        if device.type == "cuda":
            result["peak_mem_gib_per_gpu"] = _max_over_ranks(torch.cuda.max_memory_allocated(device) / 2**30)
        peak = peak_flops(device.type)
        if peak is not None:
            result["mfu"] = flops / seconds / peak
        return result
    finally:
        if created:
            dist.destroy_process_group()


def format_table(result: dict) -> str:
    """Markdown table: one row for the job."""
    s = result["shape"]
    head = ["GPUs" if result["device"] == "cuda" else "processes", "step ms", "tokens/s", "TFLOP/step/rank"]
    head += ["MFU", "peak GiB/GPU"]
    row = [
        str(result["world_size"]),
        fmt(result["step_ms"], 1),
        fmt(result["tokens_per_s"], 0),
        fmt(result["tflops_per_step_per_rank"], 3),
        fmt(result.get("mfu"), 3),
        fmt(result.get("peak_mem_gib_per_gpu"), 1),
    ]
    checkpointing = "with" if result["activation_checkpointing"] else "without"
    return "\n".join(
        [
            f"FSDP2 {result['device']} {result['machine'].get('gpu', '')}, {result['precision']}, {checkpointing} "
            f"activation checkpointing; per rank batch {s['batch']} × (1 + {s['image_size'] // s['patch_size']}² "
            f"image + {s['text_tokens']} text) tokens; median of {result['steps']} steps (slowest rank)",
            table(head, [row]),
        ]
    )


def _add_arguments(parser: Any) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny shape on CPU processes (gloo): checks the code path")
    parser.add_argument("--activation-checkpointing", action="store_true", help="transformers' own, non-reentrant")


def main(argv: list[str] | None = None) -> int:
    """CLI: every rank runs; rank 0 prints the table and writes the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank's process
        if "--json" in argv:
            i = argv.index("--json")
            del argv[i : i + 2]
    tiny = "--tiny" in argv
    return script_main(
        __doc__,
        "batch 2, fewer steps",
        lambda args: run(quick=args.quick, tiny=args.tiny, activation_checkpointing=args.activation_checkpointing),
        format_table,
        argv,
        add_arguments=_add_arguments,
        available=None if tiny else available,
    )
