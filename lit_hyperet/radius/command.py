"""``python -m lit_hyperet radius``: the command line and its flow.

Arguments → run specs (:mod:`~lit_hyperet.radius.runs`) → per run: model and data built through the CLI, its images'
token radii collected into records (:mod:`~lit_hyperet.radius.runs`, :mod:`~lit_hyperet.radius.tokens`) → the files
written and logged (:mod:`~lit_hyperet.radius.outputs`, from the tables of :mod:`~lit_hyperet.radius.analysis`).
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lit_hyperet.radius.runs import (
    SPLITS,
    RunResult,
    RunSpec,
    at_image_sizes,
    build,
    check_specs,
    collect,
    dataloader,
    load_runs_file,
    model_info,
    parse_run,
    set_image_size,
)
from lit_hyperet.radius.tokens import FORMULAS, QUANTITIES, TokenSelection
from lit_hyperet.user_errors import ConfigError

DESCRIPTION = f"""\
Hyperbolic radius of a LLaVA model's visual tokens (vision-tower layer, optionally the projector output) over a
datamodule's val/test images; several runs (encoders, tasks, before/after training) side by side.

Reported per token f, with x = exp0(f) in the Poincare ball of curvature -c:
  rad          {FORMULAS["rad"]}
  ball_norm    {FORMULAS["ball_norm"]}
  norm_radius  {FORMULAS["norm_radius"]}
'rad' is computed through geometry.radius(geometry.exp0(f, c), c) in float64; where geoopt's artanh clamp saturates
that chain (sqrt(c)||f|| > ~8.4) the exact closed form 2||f|| is used and the tokens are counted.
Text-only samples have no image: they are skipped and counted.

Outputs (in --out, default outputs/radius/<name>): radius_images.csv (per image: run, id, categories,
mean/std/min/quantiles/max of each quantity), radius_groups.csv and radius_table.md (per run, source and category,
all runs in one table), radius_summary.json (the same with formulas, normalisation, c, layer, token selection,
counts and skipped text-only samples), radius.png (one combined plot of all runs); with --with-accuracy also
reliability.csv / reliability.md / reliability.png (accuracy per radius quantile bin). Logged to MLflow
(MLFLOW_TRACKING_URI or sqlite:///mlflow.db; experiment lit_hyperet_radius) unless --no-mlflow."""

EXAMPLES = """\
examples:
  python -m lit_hyperet radius --config configs/demo.yaml --max-samples 64
  python -m lit_hyperet radius --run before=configs/demo.yaml \\
      --run after=configs/demo.yaml:outputs/demo/checkpoints/last.ckpt
  python -m lit_hyperet radius --runs encoders.yaml --projector   # runs: [{name, config, ckpt}]"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``radius`` subcommand."""
    p = argparse.ArgumentParser(
        prog="python -m lit_hyperet radius",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs = p.add_argument_group("what to analyse")
    runs.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE.yaml",
        help="LightningCLI config (repeatable: merged in order) of a single run",
    )
    runs.add_argument("--ckpt", help="checkpoint whose trainable tensors are loaded onto the single run's model")
    runs.add_argument("--name", help="name of the single run (default: config stem [+ checkpoint stem])")
    runs.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=CONFIG[,CONFIG...][:CKPT]",
        help="a named run for comparisons (repeatable)",
    )
    runs.add_argument("--runs", metavar="FILE.yaml", help="YAML with runs: [{name, config, ckpt, overrides}]")
    runs.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="LightningCLI override applied to every run, e.g. data.init_args.eval_batch_size=4",
    )
    runs.add_argument(
        "--image-sizes",
        type=int,
        nargs="+",
        metavar="PX",
        help="analyse every run at each of these square input resolutions (runs named NAME@PXpx)",
    )
    runs.add_argument("--split", choices=SPLITS, default="val", help="the datamodule's val or test data (default val)")
    runs.add_argument("--max-samples", type=int, help="samples visited per run, text-only ones included")
    tok = p.add_argument_group("tokens and geometry")
    tok.add_argument("--curvature", type=float, default=0.01, help="c of the Poincare ball (default 0.01)")
    tok.add_argument("--layer", type=int, help="vision hidden-state index (default: config's vision_feature_layer)")
    tok.add_argument("--include-cls", action="store_true", help="keep the CLS token (CLIP/DINOv2; SigLIP has none)")
    tok.add_argument("--projector", action="store_true", help="also analyse the projector's output tokens")
    acc = p.add_argument_group("radius as uncertainty")
    acc.add_argument(
        "--with-accuracy",
        action="store_true",
        help="generate each answer greedily and report accuracy per radius quantile bin",
    )
    acc.add_argument("--bins", type=int, default=5, help="radius quantile bins (default 5)")
    acc.add_argument("--bin-quantity", choices=QUANTITIES, default="rad", help="quantity binned (default rad)")
    out = p.add_argument_group("outputs")
    out.add_argument("--out", help="output dir (default outputs/radius/<name>)")
    out.add_argument(
        "--group-by",
        action="append",
        metavar="FIELD",
        help="category fields of the summary (repeatable; default: subject, grade_band); the first "
        "one groups the plot's violins",
    )
    out.add_argument("--plot-quantity", choices=QUANTITIES, default="rad", help="quantity plotted (default rad)")
    out.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    out.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    out.add_argument("--experiment", default="lit_hyperet_radius", help="MLflow experiment name")
    return p


