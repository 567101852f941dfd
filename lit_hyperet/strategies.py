"""FSDP wrapping for HyperET + LoRA LLaVA models (used by ``configs/strategy/fsdp.yaml``).

Units: every LLM decoder layer and vision encoder layer (frozen weights, sharded and all-gathered per layer), and
every trainable leaf (LoRA A/B, projector Linears, HyperET matrices) in a unit of its own, so no flat parameter mixes
frozen and trainable tensors (which costs gradient memory for the frozen part, or errors without
``use_orig_params``).
"""

from __future__ import annotations

import re

from torch import nn

#: Class names of transformer blocks: ``LlamaDecoderLayer``, ``MistralDecoderLayer``, ``CLIPEncoderLayer``,
#: ``SiglipEncoderLayer``, ``Dinov2Layer``, …
DEFAULT_LAYER_PATTERN = r"(DecoderLayer|EncoderLayer|Dinov2Layer)$"


def is_trainable_leaf(module: nn.Module) -> bool:
    """A module that owns parameters directly, all of them trainable, and whose children own none."""
    own = list(module.parameters(recurse=False))
    if not own or not all(p.requires_grad for p in own):
        return False
    return all(next(child.parameters(), None) is None for child in module.children())


def is_layer(module: nn.Module, pattern: str = DEFAULT_LAYER_PATTERN) -> bool:
    """True for transformer blocks (matched on the class name)."""
    return re.search(pattern, type(module).__name__) is not None


class HyperETWrapPolicy:
    """FSDP auto-wrap policy: transformer layers plus trainable leaves.

    A callable with FSDP's ``(module, recurse, nonwrapped_numel) -> bool`` policy signature, so that LightningCLI can
    build it from ``class_path`` in YAML.

    Args:
        layer_pattern: regex over module class names that become their own FSDP units.
    """

    def __init__(self, layer_pattern: str = DEFAULT_LAYER_PATTERN) -> None:
        self.layer_pattern = layer_pattern

    def should_wrap(self, module: nn.Module) -> bool:
        """Whether ``module`` becomes an FSDP unit."""
        return is_layer(module, self.layer_pattern) or is_trainable_leaf(module)

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else self.should_wrap(module)


class TransformerLayerPolicy:
    """Matches transformer layers only: the activation-checkpointing policy of the FSDP config.

    Args:
        layer_pattern: regex over module class names.
    """

    def __init__(self, layer_pattern: str = DEFAULT_LAYER_PATTERN) -> None:
        self.layer_pattern = layer_pattern

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else is_layer(module, self.layer_pattern)
