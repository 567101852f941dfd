"""``make-tiny-model`` (``--family llava``, the default): a random-initialised tiny LLaVA (vision tower + projector +
Llama) with tokenizer and processor.

Everything is built offline and saved so that ``LlavaForConditionalGeneration.from_pretrained(out)`` and
``AutoProcessor.from_pretrained(out)`` load it. The same seed gives the same weights and the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from lit_hyperet.chat_templates import vicuna_v1_chat_template
from lit_hyperet.encoders import prefix_tokens
from lit_hyperet.models import tiny_configs
from lit_hyperet.models.llava.towers import dinov3_image_processor
from lit_hyperet.models.tiny_configs import IMAGE_SIZE, PATCH_SIZE, Vision
from lit_hyperet.models.tiny_tokenizer import IMAGE, build_tiny_tokenizer

TEXT_INIT_STD = 0.2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_processor(vision: Vision) -> BaseImageProcessor:
    """The PIL-backed processor each tower's HF checkpoints use (torchvision-backed ones need torchvision), giving
    ``IMAGE_SIZE`` square images.

    SAM's resizes the longest side and zero-pads to a square (SAM's own letterboxing; the padded size is the tower's
    fixed ``image_size``), and also returns ``original_sizes`` / ``reshaped_input_sizes``, which the LLaVA forward
    ignores. DINOv3's own processor is torchvision-only: its PIL equivalent is ``ViTImageProcessorPil``
    (:func:`~lit_hyperet.models.llava.towers.dinov3_image_processor`). BLIP-2's checkpoints use BLIP's processor.
    """
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if vision == "clip":
        return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    if vision == "siglip":
        return SiglipImageProcessorPil(size=square)
    if vision == "dinov3":
        return dinov3_image_processor({"size": square})
    if vision == "sam":
        return SamImageProcessorPil(size={"longest_edge": IMAGE_SIZE}, pad_size=square)
    if vision == "blip2":
        return BlipImageProcessorPil(size=square)
    return BitImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size=square, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def make_tiny_model(out: str | Path, vision: Vision = "clip", seed: int = 0) -> Path:
    """Write a random-initialised tiny LLaVA (safetensors, tokenizer, processor, vicuna_v1 chat template) to ``out``.

    Vision tower: 2 layers, width 64, 32 px images in 8 px patches (16 patch tokens). LLM: Llama, 2 layers, hidden
    128, 4 heads. Projector: transformers' ``LlavaMultiModalProjector`` (Linear → GELU → Linear, LLaVA's
    ``mlp2x_gelu``). Features come from the penultimate vision layer (LLaVA-1.5), so the last vision layer does not
    influence the output. Towers with one CLS (clip, dinov2, blip2) drop it (``default``: 16 image tokens); the others
    keep every token (``full``): siglip 16, sam its 4 × 4 map flattened row-major (16), dinov3 CLS + 4 registers +
    16 patches (21).
    """
    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    chat_template = vicuna_v1_chat_template(IMAGE)
    tokenizer.chat_template = chat_template
    vision_config = tiny_configs.vision_config(vision)
    strategy = "default" if prefix_tokens(vision_config) == 1 else "full"
    text_config = tiny_configs.llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # With hidden 128, the usual std 0.02 caps every logit near 2.6 (lm_head row norm ≈ 0.23 times the RMS-normed
        # state's norm √128), so even constant tokens plateau at a loss near ln(vocab) − 2.6. A larger std gives the
        # tiny LLM the logit range real (4096-wide) models have.
        initializer_range=TEXT_INIT_STD,
    )
    config = tiny_configs.llava_config(  # image tokens: the patches plus the prefix tokens "full" keeps
        vision_config,
        text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
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
