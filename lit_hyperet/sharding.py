"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for HyperET + LoRA LLaVA models, and reading sharded parameters.

Units: every transformer layer of the LLM and of the vision tower (frozen weights, trainable LoRA / HyperET tensors
and the frozen HyperET originals of that layer together: FSDP2 shards each parameter on its own, so mixing frozen and
trainable tensors in one unit costs nothing), then the root for what is left (embeddings, projector, lm_head).
Tiny trainable leaves are not units of their own: FSDP2 does not need it, and such units confuse its root detection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from lit_hyperet.user_errors import ConfigError

#: Class names of transformer blocks: ``LlamaDecoderLayer``, ``MistralDecoderLayer``, ``CLIPEncoderLayer``,
#: ``SiglipEncoderLayer``, ``Blip2EncoderLayer``, ``Dinov2Layer``, ``DINOv3ViTLayer``, ``SamVisionLayer``, …
DEFAULT_LAYER_PATTERN = r"(DecoderLayer|EncoderLayer|Dinov2Layer|DINOv3ViTLayer|SamVisionLayer)$"

#: ``trainer.precision`` -> the FSDP2 mixed-precision policy (``None``: parameters and compute in float32).
#: Gradients are reduced in float32 in every case; the sharded master weights stay float32.
_POLICIES: dict[str, MixedPrecisionPolicy | None] = {
    "32-true": None,
    "bf16-mixed": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
}


def is_layer(module: nn.Module, pattern: str = DEFAULT_LAYER_PATTERN) -> bool:
    """True for transformer blocks (matched on the class name)."""
    return re.search(pattern, type(module).__name__) is not None


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy | None:
    """The FSDP2 policy for a Lightning ``trainer.precision`` value; other values are a ``ConfigError``.

    ``*-true`` half precisions would cast the trainable master weights (and so the checkpoint) to 16 bits; under FSDP2
    use ``bf16-mixed``, which keeps float32 masters and computes in bf16.
    """
    if precision not in _POLICIES:
        raise ConfigError(
            f"trainer.precision {precision!r} is not supported with FSDP2; use one of {', '.join(_POLICIES)} "
            "(bf16-mixed: bf16 compute, float32 weights and gradient reduction)"
        )
    return _POLICIES[precision]


def shard_model(
    model: nn.Module, mesh: DeviceMesh, precision: str = "32-true", layer_pattern: str = DEFAULT_LAYER_PATTERN
) -> int:
    """``fully_shard`` every transformer layer of ``model`` on ``mesh``, then ``model`` itself; returns the layer count.

    ``model.generate`` is registered as an FSDP forward method, so the root's parameters are gathered for generation
    (it bypasses the root's ``forward``).
    """
    kwargs = {"mesh": mesh}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    layers = [m for m in model.modules() if is_layer(m, layer_pattern)]
    if not layers:
        raise ConfigError(f"no module class of {type(model).__name__} matches the layer pattern {layer_pattern!r}")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return len(layers)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is an FSDP2 unit."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def owning_units(model: nn.Module, names: Iterable[str]) -> list[FSDPModule]:
    """The innermost FSDP2 unit that holds each named submodule's own parameters (deduplicated, in model order)."""
    units = {name: m for name, m in model.named_modules() if isinstance(m, FSDPModule)}
    chosen: set[str] = set()
    for name in names:
        owners = [u for u in units if u == "" or name == u or name.startswith(u + ".")]
        if owners:
            chosen.add(max(owners, key=len))
    return [units[u] for u in units if u in chosen]


@contextmanager
def gathered(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Inside the block the named submodules of an FSDP2-sharded ``model`` hold full, plain tensors.

    A collective: every rank must enter it with the same names. No-op for a model that is not sharded. Parameters are
    gathered in the policy's ``param_dtype`` (bf16 under ``bf16-mixed``).
    """
    units = owning_units(model, names) if is_sharded(model) else []
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
