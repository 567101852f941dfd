"""``make-tiny-model``: write a random-initialised tiny model of a family, saved so that ``from_pretrained`` loads it.

``--family llava`` (default): a tiny LLaVA with the ``--vision`` tower (:mod:`lit_hyperet.models.llava.tiny`);
``--family blip2-itm``: a tiny BLIP-2 image–text retrieval model (:mod:`lit_hyperet.models.blip2.tiny`);
``--family memvp``: a tiny LLaMA + CLIP tower pair for MemVP (:mod:`lit_hyperet.models.memvp.tiny`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_hyperet.models.tiny_configs import VISIONS

FAMILIES = ("llava", "blip2-itm", "memvp")


def _write(family: str, out: str, vision: str | None, seed: int) -> tuple[Path, str, int]:
    """(dir, description, parameter count) of the written model."""
    if family == "llava":
        from transformers import LlavaForConditionalGeneration

        from lit_hyperet.models.llava.tiny import make_tiny_model

        vision = vision or "clip"
        path = make_tiny_model(out, vision=vision, seed=seed)
        n = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(path).parameters())
        return path, f"tiny LLaVA ({vision} tower, seed {seed}", n
    if family == "memvp":
        from transformers import CLIPVisionModel, LlamaForCausalLM

        from lit_hyperet.models.memvp.tiny import VISION_SUBDIR, make_tiny_memvp

        path = make_tiny_memvp(out, seed=seed)
        n = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(path).parameters())
        n += sum(p.numel() for p in CLIPVisionModel.from_pretrained(path / VISION_SUBDIR).parameters())
        return path, f"tiny LLaMA and CLIP tower for MemVP (seed {seed}", n
    from transformers import Blip2ForImageTextRetrieval

    from lit_hyperet.models.blip2.tiny import make_tiny_blip2_itm

    path = make_tiny_blip2_itm(out, seed=seed)
    n = sum(p.numel() for p in Blip2ForImageTextRetrieval.from_pretrained(path).parameters())
    return path, f"tiny BLIP-2 image-text retrieval model (seed {seed}", n


def main(argv: list[str]) -> int:
    """``python -m lit_hyperet make-tiny-model --out DIR [--family llava|blip2-itm] [--vision TOWER] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_hyperet make-tiny-model",
        description="Write a random-initialised tiny model: a LLaVA with tokenizer, processor and vicuna_v1 chat "
        "template (--family llava), a BLIP-2 image-text retrieval model with its processor (--family blip2-itm), or "
        "a LLaMA with tokenizer and a CLIP tower in vision/ for MemVP (--family memvp).",
    )
    parser.add_argument("--out", required=True, help="directory to write the model to")
    parser.add_argument("--family", choices=FAMILIES, default="llava", help="model family (default: llava)")
    parser.add_argument(
        "--vision", choices=VISIONS, default=None, help="LLaVA's vision tower (default: clip; --family llava only)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    args = parser.parse_args(argv)
    if args.family != "llava" and args.vision is not None:
        parser.error(f"--vision applies to --family llava only (the {args.family} family has its own tower)")
    path, what, n_params = _write(args.family, args.out, args.vision, args.seed)
    files = ", ".join(sorted(p.name for p in path.iterdir()))
    print(f"wrote {what}, {n_params:,} parameters) to {path}: {files}")
    return 0
