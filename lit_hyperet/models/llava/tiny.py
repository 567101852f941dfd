"""``make-tiny-model``: a random-initialised tiny LLaVA (vision tower + projector + Llama) with tokenizer and processor.

Everything is built offline and saved so that ``LlavaForConditionalGeneration.from_pretrained(out)`` and
``AutoProcessor.from_pretrained(out)`` load it. The same seed gives the same weights and the same tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedConfig,
    SiglipVisionConfig,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from lit_hyperet.chat_templates import vicuna_v1_chat_template
from lit_hyperet.encoders import prefix_tokens
from lit_hyperet.models.tiny_tokenizer import IMAGE, build_tiny_tokenizer

Vision = Literal["clip", "siglip", "dinov2"]
VISIONS: tuple[str, ...] = ("clip", "siglip", "dinov2")
IMAGE_SIZE = 32
PATCH_SIZE = 8  # 4 x 4 = 16 patch tokens
TEXT_INIT_STD = 0.2
VISION_WIDTH = 64
VISION_FEATURE_LAYER = -2  # LLaVA-1.5: penultimate layer
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vision_config(vision: Vision) -> PreTrainedConfig:
    common = dict(hidden_size=VISION_WIDTH, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE)
    if vision == "clip":
        return CLIPVisionConfig(**common, intermediate_size=2 * VISION_WIDTH, patch_size=PATCH_SIZE)
    if vision == "siglip":
        return SiglipVisionConfig(**common, intermediate_size=2 * VISION_WIDTH, patch_size=PATCH_SIZE)
    if vision == "dinov2":
        return Dinov2Config(**common, mlp_ratio=2, patch_size=PATCH_SIZE)
    raise ValueError(f"unknown vision tower {vision!r}; choose one of {', '.join(VISIONS)}")


def _image_processor(vision: Vision) -> BaseImageProcessor:
    """The PIL-backed processor each tower's HF checkpoints use (torchvision-backed ones need torchvision)."""
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if vision == "clip":
        return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    if vision == "siglip":
        return SiglipImageProcessorPil(size=square)
    return BitImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size=square, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def make_tiny_model(out: str | Path, vision: Vision = "clip", seed: int = 0) -> Path:
    """Write a random-initialised tiny LLaVA (safetensors, tokenizer, processor, vicuna_v1 chat template) to ``out``.

    Vision tower: 2 layers, width 64, 32 px images in 8 px patches (16 patch tokens). LLM: Llama, 2 layers, hidden
    128, 4 heads. Projector: transformers' ``LlavaMultiModalProjector`` (Linear → GELU → Linear, LLaVA's
    ``mlp2x_gelu``). Features come from the penultimate vision layer (LLaVA-1.5), so the last vision layer does not
    influence the output. CLS-carrying towers (clip, dinov2) drop the CLS (``default``); siglip keeps all (``full``).
    """
    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    chat_template = vicuna_v1_chat_template(IMAGE)
    tokenizer.chat_template = chat_template
    vision_config = _vision_config(vision)
    strategy = "default" if prefix_tokens(vision_config) == 1 else "full"
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # With hidden 128, the usual std 0.02 caps every logit near 2.6 (lm_head row norm ≈ 0.23 times the RMS-normed
        # state's norm √128), so even constant tokens plateau at a loss near ln(vocab) − 2.6. A larger std gives the
        # tiny LLM the logit range real (4096-wide) models have.
        initializer_range=TEXT_INIT_STD,
    )
    num_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=num_patches,
        projector_hidden_act="gelu",
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy=strategy,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=_image_processor(vision),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=prefix_tokens(vision_config),
        chat_template=chat_template,
        image_token=IMAGE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def main(argv: list[str]) -> int:
    """``python -m lit_hyperet make-tiny-model --out DIR [--vision clip|siglip|dinov2] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_hyperet make-tiny-model",
        description="Write a random-initialised tiny LLaVA with tokenizer, processor and vicuna_v1 chat template.",
    )
    parser.add_argument("--out", required=True, help="directory to write the model to")
    parser.add_argument("--vision", choices=VISIONS, default="clip", help="vision tower (default: clip)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    args = parser.parse_args(argv)
    out = make_tiny_model(args.out, vision=args.vision, seed=args.seed)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    n_params = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(out).parameters())
    print(f"wrote tiny LLaVA ({args.vision} tower, seed {args.seed}, {n_params:,} parameters) to {out}: {files}")
    return 0
