"""BLIP-2 image–text retrieval models (``transformers.Blip2ForImageTextRetrieval``) for hyperbolic alignment:
sources, the generated tiny model, freezing / HyperET and the embeddings. Names are imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_hyperet.models.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from lit_hyperet.models.blip2.build import (
        CALLED_PARTS,
        build_blip2_retrieval,
        count_parameters,
        image_query_embeddings,
        itm_logits,
        text_embeddings,
        trainable_groups,
        vision_features,
    )
    from lit_hyperet.models.blip2.sources import Blip2RetrievalSource, PretrainedBlip2Retrieval, TinyBlip2Retrieval
    from lit_hyperet.models.blip2.tiny import make_tiny_blip2_itm

_WHERE = {
    "CALLED_PARTS": "build",
    "build_blip2_retrieval": "build",
    "count_parameters": "build",
    "image_query_embeddings": "build",
    "itm_logits": "build",
    "vision_features": "build",
    "text_embeddings": "build",
    "trainable_groups": "build",
    "Blip2RetrievalSource": "sources",
    "PretrainedBlip2Retrieval": "sources",
    "TinyBlip2Retrieval": "sources",
    "make_tiny_blip2_itm": "tiny",
}
__all__ = [
    "CALLED_PARTS",
    "Blip2RetrievalSource",
    "PretrainedBlip2Retrieval",
    "TinyBlip2Retrieval",
    "build_blip2_retrieval",
    "count_parameters",
    "image_query_embeddings",
    "itm_logits",
    "make_tiny_blip2_itm",
    "text_embeddings",
    "trainable_groups",
    "vision_features",
]
__getattr__ = lazy_getattr(__name__, _WHERE)
