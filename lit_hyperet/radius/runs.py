"""Runs to analyse (``name = config(s) [+ checkpoint]``): parsing, and building the module and datamodule.

Models and data are instantiated by the project's LightningCLI (``cli_main(..., run=False)``) so the processor link
and config-driven data generation work exactly as for ``fit``; the trainer gets ``logger=false`` so no MLflow run
is started for it. A checkpoint contributes only its trainable tensors (HyperET, projector, LoRA), loaded onto the
model the config builds; a mismatch is an error naming the checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_hyperet.checkpoints import CheckpointError, load_trainable

SPLITS: tuple[str, ...] = ("val", "test")


@dataclass
class RunSpec:
    """One analysed run: a name, one or more LightningCLI config files (merged in order) and an optional checkpoint."""

    name: str
    configs: list[str]
    ckpt: str | None = None
    overrides: list[str] = field(default_factory=list)


def parse_run(text: str) -> RunSpec:
    """``NAME=CONFIG[,CONFIG2...][:CKPT]`` → :class:`RunSpec` (the last ``:`` separates the checkpoint)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--run {text!r}: expected NAME=CONFIG[,CONFIG...][:CKPT]")
    configs, _, ckpt = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return RunSpec(name, [c for c in configs.split(",") if c], ckpt or None)


def load_runs_file(path: str | Path) -> list[RunSpec]:
    """Runs from YAML ``runs: [{name, config (str or list), ckpt (optional), overrides (optional list)}]``;
    relative paths are taken from the current directory, like ``--config``."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: expected a mapping with a 'runs' list")
    specs = []
    for i, entry in enumerate(data["runs"]):
        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise ValueError(f"{path}: runs[{i}] needs 'name' and 'config', got {entry!r}")
        configs = entry["config"] if isinstance(entry["config"], list) else [entry["config"]]
        specs.append(
            RunSpec(
                str(entry["name"]),
                [str(c) for c in configs],
                entry.get("ckpt"),
                [str(o) for o in entry.get("overrides", [])],
            )
        )
    return specs


def check_specs(specs: list[RunSpec]) -> None:
    """Unique names, existing config and checkpoint files; ``FileNotFoundError``/``ValueError`` naming the run."""
    if not specs:
        raise ValueError("no run given: use --config, --run NAME=CONFIG[:CKPT] or --runs FILE.yaml")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}")
    for s in specs:
        for path in s.configs:
            if not Path(path).is_file():
                raise FileNotFoundError(f"run {s.name!r}: {path} does not exist")
        if s.ckpt and not Path(s.ckpt).is_file():
            raise CheckpointError(f"{s.ckpt}: no such checkpoint file (run {s.name!r})")


def build(spec: RunSpec, extra_overrides: list[str] = ()) -> tuple[Any, Any]:
    """``(module, datamodule)`` from the run's configs through LightningCLI, the model built and checkpoint loaded."""
    from lit_hyperet.cli import cli_main

    args: list[str] = []
    for config in spec.configs:
        args += ["--config", config]
    args += ["--trainer.logger=false"]
    args += [o if o.startswith("--") else f"--{o}" for o in [*extra_overrides, *spec.overrides]]
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # LightningCLI warns when it sees both ``args`` and command-line arguments
    try:
        cli = cli_main(args, run=False)
    finally:
        sys.argv = saved_argv
    module, datamodule = cli.model, cli.datamodule
    module.configure_model()
    if spec.ckpt:
        load_trainable(module, spec.ckpt)
    module.eval()
    return module, datamodule


def dataloader(datamodule: Any, split: str, max_samples: int | None, where: str) -> tuple[Any, str]:
    """The ``val`` or ``test`` generation dataloader and the dataset split name behind it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if max_samples is not None and hasattr(datamodule, "max_samples"):  # encode only what will be read
        current = datamodule.max_samples
        limit = current.get(split) if isinstance(current, dict) else current
        limited = max_samples if limit is None else min(limit, max_samples)
        datamodule.max_samples = {**(current if isinstance(current, dict) else {}), split: limited}
    datamodule.prepare_data()
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    if isinstance(loader, (list, tuple)):
        if not loader:
            raise ValueError(f"{where}: the datamodule has no {split} data")
        loader = loader[0]
    splits = getattr(datamodule, "splits", None)  # ScienceQADataModule: role -> pid_splits name
    name = splits.get(split) if isinstance(splits, dict) and splits.get(split) else split
    return loader, str(name)
