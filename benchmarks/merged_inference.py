"""Generation time after export: a model with HyperET and LoRA merged into its weights and saved as ``export`` does
(``merge_adapters`` + ``save_pretrained``), loaded back with plain ``transformers``, divided by the same architecture
that never had adapters. Goal: 1.00 within noise.

The baseline is saved and loaded back like the exported model (loading may map the safetensors file, so both sides
are loaded alike). Also shown: a second, separately loaded copy of the baseline (A/A: what noise alone does to a
ratio), the unmerged model (HyperET parametrization recomputing the q/v weights on every forward and peft LoRA
branches) against the same baseline, and the largest logit difference between exported and unmerged (the merge must
not change the function).
"Within noise" means the interquartile range of the per-round ratios contains 1.00, or the median is within 2 %.
Models are config-built with random weights (CLIP ViT-B/16-shaped tower, 2-layer Llama with hidden 512; ``--quick``: 4
vision layers); trainable tensors are perturbed from their initial values so the merge really changes the weights.
Generation is greedy with a fixed number of new tokens.

Usage: ``python benchmarks/merged_inference.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.merged_inference``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.merged_inference import main

    raise SystemExit(main())

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from benchmarks._common import (
    fmt,
    interleaved_times,
    machine,
    median_ms,
    paired_ratio,
    ratio_quartiles,
    script_main,
    table,
    time_method,
)
from benchmarks._models import CLIP_B16, TINY, ConfigLlava, Shape, batch, build, perturb_trainable
from lit_hyperet.hyperet import HyperETConfig
from lit_hyperet.models.llava.merge import merge_adapters

NAME = "merged_inference"
QUICK_SHAPE = replace(CLIP_B16, vision_layers=4, batch=1, text_tokens=32)
FULL_SHAPE = replace(CLIP_B16, batch=1, text_tokens=32)
SIDES = ("baseline", "baseline_copy", "merged", "unmerged")
GOAL = 1.00


def adapted(shape: Shape) -> nn.Module:
    """HyperET (diagonal, hyperbolic) + LoRA + projector, perturbed off the identity / zero init."""
    model = build(shape, HyperETConfig(variant="diagonal"))
    perturb_trainable(model)
    return model.eval()


def exported(shape: Shape, out: Path) -> Path:
    """Save the adapted model merged as ``export`` does; returns the directory."""
    merge_adapters(adapted(shape)).save_pretrained(out)
    return out


def saved_baseline(shape: Shape, out: Path) -> Path:
    """Save the never-adapted model; returns the directory."""
    ConfigLlava(shape).load_model().save_pretrained(out)
    return out


def load(path: Path) -> nn.Module:
    """A saved model loaded back by plain transformers, as a user of the exported directory would."""
    return LlavaForConditionalGeneration.from_pretrained(path).eval()


def models(shape: Shape, tmp: Path) -> dict[str, nn.Module]:
    """Baseline (twice) and exported model, all saved and loaded back the same way (safetensors loading may map the
    file, so both sides are loaded alike), and an unmerged copy with the same adapter values."""
    base = saved_baseline(shape, tmp / "baseline")
    return {
        "baseline": load(base),
        "baseline_copy": load(base),
        "merged": load(exported(shape, tmp / "exported")),
        "unmerged": adapted(shape),
    }


def prompt(shape: Shape) -> dict[str, torch.Tensor]:
    """One synthetic ``<s> <image>×P text`` prompt (no labels)."""
    inputs = batch(shape)
    inputs.pop("labels")
    return inputs


@torch.no_grad()
def max_logit_diff(merged: nn.Module, unmerged: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |logit| difference between merged and unmerged on the prompt."""
    return float((merged(**inputs).logits - unmerged(**inputs).logits).abs().max())


def generator(model: nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int) -> Any:
    """A zero-argument greedy generation of exactly ``new_tokens`` tokens."""

    @torch.no_grad()
    def generate() -> torch.Tensor:
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return generate


def run(quick: bool = False, tiny: bool = False) -> dict:
    """``{"time_ratio": exported/baseline, "noise_time_ratio", "unmerged_time_ratio", "*_ms", "max_logit_diff"}``."""
    shape = TINY if tiny else QUICK_SHAPE if quick else FULL_SHAPE
    new_tokens = 4 if tiny else 8 if quick else 16
    inputs = prompt(shape)
    rounds, warmup = (2, 1) if tiny else (6, 1) if quick else (16, 2)
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        built = models(shape, Path(tmp))
        diff = max_logit_diff(built["merged"], built["unmerged"], inputs)
        sides = {name: generator(built[name], inputs, new_tokens) for name in SIDES}
        times = interleaved_times(sides, rounds, warmup=warmup)
    ratio = paired_ratio(times["merged"], times["baseline"])
    quartiles = ratio_quartiles(times["merged"], times["baseline"])
    return {
        "machine": machine(),
        "shape": asdict(shape),
        "quick": quick,
        "time_method": time_method(),
        "new_tokens": new_tokens,
        "rounds": rounds,
        **{f"{name}_ms": median_ms(times[name]) for name in SIDES},
        "time_ratio": ratio,
        "time_ratio_quartiles": quartiles,
        "noise_time_ratio": paired_ratio(times["baseline_copy"], times["baseline"]),
        "unmerged_time_ratio": paired_ratio(times["unmerged"], times["baseline"]),
        "max_logit_diff": diff,
        "goal_time_ratio": GOAL,
        "goal_met": quartiles[0] <= GOAL <= quartiles[1] or abs(ratio - GOAL) <= 0.02,
    }


def format_table(result: dict) -> str:
    """Markdown table of generation times and ratios."""
    q1, q3 = result["time_ratio_quartiles"]
    rows = [
        ["baseline (never adapted)", fmt(result["baseline_ms"], 1), "1.000"],
        ["baseline, second copy (A/A noise)", fmt(result["baseline_copy_ms"], 1), fmt(result["noise_time_ratio"], 3)],
        ["exported (HyperET + LoRA merged, saved, reloaded)", fmt(result["merged_ms"], 1),
         f"{fmt(result['time_ratio'], 3)} (IQR {fmt(q1, 3)}–{fmt(q3, 3)})"],
        ["unmerged (parametrized + peft)", fmt(result["unmerged_ms"], 1), fmt(result["unmerged_time_ratio"], 3)],
    ]  # fmt: skip
    s = result["shape"]
    return "\n".join(
        [
            f"greedy generation of {result['new_tokens']} tokens after a {s['image_size'] // s['patch_size']}² image + "
            f"{s['text_tokens']} text-token prompt; CLIP {s['vision_hidden']}×{s['vision_layers']}, Llama "
            f"{s['llm_hidden']}×{s['llm_layers']}; {result['rounds']} interleaved rounds",
            table(["model", "generate ms (median)", "time ratio vs baseline"], rows),
            f"max |logit(exported) − logit(unmerged)| = {result['max_logit_diff']:.2e}; goal: exported ratio "
            f"{result['goal_time_ratio']:.2f} within noise: {'met' if result['goal_met'] else 'MISSED'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""
    return script_main(__doc__, "4 vision layers, fewer rounds", lambda args: run(quick=args.quick), format_table, argv)
