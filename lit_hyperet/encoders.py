"""Facts about the supported vision towers that LLaVA's processor and config need.

How each tower's hidden states become LLaVA's image tokens (``LlavaModel.get_image_features`` takes
``hidden_states[vision_feature_layer]``; ``default`` drops exactly one leading token, ``full`` keeps all):

- CLIP, DINOv2, BLIP-2: CLS + patches; ``default`` drops the CLS.
- SigLIP: patches only; ``full``.
- DINOv2 with registers, DINOv3: CLS + register tokens + patches; ``full`` keeps CLS and registers, so the LLM sees
  ``1 + num_register_tokens`` global tokens before the patches (LLaVA has no strategy dropping more than one token).
- SAM: no CLS, and its hidden states are spatial maps ``(B, H, W, C)``; ``full`` keeps the map, the projector acts on
  the last dim and LLaVA's ``masked_scatter`` fills the ``H·W`` image tokens of an image row-major (the order of
  ``map.flatten(1, 2)``); ``default`` would drop the map's first row.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

from lit_hyperet.user_errors import ConfigError

#: ``model_type`` of a vision config -> tokens the tower emits before its patch tokens (CLS, registers).
_PREFIX_TOKENS = {
    "clip_vision_model": 1,
    "siglip_vision_model": 0,
    "dinov2": 1,
    "sam_vision_model": 0,
    "blip_2_vision_model": 1,
}
#: Towers with register tokens after the CLS: 1 + ``num_register_tokens`` prefix tokens.
_WITH_REGISTERS = ("dinov2_with_registers", "dinov3_vit")

#: ``model_type`` of a full model -> it holds a supported tower as its ``vision_config`` (CLIP / SigLIP dual encoders,
#: SAM's image encoder, BLIP-2's ViT under its Q-Former and LLM).
FULL_MODELS = ("clip", "siglip", "sam", "blip-2")

#: Position augmentations a tower applies in training mode only (DINOv3 shifts, jitters and rescales its RoPE grid,
#: drawing random numbers). A frozen tower inside LLaVA must give the same features in training as in evaluation.
_TRAIN_ONLY_AUGMENTATIONS = {"dinov3_vit": ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale")}


def prefix_tokens(vision_config: PreTrainedConfig) -> int:
    """Number of non-patch tokens (CLS and register tokens) at the start of the tower's hidden states."""
    model_type = vision_config.model_type
    if model_type in _WITH_REGISTERS:
        return 1 + int(vision_config.num_register_tokens)
    if model_type not in _PREFIX_TOKENS:
        raise ConfigError(
            f"unsupported vision tower model_type {model_type!r}; supported: "
            f"{', '.join([*_PREFIX_TOKENS, *_WITH_REGISTERS])}"
        )
    return _PREFIX_TOKENS[model_type]


def vision_half(config: PreTrainedConfig) -> PreTrainedConfig:
    """The tower's config: ``config`` itself, or the ``vision_config`` of a full model (:data:`FULL_MODELS`)."""
    return config.vision_config if config.model_type in FULL_MODELS else config


def disable_train_augmentations(vision_config: PreTrainedConfig) -> PreTrainedConfig:
    """Switch off the tower's train-mode-only position augmentations (DINOv3), in place; returns the config."""
    for name in _TRAIN_ONLY_AUGMENTATIONS.get(vision_config.model_type, ()):
        setattr(vision_config, name, None)
    return vision_config


def check_select_strategy(vision_config: PreTrainedConfig, strategy: str) -> None:
    """LLaVA's ``default`` strategy drops exactly one leading token: refuse it for towers without a single CLS."""
    if strategy not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    if strategy == "default" and prefix_tokens(vision_config) != 1:
        raise ConfigError(
            f"vision_feature_select_strategy='default' drops one CLS token, but a {vision_config.model_type} tower "
            f"emits {prefix_tokens(vision_config)} prefix tokens; use 'full'"
        )
