"""Merge HyperET and LoRA into the weights and save a plain Hugging Face LLaVA dir."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel, ProcessorMixin

from lit_hyperet.hyperet import merge_hyperet


def merge_adapters(model: nn.Module) -> PreTrainedModel:
    """Bake HyperET (``merge_hyperet``) and LoRA (peft ``merge_and_unload``) into plain weights, **in place**.

    Returns the plain ``LlavaForConditionalGeneration`` (the peft wrapper is dropped); ``model`` itself is left
    merged and must not be trained further. Raises ``RuntimeError`` if a parametrization or LoRA layer survives.
    """
    merge_hyperet(model)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    left = [n for n, m in model.named_modules() if parametrize.is_parametrized(m) or isinstance(m, LoraLayer)]
    if left:
        raise RuntimeError(f"merge left parametrized or LoRA modules behind: {left[:10]}")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected a transformers model after merging, got {type(model).__name__}")
    return model


def merge_and_save(model: nn.Module, processor: ProcessorMixin, out: str | Path) -> Path:
    """Merge HyperET and LoRA into ``model`` (in place, see :func:`merge_adapters`) and save it with ``processor``.

    ``out`` becomes a plain HF LLaVA dir (``model.safetensors``, config, processor, tokenizer, chat template) that
    ``LlavaForConditionalGeneration.from_pretrained(out)`` loads with no HyperET or peft code. Returns ``Path(out)``.
    """
    out = Path(out)
    plain = merge_adapters(model)
    plain.save_pretrained(out)  # transformers 5 always writes safetensors
    processor.save_pretrained(out)
    return out
