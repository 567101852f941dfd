"""Building ``transformers.LlavaForConditionalGeneration`` models: sources, freezing, HyperET, LoRA, merging.

Names are imported lazily, so ``make-tiny-model`` does not pull in peft and the HyperET code. Importing the package
registers BLIP-2's vision model with ``AutoModel`` (see :mod:`lit_hyperet.models.llava.towers`), so every LLaVA built
or loaded through it may have a BLIP-2 tower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_hyperet.models.lazy_exports import lazy_getattr
from lit_hyperet.models.llava.towers import register_towers

register_towers()

if TYPE_CHECKING:
    from lit_hyperet.models.llava.build import LoraSettings, build_llava, count_parameters, trainable_groups
    from lit_hyperet.models.llava.merge import merge_and_save
    from lit_hyperet.models.llava.sources import LlavaFromParts, LlavaSource, PretrainedLlava, TinyLlava
    from lit_hyperet.models.llava.tiny import make_tiny_model

_WHERE = {
    "LoraSettings": "build",
    "build_llava": "build",
    "count_parameters": "build",
    "trainable_groups": "build",
    "merge_and_save": "merge",
    "LlavaFromParts": "sources",
    "LlavaSource": "sources",
    "PretrainedLlava": "sources",
    "TinyLlava": "sources",
    "make_tiny_model": "tiny",
}
__all__ = [
    "LlavaFromParts",
    "LlavaSource",
    "LoraSettings",
    "PretrainedLlava",
    "TinyLlava",
    "build_llava",
    "count_parameters",
    "make_tiny_model",
    "merge_and_save",
    "trainable_groups",
]
__getattr__ = lazy_getattr(__name__, _WHERE)
