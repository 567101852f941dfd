"""Training-step cost of HyperET: step time and peak memory of the same LLaVA with each HyperET variant in each
space divided by the model without HyperET.

The model is built from a config with random weights: a CLIP ViT-B/16-shaped tower (hidden 768, 12 layers, 224 px,
patch 16) and a 2-layer Llama (hidden 512, vocabulary 32000), LoRA (r 8) on the LLM, trainable projector, frozen rest;
batch 2 (``--quick``: 4 vision layers). A step is forward + loss, backward, AdamW step, ``zero_grad``. Two baselines:

* ``baseline``: no HyperET. Nothing in the vision tower needs a gradient, so backward stops at the projector.
* ``grad_baseline``: no HyperET, but the vision q/v weights take gradients (computed and dropped, not stepped). Its
  backward runs through the tower exactly as HyperET's must, so ``*_vs_grad_baseline`` isolates what HyperET's own
  weight computation costs; ``time_ratio`` (vs ``baseline``) includes the backward through the tower that training
  anything inside a frozen encoder needs.

HyperET's own work is a few percent of a step, the size of the machine's step-to-step noise, so it is also timed
alone: the forward of every adapted weight and its backward to ``M`` from a fixed upstream gradient, interleaved across
configurations with more rounds (``hyperet_work_ms``); ``isolated_time_ratio_vs_grad_baseline`` is
``1 + hyperet_work_ms / grad_baseline step_ms``. A baseline built twice (``baseline_copy``, timed only) shows the noise.

How large that backward is depends on the shape, so the same step is also counted in FLOPs at the LLaVA-1.5-7B shape
(CLIP ViT-L/14-336 + Llama-2-7B-shaped LLM, batch 4, 448 text tokens) on the meta device: no weights are allocated,
``torch.utils.flop_counter.FlopCounterMode`` counts matmuls and attention of forward + backward (``flop_ratio``).

``full``'s two n³ products per weight do not grow with the batch while the rest of the step does, so
``--batch-scaling B …`` times only ``grad_baseline`` and ``full/hyperbolic`` at each batch size B instead.

Usage: ``python benchmarks/step_overhead.py [--quick] [--json FILE] [--batch-scaling B [B …]]``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.step_overhead`` so children can unpickle
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.step_overhead import main

    raise SystemExit(main())

import torch
from torch import nn

from benchmarks._common import (
    MEMORY_METHOD,
    fmt,
    interleaved_times,
    machine,
    median_ms,
    mem_ratio,
    paired_ratio,
    peak_memory_mib,
    ratio_quartiles,
    script_main,
    table,
    time_method,
)
from benchmarks._models import CLIP_B16, LLAVA_7B, TINY, Shape, adamw_step, batch, build, trainable
from lit_hyperet.hyperet import (
    DEFAULT_TARGETS,
    SPACES,
    VARIANTS,
    HyperETConfig,
    HyperETWeight,
    adapted_modules,
    apply_hyperet,
)

NAME = "step_overhead"
QUICK_SHAPE = replace(CLIP_B16, vision_layers=4)
BASELINES = ("baseline", "grad_baseline")
NOISE = "baseline_copy"  # a second, separately built baseline, timed only: the A/A ratio shows the noise level
# (variant, space) pairs measured: every variant in every space.
CONFIGS: tuple[tuple[str, str], ...] = tuple((v, s) for v in VARIANTS for s in SPACES)
GOALS = {"diagonal": 1.03, "block_diagonal": 1.03, "banded": 1.03, "full": 1.10}
SCALING_KEYS = ("grad_baseline", "full/hyperbolic")  # --batch-scaling: denominator, numerator
VARIANT_KWARGS: dict[str, dict[str, int]] = {"block_diagonal": {"block_size": 4}, "banded": {"band_width": 2}}


def config_key(variant: str | None, space: str | None) -> str:
    """``baseline`` / ``grad_baseline`` or ``variant/space``."""
    return f"{variant}/{space}" if space else str(variant)


def hyperet_config(variant: str, space: str) -> HyperETConfig:
    """The HyperET config of one measured pair."""
    return HyperETConfig(variant=variant, space=space, **VARIANT_KWARGS.get(variant, {}))


def _vision_qv_weights(model: nn.Module) -> list[nn.Parameter]:
    pattern = re.compile(DEFAULT_TARGETS)
    return [m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]


def make_step(key: str, shape: Shape) -> Any:
    """A zero-argument training step for one configuration (model built here)."""
    if key in (*BASELINES, NOISE):
        model = build(shape, None)
        dropped = _vision_qv_weights(model) if key == "grad_baseline" else []
        for p in dropped:
            p.requires_grad_(True)
        params = [p for p in trainable(model) if all(p is not q for q in dropped)]
    else:
        model = build(shape, hyperet_config(*key.split("/")))
        params = trainable(model)
    step, inputs = adamw_step(model, params), batch(shape)  # zero_grad also drops grad_baseline's q/v grads
    return lambda: step(inputs)


def keys() -> list[str]:
    """Every measured configuration, baselines first."""
    return [*BASELINES, *(config_key(v, s) for v, s in CONFIGS)]


def measure_times(shape: Shape, quick: bool, tiny: bool) -> tuple[dict[str, list[float]], int]:
    """Interleaved step times of every configuration in one process, and the number of rounds."""
    steps = {key: make_step(key, shape) for key in [*keys(), NOISE]}
    rounds, warmup = (1, 1) if tiny else (4, 1) if quick else (8, 1)
    return interleaved_times(steps, rounds, warmup=warmup), rounds


def make_hyperet_work(key: str, shape: Shape) -> Any:
    """HyperET's work in one step, alone: every adapted weight (q and v of each vision layer, ``W0`` rows of norm ≈ 1
    as in CLIP) computed and back-propagated to ``M`` from a fixed upstream gradient."""
    variant, space = key.split("/")
    n, count = shape.vision_hidden, 2 * shape.vision_layers
    gen = torch.Generator().manual_seed(0)
    w0 = [torch.randn(n, n, generator=gen) / n**0.5 for _ in range(count)]
    grads = [torch.randn(n, n, generator=gen) for _ in range(count)]
    weights = [HyperETWeight(n, hyperet_config(variant, space)) for _ in range(count)]
    params = [p for w in weights for p in w.parameters()]

    def work() -> None:
        torch.autograd.backward([w(x) for w, x in zip(weights, w0, strict=True)], grads)
        for p in params:
            p.grad = None

    return work


def measure_hyperet_work(shape: Shape, quick: bool, tiny: bool) -> tuple[dict[str, list[float]], int]:
    """Interleaved times of :func:`make_hyperet_work` for every HyperET configuration, and the number of rounds."""
    work = {config_key(v, s): make_hyperet_work(config_key(v, s), shape) for v, s in CONFIGS}
    rounds = 1 if tiny else 6 if quick else 12
    return interleaved_times(work, rounds, warmup=1), rounds


@contextlib.contextmanager
def _meta_friendly_llava() -> Iterator[None]:
    """LLaVA checks that the image-token count matches the image features with a data-dependent assertion, which
    meta tensors cannot evaluate; the counted step needs no such check."""
    from transformers.models.llava import modeling_llava

    saved = modeling_llava.torch_compilable_check
    modeling_llava.torch_compilable_check = lambda *args, **kwargs: None
    try:
        yield
    finally:
        modeling_llava.torch_compilable_check = saved


def count_flops(shape: Shape) -> dict[str, Any]:
    """FLOPs of forward + backward on the meta device: ``{"baseline_tflop", key: {"tflop", "flop_ratio"}}``.

    HyperET is counted in the ``euclidean`` space (the ``hyperbolic`` fast path runs the same matmuls; its clamp
    check needs real values), one variant at a time on one model; the attention mask is left out (all ones anyway).
    """
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode

    model = build(shape, None, device="meta")
    inputs = batch(shape, device="meta")
    inputs.pop("attention_mask")

    def one_step() -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    flops: dict[str, int] = {}
    with _meta_friendly_llava():
        flops["baseline"] = one_step()
        qv = _vision_qv_weights(model)
        for p in qv:
            p.requires_grad_(True)
        flops["grad_baseline"] = one_step()
        for p in qv:
            p.requires_grad_(False)
        for variant in VARIANTS:
            apply_hyperet(model, hyperet_config(variant, "euclidean"))
            flops[variant] = one_step()
            for _, module, _ in list(adapted_modules(model)):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    out: dict[str, Any] = {"shape": asdict(shape), "baseline_tflop": flops["baseline"] / 1e12}
    for key in ("grad_baseline", *VARIANTS):
        out[key] = {"tflop": flops[key] / 1e12, "flop_ratio": flops[key] / flops["baseline"]}
        if key in GOALS:
            out[key]["goal_met"] = out[key]["flop_ratio"] <= GOALS[key]
    return out


def measure_memory(shape: Shape, warmup: int) -> dict[str, dict[str, float]]:
    """Peak memory of each configuration, each in its own child process."""
    names = keys()
    peaks = peak_memory_mib([(make_step, (key, shape)) for key in names], warmup=warmup)
    return dict(zip(names, peaks, strict=True))


def _figures(key: str, base: str, times: dict, memory: dict) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time_ratio": paired_ratio(times[key], times[base]),
        "time_ratio_quartiles": ratio_quartiles(times[key], times[base]),
    }
    total = mem_ratio(memory[key]["total_mib"], memory[base]["total_mib"])
    step = mem_ratio(memory[key]["op_mib"], memory[base]["op_mib"])
    if total is not None:
        out["peak_mem_ratio"] = total
    if step is not None:
        out["step_mem_ratio"] = step
    return out


def run(quick: bool = False, tiny: bool = False) -> dict:
    """``{variant: {space: {time_ratio, peak_mem_ratio, …}}, "baseline": {...}, ...}``."""
    shape = TINY if tiny else QUICK_SHAPE if quick else CLIP_B16
    memory = measure_memory(shape, warmup=1 if tiny or quick else 2)
    times, rounds = measure_times(shape, quick, tiny)
    work, work_rounds = measure_hyperet_work(shape, quick, tiny)
    result: dict[str, Any] = {
        "machine": machine(),
        "shape": asdict(shape),
        "quick": quick,
        "rounds": rounds,
        "work_rounds": work_rounds,
        "time_method": time_method(),
        "memory_method": MEMORY_METHOD,
    }
    for key in BASELINES:
        result[key] = {
            "step_ms": median_ms(times[key]),
            "peak_mib": memory[key]["total_mib"],
            "step_mib": memory[key]["op_mib"],
        }
    result[NOISE] = {
        "step_ms": median_ms(times[NOISE]),
        "time_ratio_vs_baseline": paired_ratio(times[NOISE], times["baseline"]),
        "time_ratio_quartiles_vs_baseline": ratio_quartiles(times[NOISE], times["baseline"]),
    }
    result["grad_baseline"].update(
        {f"{k}_vs_baseline": v for k, v in _figures("grad_baseline", "baseline", times, memory).items()}
    )
    for variant, space in CONFIGS:
        key = config_key(variant, space)
        figures = {
            "step_ms": median_ms(times[key]),
            "peak_mib": memory[key]["total_mib"],
            "step_mib": memory[key]["op_mib"],
            **_figures(key, "baseline", times, memory),
        }
        figures.update({f"{k}_vs_grad_baseline": v for k, v in _figures(key, "grad_baseline", times, memory).items()})
        figures["hyperet_work_ms"] = median_ms(work[key])
        figures["isolated_time_ratio_vs_grad_baseline"] = (
            1 + figures["hyperet_work_ms"] / result["grad_baseline"]["step_ms"]
        )
        figures["goal_time_ratio"] = GOALS[variant]
        figures["goal_met"] = figures["time_ratio"] <= GOALS[variant]
        figures["goal_met_vs_grad_baseline"] = figures["time_ratio_vs_grad_baseline"] <= GOALS[variant]
        figures["goal_met_isolated"] = figures["isolated_time_ratio_vs_grad_baseline"] <= GOALS[variant]
        result.setdefault(variant, {})[space] = figures
    result["llava_7b_flops"] = count_flops(TINY if tiny else LLAVA_7B)
    return result


def describe_model(s: dict[str, Any], with_batch: bool = True) -> str:
    """One line of the measured model's shape (a :class:`Shape` as a dict), with or without its batch size."""
    tokens = f"(1 + {s['image_size'] // s['patch_size']}² image + {s['text_tokens']} text) tokens"
    return (
        f"CLIP tower {s['vision_hidden']}×{s['vision_layers']} layers @ {s['image_size']} px / patch "
        f"{s['patch_size']}, Llama {s['llm_hidden']}×{s['llm_layers']} layers, vocab {s['vocab']}, "
        + (f"batch {s['batch']} × {tokens}" if with_batch else f"{tokens} per sample")
        + ", LoRA r 8"
    )