def specs_from_args(args: argparse.Namespace) -> list[RunSpec]:
    """Runs from ``--config/--ckpt``, ``--run`` and ``--runs`` (in that order)."""
    specs: list[RunSpec] = []
    if args.config:
        stem = Path(args.config[-1]).stem + (f"_{Path(args.ckpt).stem}" if args.ckpt else "")
        specs.append(RunSpec(args.name or stem, list(args.config), args.ckpt))
    elif args.ckpt:
        raise ConfigError("--ckpt needs --config (with --run use NAME=CONFIG:CKPT)")
    specs += [parse_run(r) for r in args.run]
    if args.runs:
        specs += load_runs_file(args.runs)
    if args.image_sizes:
        if args.with_accuracy:
            raise ConfigError("--image-sizes measures radii only: leave out --with-accuracy")
        specs = at_image_sizes(specs, args.image_sizes)
    check_specs(specs)
    return specs


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def analyse(spec: RunSpec, args: argparse.Namespace, selection: TokenSelection) -> RunResult:
    """Build one run's model and data and collect its records."""
    device = _device(args.device)
    module, datamodule = build(spec, args.override)
    if spec.image_size:
        set_image_size(module, datamodule.processor.image_processor, spec.image_size)
    module.to(device)
    loader, split_name = dataloader(datamodule, args.split, args.max_samples, where=f"run {spec.name!r}")
    generate = None
    if args.with_accuracy:
        max_new = getattr(datamodule, "eval_max_new_tokens", None)
        if max_new:
            module.hparams.max_new_tokens = max_new
        generate = module.generate_texts
    result = RunResult(spec.name, spec.configs, spec.ckpt, split_name, model_info(module, selection))
    collect(module.llava, loader, result, selection, args.curvature, args.max_samples, generate, device)
    if not result.records:
        raise ConfigError(
            f"run {spec.name!r}: no image among the {result.samples_seen} samples visited "
            f"({result.skipped_text_only} text-only skipped)"
        )
    del module, datamodule
    gc.collect()
    return result


def default_out(specs: Sequence[RunSpec]) -> Path:
    """``outputs/radius/<name>`` (names joined with ``_vs_`` for comparisons)."""
    name = "_vs_".join(s.name for s in specs)
    return Path("outputs/radius") / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lit_hyperet radius``."""
    from lit_hyperet.radius.analysis import image_means
    from lit_hyperet.radius.outputs import write_outputs

    args = build_parser().parse_args(argv)
    if args.bins < 1:
        raise ConfigError(f"--bins must be >= 1, got {args.bins}")
    if args.max_samples is not None and args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    specs = specs_from_args(args)
    for spec in specs:
        if not spec.ckpt:
            print(f"note: run {spec.name!r} has no checkpoint: measuring the model as configured", file=sys.stderr)
    selection = TokenSelection(layer=args.layer, include_cls=args.include_cls, projector=args.projector)
    results = [analyse(spec, args, selection) for spec in specs]
    out = Path(args.out) if args.out else default_out(specs)
    written = write_outputs(results, out, args, specs)
    for res in results:
        rad, nrm = (image_means(res.records, "vision", quantity).mean() for quantity in ("rad", "norm_radius"))
        print(
            f"{res.name}: {len(res.records)} images ({res.skipped_text_only} text-only skipped of "
            f"{res.samples_seen} samples); vision rad (mean of image means) {rad:.4f}, norm_radius {nrm:.4f}"
        )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


__all__ = ["build_parser", "main"]
