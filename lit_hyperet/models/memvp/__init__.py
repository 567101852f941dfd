"""The MemVP family (Jie et al., ICML 2024): visual features as extra keys / values of every LLaMA FFN, CLIP MLP
adapters, no visual tokens and no LoRA, on unmodified transformers models (``reference/memvp.md`` in the docs).

Names are imported lazily, like :mod:`lit_hyperet.models.llava`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_hyperet.models.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from lit_hyperet.models.memvp.build import build_memvp, count_parameters, trainable_groups
    from lit_hyperet.models.memvp.merge import load_merged, save_merged
    from lit_hyperet.models.memvp.model import MemVPModel
    from lit_hyperet.models.memvp.sources import MemVPFromParts, MemVPSettings, MemVPSource, TinyMemVP
    from lit_hyperet.models.memvp.tiny import make_tiny_memvp

_WHERE = {
    "build_memvp": "build",
    "count_parameters": "build",
    "trainable_groups": "build",
    "load_merged": "merge",
    "save_merged": "merge",
    "MemVPModel": "model",
    "MemVPFromParts": "sources",
    "MemVPSettings": "sources",
    "MemVPSource": "sources",
    "TinyMemVP": "sources",
    "make_tiny_memvp": "tiny",
}
__all__ = [
    "MemVPFromParts",
    "MemVPModel",
    "MemVPSettings",
    "MemVPSource",
    "TinyMemVP",
    "build_memvp",
    "count_parameters",
    "load_merged",
    "make_tiny_memvp",
    "save_merged",
    "trainable_groups",
]
__getattr__ = lazy_getattr(__name__, _WHERE)
