"""Command-line arguments that point the demo config at a test session's tiny model, data and output dir."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")
MEMVP_DEMO = str(ROOT / "configs" / "memvp_demo.yaml")


def demo_args(tiny_model_dir: Path, demo_data_dir: Path, out: Path, config: str = DEMO) -> list[str]:
    """Point the demo (``config``: the LLaVA or the MemVP demo) at the session's tiny model and data, and its outputs
    at ``out``."""
    return [
        "--config",
        config,
        "--model.init_args.model.init_args.path",
        str(tiny_model_dir),
        "--data.init_args.data_dir",
        str(demo_data_dir),
        "--trainer.default_root_dir",
        str(out),
        "--checkpoint.dirpath",
        str(out / "checkpoints"),
        "--prediction_writer.output_path",
        str(out / "predictions.json"),
        "--trainer.enable_progress_bar",
        "false",
    ]
