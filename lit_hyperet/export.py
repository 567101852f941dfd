"""``python -m lit_hyperet export --ckpt FILE --out DIR``: a plain Hugging Face LLaVA dir from a training checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_hyperet.lit_module import HyperETLitModule
from lit_hyperet.models.llava import LlavaSource, merge_and_save
from lit_hyperet.user_errors import ConfigError


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Rebuild the module from ``ckpt`` (trainable tensors on the frozen model), merge HyperET and LoRA, save.

    A checkpoint that cannot be read or names code outside this package is a ``CheckpointError``; a checkpoint of
    another family than LLaVA is a ``ConfigError`` (only LLaVA has a plain Hugging Face model to export to).
    """
    module = HyperETLitModule.load_from_checkpoint(ckpt, map_location="cpu")
    if not isinstance(module.source, LlavaSource):
        raise ConfigError(
            f"{ckpt}: a {type(module.source).__name__} checkpoint; export writes plain LLaVA dirs only, so load this "
            "checkpoint with test / predict (--ckpt_path) instead"
        )
    return merge_and_save(module.llava, module.processor, out)


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m lit_hyperet export", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="output dir (safetensors weights + processor)")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.ckpt, args.out)
    print(f"exported a plain LLaVA model to {out}")
    return 0
