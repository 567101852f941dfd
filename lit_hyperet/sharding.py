"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the suite's models, reading sharded parameters, and the
parameters no unit holds.

Units: every transformer layer (of the LLM, the vision tower, the Q-Former: frozen weights, trainable LoRA / HyperET
tensors and the frozen HyperET originals of that layer together: FSDP2 shards each parameter on its own, so mixing
frozen and trainable tensors in one unit costs nothing), then either the root for what is left (LLaVA:
:func:`shard_model`; embeddings, projector, lm_head) or, for a model whose parts are called one by one instead of
through its ``forward`` (BLIP-2 retrieval: :func:`shard_parts`), each part that is called. Tiny trainable leaves are
not units of their own: FSDP2 does not need it, and such units confuse its root detection.

Parameters no unit holds (a bare parameter read outside any unit's forward, such as BLIP-2's query tokens, and
0-dim ones, which FSDP2 cannot shard, such as a learnt temperature) stay plain tensors replicated on every rank:
:func:`replicated_parameters`; ``FSDP2Strategy`` averages their gradients over the ranks as DDP would
(:func:`average_gradients`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from lit_hyperet.user_errors import ConfigError

#: Class names of transformer blocks: ``LlamaDecoderLayer``, ``MistralDecoderLayer``, ``CLIPEncoderLayer``,
#: ``SiglipEncoderLayer``, ``Blip2EncoderLayer``, ``Blip2QFormerLayer``, ``Dinov2Layer``, ``DINOv3ViTLayer``,
#: ``SamVisionLayer``, …
DEFAULT_LAYER_PATTERN = r"(DecoderLayer|EncoderLayer|QFormerLayer|Dinov2Layer|DINOv3ViTLayer|SamVisionLayer)$"

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


def data_parallel_mesh(mesh: DeviceMesh, owner: str) -> DeviceMesh:
    """The data-parallel dimension of a strategy's device mesh; a ``ConfigError`` naming ``owner`` (the module) when
    the mesh also has tensor parallelism, which the suite's modules do not implement."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
        raise ConfigError(
            f"{owner} shards with FSDP2 only (data parallel); set tensor_parallel_size 1 "
            "(lit_hyperet.strategies.FSDP2Strategy does)"
        )
    return mesh["data_parallel"] if names else mesh


def _shard_kwargs(mesh: DeviceMesh, precision: str) -> dict:
    kwargs = {"mesh": mesh}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        kwargs["mp_policy"] = policy
    return kwargs


def _shard_layers(model: nn.Module, kwargs: dict, layer_pattern: str) -> int:
    layers = [m for m in model.modules() if is_layer(m, layer_pattern)]
    if not layers:
        raise ConfigError(f"no module class of {type(model).__name__} matches the layer pattern {layer_pattern!r}")
    for layer in layers:
        fully_shard(layer, **kwargs)
    return len(layers)


def shard_model(
    model: nn.Module, mesh: DeviceMesh, precision: str = "32-true", layer_pattern: str = DEFAULT_LAYER_PATTERN
) -> int:
    """``fully_shard`` every transformer layer of ``model`` on ``mesh``, then ``model`` itself; returns the layer count.

    ``model.generate`` is registered as an FSDP forward method, so the root's parameters are gathered for generation
    (it bypasses the root's ``forward``).
    """
    kwargs = _shard_kwargs(mesh, precision)
    count = _shard_layers(model, kwargs, layer_pattern)
    fully_shard(model, **kwargs)
    if hasattr(model, "generate"):
        register_fsdp_forward_method(model, "generate")
    return count


def shard_parts(
    model: nn.Module,
    mesh: DeviceMesh,
    parts: Iterable[str],
    precision: str = "32-true",
    layer_pattern: str = DEFAULT_LAYER_PATTERN,
) -> int:
    """``fully_shard`` every transformer layer of ``model``, then each named submodule in ``parts`` (the ones the
    caller runs directly instead of ``model.forward``), and no root; returns the layer count.

    Each part is then a root of its own: it gathers its parameters when it is called and, as every unit here,
    reshards them after its forward (a root would keep them gathered by default). Parameters of ``model`` outside
    the parts stay plain, replicated tensors (:func:`replicated_parameters`).
    """
    kwargs = {**_shard_kwargs(mesh, precision), "reshard_after_forward": True}
    count = _shard_layers(model, kwargs, layer_pattern)
    for name in parts:
        fully_shard(model.get_submodule(name), **kwargs)
    return count


def replicated_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters of a sharded ``model`` that no FSDP2 unit holds (plain tensors, not DTensors)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], group: dist.ProcessGroup | None = None) -> None:
    """Average the gradients of replicated ``params`` over the ranks of ``group``, in one collective, as DDP does: a
    rank without a gradient for a parameter counts as zero, and a parameter without a gradient on every rank keeps
    none. A collective: every rank must pass the same parameters in the same order."""
    params = list(params)
    if not params:
        return
    grads = [p.grad.detach().reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([*(g.to(has_grad.dtype) for g in grads), has_grad])
    dist.all_reduce(flat, group=group)
    world = dist.get_world_size(group)
    values, counts = flat[: -len(params)], flat[-len(params) :]
    offset = 0
    for p, count in zip(params, counts.tolist(), strict=True):
        mean = (values[offset : offset + p.numel()] / world).view_as(p).to(p.dtype)
        offset += p.numel()
        if count > 0:
            p.grad = mean


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


@torch.no_grad()
def clip_gradients(params: Iterable[nn.Parameter], value: float, algorithm: str = "norm") -> torch.Tensor | None:
    """Gradient clipping over parameters that mix FSDP2 shards (DTensors) and replicated plain tensors, which torch's
    clipping refuses to combine: by the total 2-``norm`` (every shard, each replicated tensor once; returned) or by
    ``value``."""
    params = [p for p in params if p.grad is not None]
    kinds = [
        k
        for k in ([p for p in params if isinstance(p, DTensor)], [p for p in params if not isinstance(p, DTensor)])
        if k
    ]
    if algorithm == "value":
        for kind in kinds:
            torch.nn.utils.clip_grad_value_(kind, value)
        return None
    norms = []
    for kind in kinds:
        norm = torch.nn.utils.get_total_norm([p.grad for p in kind])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        return None
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = min(1.0, value / (float(total) + 1e-6))  # torch's clip_grad_norm_ coefficient
    for p in params:
        p.grad.mul_(coef)
    return total
