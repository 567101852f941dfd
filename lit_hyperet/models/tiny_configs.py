"""Configs of tiny random-weight models: vision towers (CLIP, SigLIP, DINOv2), a Llama LLM and the LLaVA joining them.

One place for the sizes that ``make-tiny-model``, the benchmarks and the tests build from. Every size is a keyword
argument whose default is the tiny model's; only ``transformers`` config classes are imported (no model family, no
task), so building a config costs no weights.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import CLIPVisionConfig, Dinov2Config, LlamaConfig, LlavaConfig, PreTrainedConfig, SiglipVisionConfig

Vision = Literal["clip", "siglip", "dinov2"]
VISIONS: tuple[str, ...] = ("clip", "siglip", "dinov2")

IMAGE_SIZE = 32
PATCH_SIZE = 8  # 4 x 4 = 16 patch tokens
VISION_WIDTH = 64
VISION_LAYERS = 2
VISION_HEADS = 4
TEXT_WIDTH = 128
TEXT_LAYERS = 2
TEXT_HEADS = 4
VISION_FEATURE_LAYER = -2  # LLaVA-1.5: penultimate layer


def vision_config(
    vision: Vision = "clip",
    *,
    hidden_size: int = VISION_WIDTH,
    intermediate_size: int | None = None,
    num_hidden_layers: int = VISION_LAYERS,
    num_attention_heads: int = VISION_HEADS,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
) -> PreTrainedConfig:
    """A vision tower's config; the MLP is ``intermediate_size`` wide (default ``2 × hidden_size``).

    DINOv2 sizes its MLP by ``mlp_ratio``, so there ``intermediate_size`` must be a multiple of ``hidden_size``.
    """
    intermediate_size = 2 * hidden_size if intermediate_size is None else intermediate_size
    common: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
    )
    if vision == "clip":
        return CLIPVisionConfig(**common, intermediate_size=intermediate_size, patch_size=patch_size)
    if vision == "siglip":
        return SiglipVisionConfig(**common, intermediate_size=intermediate_size, patch_size=patch_size)
    if vision == "dinov2":
        if intermediate_size % hidden_size:
            raise ValueError(f"DINOv2 needs intermediate_size a multiple of hidden_size, got {intermediate_size}")
        return Dinov2Config(**common, mlp_ratio=intermediate_size // hidden_size, patch_size=patch_size)
    raise ValueError(f"unknown vision tower {vision!r}; choose one of {', '.join(VISIONS)}")


def llama_config(
    *,
    vocab_size: int,
    hidden_size: int = TEXT_WIDTH,
    intermediate_size: int | None = None,
    num_hidden_layers: int = TEXT_LAYERS,
    num_attention_heads: int = TEXT_HEADS,
    num_key_value_heads: int | None = None,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    **kwargs: Any,
) -> LlamaConfig:
    """A Llama LLM's config: MLP ``2 × hidden_size`` wide and as many key/value heads as heads unless given; other
    ``LlamaConfig`` fields (token ids, ``initializer_range``) pass through as given."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size if intermediate_size is None else intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads if num_key_value_heads is None else num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **kwargs,
    )


def llava_config(
    vision: PreTrainedConfig,
    text: PreTrainedConfig,
    *,
    image_token_index: int,
    vision_feature_select_strategy: Literal["default", "full"] = "default",
    vision_feature_layer: int = VISION_FEATURE_LAYER,
    projector_hidden_act: str = "gelu",
    image_seq_length: int | None = None,
) -> LlavaConfig:
    """A LLaVA-1.5-style config joining ``vision`` and ``text``: penultimate vision layer, ``mlp2x_gelu`` projector,
    ``image_seq_length`` the tower's patch count unless given (right for ``default`` on a CLS tower, and for
    ``full`` on a tower without prefix tokens)."""
    if image_seq_length is None:
        image_seq_length = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_index,
        image_seq_length=image_seq_length,
        projector_hidden_act=projector_hidden_act,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
    )
