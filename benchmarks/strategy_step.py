"""DDP vs FSDP2 on CPU processes at the demo size: step time and memory per process of ``python -m lit_hyperet fit``.

Each configuration is a real 2-process run of the demo (``configs/demo.yaml`` + ``configs/strategy/{ddp,fsdp}.yaml``,
``--trainer.accelerator cpu --trainer.devices 2``, float32, no validation, MLflow into a temporary store), started by
Lightning as a user starts it. A callback in each rank (:class:`benchmarks._step_timer.StepTimer`) records the wall time
of every training step (forward, backward, gradient reduction, optimiser) and the process's peak RSS; the tables give
the median step after the warm-up steps (slowest rank) and the largest peak RSS of a rank. Configurations: DDP; FSDP2 as
``fsdp.yaml`` ships it (with activation checkpointing); FSDP2 without activation checkpointing.

At the demo size (647 K parameters, 2.6 MB) memory per process is the Python/torch runtime and the data, not the
model, and the step is dominated by per-layer collectives; the figures say what the strategies cost on a small model,
not what sharding saves on a large one (``fsdp_step`` on GPUs does).

Usage: ``python benchmarks/strategy_step.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.strategy_step``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.strategy_step import main

    raise SystemExit(main())

from benchmarks._common import fmt, machine, script_main, table
from lit_hyperet.models.llava.tiny import make_tiny_model
from lit_hyperet.tasks.scienceqa.demo import make_demo_data

NAME = "strategy_step"
ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, list[str]] = {
    "ddp": ["--config", str(ROOT / "configs/strategy/ddp.yaml")],
    "fsdp2": ["--config", str(ROOT / "configs/strategy/fsdp.yaml")],
    "fsdp2_no_checkpointing": [
        "--config",
        str(ROOT / "configs/strategy/fsdp.yaml"),
        "--model.init_args.gradient_checkpointing",
        "false",
    ],
}
TIMEOUT_S = 900


def fit_once(name: str, model_dir: Path, data_dir: Path, out: Path, steps: int) -> dict[str, Any]:
    """One 2-process fit of the demo with a strategy; ``{rank: {"step_s": [...], "max_rss_mib": ...}}``."""
    command = [sys.executable, "-m", "lit_hyperet", "fit", "--config", str(ROOT / "configs/demo.yaml")]
    command += CONFIGS[name]
    command += [
        "--model.init_args.model.init_args.path",
        str(model_dir),
        "--data.init_args.data_dir",
        str(data_dir),
        "--trainer.default_root_dir",
        str(out),
        "--checkpoint.dirpath",
        str(out / "checkpoints"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.precision",
        "32-true",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=benchmarks._step_timer.StepTimer",
        f"--trainer.callbacks.out_dir={out / 'timing'}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"  # the demo's logger, kept out of the user's store
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: fit failed:\n{result.stderr[-3000:]}")
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "timing").glob("rank*.json"))}


def summarize(ranks: dict[str, Any], warmup: int) -> dict[str, float]:
    """Median step (per step the slowest rank) after ``warmup`` steps, and the largest peak RSS of a rank."""
    per_step = zip(*(r["step_s"][warmup:] for r in ranks.values()), strict=True)
    slowest = [max(times) for times in per_step]
    return {
        "step_ms": 1e3 * statistics.median(slowest),
        "max_rss_mib_per_process": max(r["max_rss_mib"] for r in ranks.values()),
        "timed_steps": len(slowest),
    }


def run(quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    """``{config: {step_ms, max_rss_mib_per_process, timed_steps}, "fsdp2_vs_ddp_time_ratio": …}``."""
    steps, warmup = (3, 1) if tiny else (25, 5) if quick else (60, 10)
    result: dict[str, Any] = {"machine": machine(), "steps": steps, "warmup_steps": warmup, "processes": 2}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model_dir = make_tiny_model(base / "model", vision="clip", seed=0)
        data_dir = make_demo_data(base / "data", num_problems=1200 if not tiny else 120, seed=0)
        for name in CONFIGS:
            (base / name).mkdir()
            result[name] = summarize(fit_once(name, model_dir, data_dir, base / name, steps), warmup)
    result["fsdp2_vs_ddp_time_ratio"] = result["fsdp2"]["step_ms"] / result["ddp"]["step_ms"]
    return result


def format_table(result: dict) -> str:
    """Markdown table: one row per strategy configuration."""
    head = ["strategy (2 CPU processes, float32)", "median step ms", "peak RSS per process MiB"]
    rows = [
        [name, fmt(result[name]["step_ms"], 1), fmt(result[name]["max_rss_mib_per_process"], 0)] for name in CONFIGS
    ]
    return "\n".join(
        [
            f"demo model and data, batch 16 per process; median over {result['steps'] - result['warmup_steps']} "
            f"steps after {result['warmup_steps']} warm-up steps (per step the slowest rank), wall clock",
            table(head, rows),
            f"FSDP2 (as shipped) ÷ DDP step time: {fmt(result['fsdp2_vs_ddp_time_ratio'], 2)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, optionally write JSON."""
    return script_main(__doc__, "25 steps per run", lambda args: run(quick=args.quick), format_table, argv)
