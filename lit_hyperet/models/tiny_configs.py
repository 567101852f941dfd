"""Configs of tiny random-weight models: vision towers (CLIP, SigLIP, DINOv2, DINOv3, SAM, BLIP-2), a Llama LLM and the
LLaVA joining them, and BLIP-2's Q-Former and image–text retrieval model.

One place for the sizes that ``make-tiny-model``, the benchmarks and the tests build from. Every size is a keyword
argument whose default is the tiny model's; only ``transformers`` config classes and the tower facts of
``lit_hyperet.encoders`` are imported (no model family, no task), so building a config costs no weights.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import (
    Blip2Config,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    CLIPVisionConfig,
    Dinov2Config,
    DINOv3ViTConfig,
    LlamaConfig,
    LlavaConfig,
    OPTConfig,
    PreTrainedConfig,
    SamVisionConfig,
    SiglipVisionConfig,
)

from lit_hyperet.encoders import disable_train_augmentations, prefix_tokens

Vision = Literal["clip", "siglip", "dinov2", "dinov3", "sam", "blip2"]
VISIONS: tuple[str, ...] = ("clip", "siglip", "dinov2", "dinov3", "sam", "blip2")

IMAGE_SIZE = 32
PATCH_SIZE = 8  # 4 x 4 = 16 patch tokens
VISION_WIDTH = 64
VISION_LAYERS = 2
VISION_HEADS = 4
TEXT_WIDTH = 128
TEXT_LAYERS = 2
TEXT_HEADS = 4
VISION_FEATURE_LAYER = -2  # LLaVA-1.5: penultimate layer
DINOV3_REGISTERS = 4  # as every released DINOv3 ViT
SAM_WINDOW = 2  # the 4 x 4 patch grid in 2 x 2 windows; the last layer attends globally, as SAM's global_attn_indexes
SAM_NECK_CHANNELS = 32  # SAM's neck (output_channels): computed by the tower, not read by LLaVA
QFORMER_WIDTH = 64
QFORMER_LAYERS = 2
QFORMER_HEADS = 4
QFORMER_VOCAB = 1024
QFORMER_MAX_POSITIONS = 64
NUM_QUERY_TOKENS = 8
IMAGE_TEXT_WIDTH = 32  # the contrastive embedding size D of BLIP-2's projections
# With BLIP-2's std 0.02, a random 64-wide Q-Former's outputs hardly depend on its input (about 0.5% relative spread
# across images or captions): contrastive training then sits at uniform logits for hundreds of steps. A larger std gives
# the tiny Q-Former the input-dependent outputs a trained one has (as TEXT_INIT_STD does for the tiny LLaVA's LLM).
QFORMER_INIT_STD = 0.2
# SAM's and BLIP-2's configs default to initializer_range 1e-10 (their checkpoints overwrite the weights): a random
# tower initialised so would emit near-constant features.
TOWER_INIT_STD = 0.02


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
    DINOv3 has :data:`DINOV3_REGISTERS` register tokens and no train-mode RoPE augmentation (a frozen tower must give
    the same features in training and evaluation); SAM attends in windows of :data:`SAM_WINDOW` × :data:`SAM_WINDOW`
    patches except in its last layer, and its ``image_size`` is the only size it takes (fixed absolute position
    embeddings).
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
    if vision == "dinov3":
        config = DINOv3ViTConfig(
            **common, intermediate_size=intermediate_size, patch_size=patch_size, num_register_tokens=DINOV3_REGISTERS
        )
        return disable_train_augmentations(config)
    if vision == "sam":
        return SamVisionConfig(
            **common,
            patch_size=patch_size,
            mlp_dim=intermediate_size,
            window_size=SAM_WINDOW,
            global_attn_indexes=[num_hidden_layers - 1],
            output_channels=SAM_NECK_CHANNELS,
            initializer_range=TOWER_INIT_STD,
        )
    if vision == "blip2":
        return Blip2VisionConfig(
            **common, intermediate_size=intermediate_size, patch_size=patch_size, initializer_range=TOWER_INIT_STD
        )
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
    ``image_seq_length`` unless given the tokens one image reaches the LLM as: the tower's patch count plus the prefix
    tokens (CLS, registers) the strategy keeps (``default`` drops one)."""
    if image_seq_length is None:
        kept_prefix = prefix_tokens(vision) - (vision_feature_select_strategy == "default")
        image_seq_length = (vision.image_size // vision.patch_size) ** 2 + kept_prefix
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_index,
        image_seq_length=image_seq_length,
        projector_hidden_act=projector_hidden_act,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
    )


def qformer_config(
    *,
    vocab_size: int = QFORMER_VOCAB,
    hidden_size: int = QFORMER_WIDTH,
    intermediate_size: int | None = None,
    num_hidden_layers: int = QFORMER_LAYERS,
    num_attention_heads: int = QFORMER_HEADS,
    max_position_embeddings: int = QFORMER_MAX_POSITIONS,
    pad_token_id: int = 0,
    initializer_range: float = QFORMER_INIT_STD,
) -> Blip2QFormerConfig:
    """BLIP-2's Q-Former: cross-attention to the image in every layer (``cross_attention_frequency`` 1), the text
    input on (``use_qformer_text_input``; without it any text pass fails: its layers then lack the text MLP), weights
    drawn with std :data:`QFORMER_INIT_STD`."""
    return Blip2QFormerConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size if intermediate_size is None else intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        cross_attention_frequency=1,
        use_qformer_text_input=True,
        pad_token_id=pad_token_id,
        initializer_range=initializer_range,
    )


def opt_config(*, vocab_size: int = QFORMER_VOCAB, hidden_size: int = 64, num_hidden_layers: int = 2) -> OPTConfig:
    """A tiny OPT config: ``Blip2Config`` needs a language model's config, which the retrieval model never builds."""
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        word_embed_proj_dim=hidden_size,
        ffn_dim=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        max_position_embeddings=128,
    )


def blip2_config(
    vision: PreTrainedConfig | None = None,
    qformer: Blip2QFormerConfig | None = None,
    *,
    num_query_tokens: int = NUM_QUERY_TOKENS,
    image_text_hidden_size: int = IMAGE_TEXT_WIDTH,
) -> Blip2Config:
    """BLIP-2 for image–text retrieval (``Blip2ForImageTextRetrieval``): the tiny BLIP-2 tower, the tiny Q-Former,
    ``num_query_tokens`` queries and ``image_text_hidden_size``-wide contrastive embeddings; the Q-Former's text
    embeddings and the projections are drawn with :data:`QFORMER_INIT_STD` like the Q-Former (the vision tower keeps
    its own std). ``image_token_index`` is ``None``: the retrieval model then reads text without image placeholder
    tokens."""
    return Blip2Config(
        vision_config=vision if vision is not None else vision_config("blip2"),
        qformer_config=qformer if qformer is not None else qformer_config(),
        text_config=opt_config(),
        num_query_tokens=num_query_tokens,
        image_text_hidden_size=image_text_hidden_size,
        image_token_index=None,
        initializer_range=QFORMER_INIT_STD,  # the weights the top model owns: text embeddings and projections
    )
