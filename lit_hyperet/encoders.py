"""Facts about the supported vision towers that LLaVA's processor and config need."""

from __future__ import annotations

from transformers import PreTrainedConfig

from lit_hyperet.user_errors import ConfigError

#: ``model_type`` of a vision config -> tokens the tower emits before its patch tokens (CLS, registers).
_PREFIX_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0, "dinov2": 1}


def prefix_tokens(vision_config: PreTrainedConfig) -> int:
    """Number of non-patch tokens (CLS and register tokens) at the start of the tower's hidden states."""
    model_type = vision_config.model_type
    if model_type == "dinov2_with_registers":
        return 1 + int(vision_config.num_register_tokens)
    if model_type not in _PREFIX_TOKENS:
        raise ConfigError(
            f"unsupported vision tower model_type {model_type!r}; supported: "
            f"{', '.join([*_PREFIX_TOKENS, 'dinov2_with_registers'])}"
        )
    return _PREFIX_TOKENS[model_type]


def check_select_strategy(vision_config: PreTrainedConfig, strategy: str) -> None:
    """LLaVA's ``default`` strategy drops exactly one leading token: refuse it for towers without a single CLS."""
    if strategy not in ("default", "full"):
        raise ConfigError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    if strategy == "default" and prefix_tokens(vision_config) != 1:
        raise ConfigError(
            f"vision_feature_select_strategy='default' drops one CLS token, but a {vision_config.model_type} tower "
            f"emits {prefix_tokens(vision_config)} prefix tokens; use 'full'"
        )