def batch_scaling(batches: list[int], quick: bool = False, tiny: bool = False) -> dict:
    """Step time of ``full/hyperbolic`` ÷ ``grad_baseline`` at each batch size (interleaved, one process per call)."""
    base = TINY if tiny else QUICK_SHAPE if quick else CLIP_B16
    rounds = 1 if tiny else 3 if quick else 6
    rows: dict[str, dict[str, Any]] = {}
    for size in batches:
        steps = {key: make_step(key, replace(base, batch=size)) for key in SCALING_KEYS}
        times = interleaved_times(steps, rounds, warmup=1)
        den, num = (times[key] for key in SCALING_KEYS)
        ratio = paired_ratio(num, den)
        rows[str(size)] = {
            "grad_baseline_step_ms": median_ms(den),
            "full_step_ms": median_ms(num),
            "time_ratio_vs_grad_baseline": ratio,
            "time_ratio_quartiles_vs_grad_baseline": ratio_quartiles(num, den),
            "goal_time_ratio": GOALS["full"],
            "goal_met": ratio <= GOALS["full"],
        }
        del steps, times
    return {
        "machine": machine(),
        "shape": asdict(base),
        "rounds": rounds,
        "time_method": time_method(),
        "batch_scaling": rows,
    }


def format_batch_scaling(result: dict) -> str:
    """Markdown table of :func:`batch_scaling`."""
    s = result["shape"]
    rows = []
    for size, r in result["batch_scaling"].items():
        q1, q3 = r["time_ratio_quartiles_vs_grad_baseline"]
        met = "met" if r["goal_met"] else "MISSED"
        rows.append([size, fmt(r["grad_baseline_step_ms"], 1), fmt(r["full_step_ms"], 1),
                     f"{fmt(r['time_ratio_vs_grad_baseline'], 3)} ({fmt(q1, 3)}–{fmt(q3, 3)})",
                     f"≤ {r['goal_time_ratio']:.2f}: {met}"])  # fmt: skip
    return "\n".join(
        [
            f"model: {describe_model(s, with_batch=False)}; median of {result['rounds']} rounds per batch size",
            table(["batch", "grad_baseline ms", "full/hyperbolic ms", "ratio (IQR)", "goal"], rows),
            f"time: {result['time_method']}",
        ]
    )


