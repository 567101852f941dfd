"""Assemble MemVP's trainable model: everything frozen except the projector, E1 / E2, the CLIP adapters and HyperET."""

from __future__ import annotations

from typing import Any

from lit_hyperet.hyperet import HyperETConfig, apply_hyperet, hyperet_parameters
from lit_hyperet.models.loading import NamedParams, parameter_counts
from lit_hyperet.models.memvp.layers import VisionAdapter
from lit_hyperet.models.memvp.model import MemVPModel
from lit_hyperet.user_errors import ConfigError

#: Parameter groups: HyperET, the projector (``adapter_proj``), the memory (``adapter_emb1/2`` and the optional
#: ``adapter_modality_embedding``), the CLIP MLP adapters.
GROUPS = ("hyperet", "projector", "memory", "vision_adapters")


def _all_groups(model: MemVPModel) -> dict[str, NamedParams]:
    memory = [(n, p) for n, p in model.named_parameters() if n.startswith(("adapter_emb", "adapter_modality"))]
    adapters = [
        (f"{name}.{pname}", p)
        for name, module in model.named_modules()
        if isinstance(module, VisionAdapter)
        for pname, p in module.named_parameters()
    ]
    projector = [(f"adapter_proj.{n}", p) for n, p in model.adapter_proj.named_parameters()]
    return {"hyperet": hyperet_parameters(model), "projector": projector, "memory": memory, "vision_adapters": adapters}


def trainable_groups(model: MemVPModel) -> dict[str, NamedParams]:
    """Trainable parameters by group (:data:`GROUPS`) -> ``[(qualified name, parameter)]``."""
    return {group: [(n, p) for n, p in params if p.requires_grad] for group, params in _all_groups(model).items()}


def count_parameters(model: MemVPModel) -> dict[str, int]:
    """``total`` and ``trainable`` parameter counts plus the trainable count of each group."""
    return parameter_counts(model, trainable_groups(model))


def build_memvp(
    model: MemVPModel,
    hyperet: HyperETConfig | None = None,
    train_projector: bool = True,
    lora: Any = None,
    gradient_checkpointing: bool = False,
) -> MemVPModel:
    """Freeze ``model``, then train the projector (if ``train_projector``), E1 / E2, the CLIP adapters and HyperET.

    HyperET's default targets match the CLIP tower's q / v projections (never the LLM's). MemVP trains no LoRA:
    ``lora`` must be ``None``. Activation checkpointing is non-reentrant (the memory stays set for the recompute).
    """
    if lora is not None:
        raise ConfigError("the MemVP family trains no LoRA: set model.init_args.lora to null")
    model.requires_grad_(False)
    if gradient_checkpointing:
        for part in (model.language_model, model.vision_tower):
            part.activation_checkpointing_enable({"use_reentrant": False})
    if hyperet is not None:
        apply_hyperet(model, hyperet)
    groups = _all_groups(model)
    for name, params in groups.items():
        for _, p in params:
            p.requires_grad_(train_projector if name == "projector" else True)
    expected = {id(p) for name, params in groups.items() if name != "projector" or train_projector for _, p in params}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in expected]
    if extra:
        raise RuntimeError(f"trainable set is wrong: unexpected trainable {extra[:10]}")
    return model
