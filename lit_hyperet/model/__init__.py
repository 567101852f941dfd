"""Building ``transformers.LlavaForConditionalGeneration`` models: sources, freezing, HyperET, LoRA, export.

Names are imported lazily, so ``make-tiny-model`` does not pull in peft and the HyperET code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_hyperet.model.build import LoraSettings, build_llava, count_parameters, trainable_groups
    from lit_hyperet.model.export import merge_and_save
    from lit_hyperet.model.sources import LlavaFromParts, ModelSource, PretrainedLlava, TinyLlava
    from lit_hyperet.model.tiny import make_tiny_model

_WHERE = {
    "LoraSettings": "build",
    "build_llava": "build",
    "count_parameters": "build",
    "trainable_groups": "build",
    "merge_and_save": "export",
    "LlavaFromParts": "sources",
    "ModelSource": "sources",
    "PretrainedLlava": "sources",
    "TinyLlava": "sources",
    "make_tiny_model": "tiny",
}
__all__ = [
    "LlavaFromParts",
    "LoraSettings",
    "ModelSource",
    "PretrainedLlava",
    "TinyLlava",
    "build_llava",
    "count_parameters",
    "make_tiny_model",
    "merge_and_save",
    "trainable_groups",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lit_hyperet.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lit_hyperet.model.{_WHERE[name]}"), name)
