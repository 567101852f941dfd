"""``python -m lit_hyperet export --ckpt FILE --out DIR``: a training checkpoint as plain Hugging Face files.

* LLaVA: HyperET and LoRA merged into a plain LLaVA dir (``LlavaForConditionalGeneration.from_pretrained(DIR)``).
* MemVP: HyperET merged into a plain ``CLIPVisionModel`` dir (``DIR/vision``), MemVP's tensors as
  ``DIR/memvp.safetensors`` and ``DIR/memvp.json``; ``lit_hyperet.models.memvp.load_merged(DIR)`` loads the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_hyperet.lit_module import HyperETLitModule
from lit_hyperet.models.llava import LlavaSource, merge_and_save
from lit_hyperet.models.memvp.merge import save_merged
from lit_hyperet.models.memvp.sources import MemVPSource
from lit_hyperet.user_errors import ConfigError


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Rebuild the module from ``ckpt`` (trainable tensors on the frozen model), merge HyperET (and LoRA), save.

    A checkpoint that cannot be read or names code outside this package is a ``CheckpointError``; one of a family
    without an export is a ``ConfigError``.
    """
    module = HyperETLitModule.load_from_checkpoint(ckpt, map_location="cpu")
    source = module.source
    if isinstance(source, LlavaSource):
        return merge_and_save(module.llava, module.processor, out)
    if isinstance(source, MemVPSource):
        return save_merged(module.llava, source.memvp, source.dirs()[1], out)
    raise ConfigError(f"{ckpt}: a {type(source).__name__} checkpoint; export writes LLaVA and MemVP models only")


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m lit_hyperet export", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="output dir (safetensors weights + config)")
    args = parser.parse_args(argv)
    module_out = export_checkpoint(args.ckpt, args.out)
    print(f"exported to {module_out}")
    return 0