def format_table(result: dict) -> str:
    """Markdown tables: one row per configuration, then the FLOP counts at the LLaVA-1.5-7B shape."""
    if "batch_scaling" in result:
        return format_batch_scaling(result)
    head = [
        "config",
        "step ms",
        "time ratio",
        "time ratio vs grad-baseline (IQR)",
        "HyperET work ms (alone)",
        "isolated ratio vs grad-baseline",
        "peak MiB",
        "peak-mem ratio",
        "peak-mem ratio vs grad-baseline",
        "goal (time ratio): vs baseline / vs grad-baseline / isolated",
    ]
    blank = [""] * (len(head) - 3)
    rows = [["baseline", fmt(result["baseline"]["step_ms"], 1), "1.000", "", "", "",
             fmt(result["baseline"]["peak_mib"], 0), "1.000", "", ""]]  # fmt: skip
    noise = result[NOISE]
    q1, q3 = noise["time_ratio_quartiles_vs_baseline"]
    rows.append(["baseline, second copy (A/A noise)", fmt(noise["step_ms"], 1),
                 f"{fmt(noise['time_ratio_vs_baseline'], 3)} (IQR {fmt(q1, 3)}–{fmt(q3, 3)})", *blank])  # fmt: skip
    g = result["grad_baseline"]
    rows.append(["grad_baseline", fmt(g["step_ms"], 1), fmt(g["time_ratio_vs_baseline"], 3), "1.000", "", "",
                 fmt(g["peak_mib"], 0), fmt(g.get("peak_mem_ratio_vs_baseline"), 3), "1.000", ""])  # fmt: skip
    for variant, space in CONFIGS:
        r = result[variant][space]
        met = ["met" if r[k] else "MISSED" for k in ("goal_met", "goal_met_vs_grad_baseline", "goal_met_isolated")]
        q1, q3 = r["time_ratio_quartiles_vs_grad_baseline"]
        rows.append(
            [
                config_key(variant, space),
                fmt(r["step_ms"], 1),
                fmt(r["time_ratio"], 3),
                f"{fmt(r['time_ratio_vs_grad_baseline'], 3)} ({fmt(q1, 3)}–{fmt(q3, 3)})",
                fmt(r["hyperet_work_ms"], 1),
                fmt(r["isolated_time_ratio_vs_grad_baseline"], 3),
                fmt(r["peak_mib"], 0),
                fmt(r.get("peak_mem_ratio"), 3),
                fmt(r.get("peak_mem_ratio_vs_grad_baseline"), 3),
                f"≤ {r['goal_time_ratio']:.2f}: {' / '.join(met)}",
            ]
        )
    s = result["shape"]
    flops = result["llava_7b_flops"]
    f = flops["shape"]
    flop_rows = [["baseline", fmt(flops["baseline_tflop"], 2), "1.000", ""]]
    for key in ("grad_baseline", *VARIANTS):
        goal = f"≤ {GOALS[key]:.2f}: {'met' if flops[key]['goal_met'] else 'MISSED'}" if key in GOALS else ""
        flop_rows.append([key, fmt(flops[key]["tflop"], 2), fmt(flops[key]["flop_ratio"], 4), goal])
    lines = [
        f"model: {describe_model(s)}; median of {result['rounds']} rounds",
        table(head, rows),
        f"HyperET work (alone): forward of the {2 * s['vision_layers']} adapted q/v weights and backward to M, "
        f"median of {result['work_rounds']} interleaved rounds; isolated ratio = 1 + work / grad_baseline step",
        f"time: {result['time_method']}",
        f"memory: {result['memory_method']}; peak = whole process above the imports (model, optimizer, step)",
        "",
        f"FLOPs of one training step (forward + backward, matmuls and attention) at the shape CLIP "
        f"{f['vision_hidden']}×{f['vision_layers']} @ {f['image_size']} px / patch {f['patch_size']}, Llama "
        f"{f['llm_hidden']}×{f['llm_layers']}, batch {f['batch']} × (1 + {(f['image_size'] // f['patch_size']) ** 2} "
        f"image + {f['text_tokens']} text) tokens, counted on the meta device (HyperET in the euclidean space: "
        "same matmuls as the hyperbolic fast path)",
        table(["config", "TFLOP per step", "FLOP ratio", "goal"], flop_rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""

    def add_arguments(parser: Any) -> None:
        parser.add_argument("--batch-scaling", type=int, nargs="+", metavar="B",
                            help="only grad_baseline and full/hyperbolic, at each of these batch sizes")  # fmt: skip

    def measure(args: Any) -> dict:
        if args.batch_scaling:
            return batch_scaling(args.batch_scaling, quick=args.quick)
        return run(quick=args.quick)

    return script_main(__doc__, "4 vision layers, fewer rounds", measure, format_table, argv, add_arguments)
