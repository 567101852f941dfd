"""``python -m lit_hyperet radius``: the command line and its flow.

Arguments → run specs (:mod:`~lit_hyperet.radius.runs`) → per run: model and data built through the CLI, its images'
token radii collected into records (:mod:`~lit_hyperet.radius.runs`, :mod:`~lit_hyperet.radius.tokens`) → the files
written and logged (:mod:`~lit_hyperet.radius.outputs`, from the tables of :mod:`~lit_hyperet.radius.analysis`).

The command dispatches on the model family the config builds: a LLaVA model (``HyperETLitModule``) gets the
visual-token analysis above; an image–text alignment model (``HyperbolicAlignmentModule``) gets its image and caption
embeddings' radius in its own space (:mod:`~lit_hyperet.radius.alignment`, files by
:mod:`~lit_hyperet.radius.alignment_outputs`).
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_hyperet.radius.alignment import SPECIFICITY_SOURCES, AlignmentRun
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

DEFAULT_CURVATURE = 0.01

DESCRIPTION = f"""\
Hyperbolic radius over a datamodule's val/test images; several runs (encoders, tasks, spaces, before/after training)
side by side. The config's model family decides what is measured:

LLaVA (HyperETLitModule): the visual tokens (vision-tower layer, optionally the projector output).

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
reliability.csv / reliability.md / reliability.png (accuracy per radius quantile bin).

Image-text alignment (HyperbolicAlignmentModule): every image's query embeddings and every caption's embedding in
the model's own space, curvature c and embedding scale (rad = distance to the origin; norm_radius =
tanh(sqrt(c) rad / 2) in [0, 1), 0 the origin, 1 the ball's boundary). Outputs: radius_images.csv, radius_captions.csv,
radius_specificity.csv/.md/.png (caption radius per specificity level, mean +- std, Spearman), reliability.csv/.md/.png
(retrieval hits at --recall-k per radius quantile bin, images and captions), radius_grid.png (images sorted by
radius), radius_summary.json. The LLaVA token options (--curvature, --layer, --include-cls, --projector,
--with-accuracy, --image-sizes) do not apply.

Logged to MLflow (MLFLOW_TRACKING_URI or sqlite:///mlflow.db; experiment lit_hyperet_radius) unless --no-mlflow."""

EXAMPLES = """\
examples:
  python -m lit_hyperet radius --config configs/demo.yaml --max-samples 64
  python -m lit_hyperet radius --run before=configs/demo.yaml \\
      --run after=configs/demo.yaml:outputs/demo/checkpoints/last.ckpt
  python -m lit_hyperet radius --config configs/alignment_demo.yaml \\
      --ckpt outputs/alignment_demo/checkpoints/last.ckpt --split test
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
    tok.add_argument("--curvature", type=float, help=f"LLaVA: c of the Poincare ball (default {DEFAULT_CURVATURE})")
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
    ali = p.add_argument_group("image-text alignment")
    ali.add_argument(
        "--specificity",
        choices=SPECIFICITY_SOURCES,
        default="auto",
        help="caption specificity: the annotations' levels (level), the word count (words), or levels where the "
        "annotations have them (auto, default)",
    )
    ali.add_argument("--recall-k", type=int, default=1, help="a retrieval hit ranks within the top K (default 1)")
    ali.add_argument("--grid", type=int, default=32, help="images in the radius-sorted grid (default 32)")
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


#: Options of the LLaVA token analysis (flag, default): an alignment run refuses them when set.
LLAVA_ONLY = (
    ("--curvature", "curvature", None),
    ("--layer", "layer", None),
    ("--include-cls", "include_cls", False),
    ("--projector", "projector", False),
    ("--with-accuracy", "with_accuracy", False),
    ("--image-sizes", "image_sizes", None),
)


def analyse(spec: RunSpec, args: argparse.Namespace, selection: TokenSelection) -> RunResult | AlignmentRun:
    """Build one run's model and data and collect its records (LLaVA tokens or alignment embeddings)."""
    from lit_hyperet.alignment_module import HyperbolicAlignmentModule

    device = _device(args.device)
    module, datamodule = build(spec, args.override)
    if isinstance(module, HyperbolicAlignmentModule):
        return analyse_alignment(spec, args, module, datamodule, device)
    curvature = DEFAULT_CURVATURE if args.curvature is None else args.curvature
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
    collect(module.llava, loader, result, selection, curvature, args.max_samples, generate, device)
    if not result.records:
        raise ConfigError(
            f"run {spec.name!r}: no image among the {result.samples_seen} samples visited "
            f"({result.skipped_text_only} text-only skipped)"
        )
    del module, datamodule
    gc.collect()
    return result


def analyse_alignment(
    spec: RunSpec, args: argparse.Namespace, module: Any, datamodule: Any, device: torch.device
) -> AlignmentRun:
    """One alignment run: its images' and captions' radii with retrieval hits."""
    from lit_hyperet.radius.alignment import collect_alignment, model_info as alignment_info

    given = [flag for flag, name, default in LLAVA_ONLY if getattr(args, name) != default]
    if given:
        raise ConfigError(
            f"run {spec.name!r} is an image-text alignment model: {', '.join(given)} only apply to LLaVA visual "
            "tokens (the alignment radius uses the model's own space and curvature, and always reports retrieval)"
        )
    if args.recall_k < 1 or args.grid < 0:
        raise ConfigError(f"--recall-k must be >= 1 and --grid >= 0, got {args.recall_k} and {args.grid}")
    module.to(device)
    loader, split_name = dataloader(datamodule, args.split, args.max_samples, where=f"run {spec.name!r}")
    run = AlignmentRun(spec.name, spec.configs, spec.ckpt, split_name, alignment_info(module))
    run.recall_k, run.specificity = args.recall_k, args.specificity
    collect_alignment(module, loader, run, args.max_samples, device)
    del module, datamodule
    gc.collect()
    return run


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
    alignment = [isinstance(res, AlignmentRun) for res in results]
    if any(alignment):
        if not all(alignment):
            names = [s.name for s, a in zip(specs, alignment, strict=True) if a]
            raise ConfigError(f"runs {names} are image-text alignment models, the others LLaVA: analyse them apart")
        return report_alignment(results, out, args, specs)
    if args.curvature is None:
        args.curvature = DEFAULT_CURVATURE  # what every LLaVA run used; the outputs state it
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


def report_alignment(runs: list[AlignmentRun], out: Path, args: argparse.Namespace, specs: Sequence[RunSpec]) -> int:
    """Write and log the alignment outputs; one line per run on the console."""
    from lit_hyperet.radius.alignment_outputs import write_alignment_outputs

    written = write_alignment_outputs(runs, out, args, specs)
    for run in runs:
        image_rad = sum(float(r.values["image"]["rad"].mean()) for r in run.images) / len(run.images)
        caption_rad = sum(float(r.values["text"]["rad"][0]) for r in run.captions) / max(len(run.captions), 1)
        print(
            f"{run.name}: {len(run.images)} images, {len(run.captions)} captions ({run.model['space']}, "
            f"c = {run.model['curvature']:.4g}); mean rad images {image_rad:.4f}, captions {caption_rad:.4f}; "
            f"i2t_R1 {run.recall.get('i2t_R1', float('nan')):.2f}, t2i_R1 {run.recall.get('t2i_R1', float('nan')):.2f}"
        )
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


__all__ = ["build_parser", "main"]
