"""Assemble the trainable model: a frozen LLaVA + HyperET on the vision tower + projector + LoRA on the LLM."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from lit_hyperet.hyperet import HyperETConfig, apply_hyperet, hyperet_parameters
from lit_hyperet.models.loading import ModelSource, NamedParams, parameter_counts
from lit_hyperet.user_errors import ConfigError

GROUPS = ("hyperet", "projector", "lora")


def _default_lora_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA on the language model only (never the vision tower or the projector).

    Args:
        r: rank.
        alpha: ``lora_alpha`` (scaling ``alpha / r``).
        dropout: dropout on the LoRA branch input.
        target_modules: attribute names of the Linears to adapt inside ``language_model`` (default: attention and MLP
            projections of Llama-style decoders).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=_default_lora_targets)

    def target_regex(self) -> str:
        """Full-match regex over qualified module names, e.g. ``model.language_model.layers.0.self_attn.q_proj``."""
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name the LLM modules to adapt, or set lora: null")
        names = "|".join(re.escape(t) for t in self.target_modules)
        return rf"(?:.*\.)?language_model\.(?:.*\.)?(?:{names})"

    def to_peft(self) -> LoraConfig:
        """The peft ``LoraConfig`` (task ``CAUSAL_LM``, adapter weights in fp32 as peft does by default)."""
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_regex(),
            task_type="CAUSAL_LM",
        )


def _projector_params(model: nn.Module) -> NamedParams:
    return [
        (f"{name}.{pname}", p)
        for name, module in model.named_modules()
        if isinstance(module, LlavaMultiModalProjector)
        for pname, p in module.named_parameters()
    ]


def _lora_params(model: nn.Module) -> NamedParams:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for attr in module.adapter_layer_names:
                out += [(f"{name}.{attr}.{pname}", p) for pname, p in getattr(module, attr).named_parameters()]
    return out


def _all_groups(model: nn.Module) -> dict[str, NamedParams]:
    return {"hyperet": hyperet_parameters(model), "projector": _projector_params(model), "lora": _lora_params(model)}


def trainable_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by group, ``{"hyperet", "projector", "lora"}`` -> ``[(qualified name, param)]``.

    Groups are found by module type: HyperET parametrizations, transformers' ``LlavaMultiModalProjector`` and peft's
    ``LoraLayer`` adapter weights; names are relative to ``model``.
    """
    return {group: [(n, p) for n, p in params if p.requires_grad] for group, params in _all_groups(model).items()}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``total`` and ``trainable`` parameter counts plus the trainable count of each group."""
    return parameter_counts(model, trainable_groups(model))


def build_llava(
    source: ModelSource,
    hyperet: HyperETConfig | None = None,
    train_projector: bool = True,
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Load ``source``'s LLaVA, freeze it, then add LoRA (peft), HyperET and a trainable projector as asked.

    Returns the ``LlavaForConditionalGeneration`` or, with ``lora``, the peft ``PeftModel`` wrapping it. HyperET is
    applied to the unwrapped LLaVA, so ``HyperETConfig.targets`` match names like ``model.vision_tower.…`` with or
    without LoRA. Gradient checkpointing uses non-reentrant checkpoints (works with a frozen backbone). The trainable
    set is checked to be exactly HyperET + projector (if ``train_projector``) + LoRA; ``RuntimeError`` otherwise.
    """
    model: nn.Module = source.load_model()
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if lora is not None:
        with warnings.catch_warnings():  # peft 0.21 reads the attribute transformers 5.23 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
            model = get_peft_model(model, lora.to_peft())
    if hyperet is not None:
        llava = model.get_base_model() if isinstance(model, PeftModel) else model
        apply_hyperet(llava, hyperet)
    groups = _all_groups(model)
    if not groups["projector"]:
        raise RuntimeError(f"no LlavaMultiModalProjector found in {type(model).__name__}")
    for _, p in groups["projector"]:
        p.requires_grad_(train_projector)
    for _, p in groups["hyperet"] + groups["lora"]:
        p.requires_grad_(True)
    _check_trainable(model, [*groups["hyperet"], *groups["lora"], *(groups["projector"] if train_projector else [])])
    return model


def _check_trainable(model: nn.Module, expected: NamedParams) -> None:
    expected_ids = {id(p) for _, p in expected}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in expected_ids]
    frozen = [n for n, p in expected if not p.requires_grad]
    if extra or frozen:
        raise RuntimeError(
            f"trainable set is wrong: unexpected trainable {extra[:10]}, frozen but expected {frozen[:10]}"
        )
