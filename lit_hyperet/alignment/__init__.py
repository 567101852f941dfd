"""Hyperbolic image–text alignment, model-agnostic: the spaces (Euclidean, Poincaré cosine, Poincaré distance,
Lorentz), query aggregation (max, mean, Random Query Selection), Random Text Pruning, the contrastive head with its
learnable temperature, curvature and embedding scale, radius statistics, MERU's entailment loss and the hard
negatives of image–text matching.

Imports only torch, geoopt and :mod:`lit_hyperet.geometry` (never a model family, a task or the data plumbing).
"""

from __future__ import annotations

from lit_hyperet.alignment.contrastive import (
    CURVATURE_RANGE_FACTOR,
    MAX_EMBEDDING_SCALE,
    TEMPERATURE_RANGE,
    AlignmentOutput,
    ContrastiveAlignment,
    same_image,
    symmetric_infonce,
)
from lit_hyperet.alignment.entailment import (
    ENTAILMENT_SPACES,
    MERU_APERTURE,
    MERU_WEIGHT,
    check_entailment_space,
    entailment_loss,
    exterior_angle,
    half_aperture,
)
from lit_hyperet.alignment.itm import ITM_NEGATIVES, HardNegatives, hardest_negatives, itm_loss, sampled_negatives
from lit_hyperet.alignment.queries import (
    EVAL_QUERY_AGGREGATIONS,
    QUERY_AGGREGATIONS,
    QueryAggregation,
    aggregate_queries,
    pick_random_queries,
    random_query_indices,
)
from lit_hyperet.alignment.spaces import (
    DISTANCE_SPACES,
    SPACES,
    Space,
    cosine_identity_gap,
    hyperbolic_points,
    query_similarity,
    radius,
    saturated,
    to_space,
)
from lit_hyperet.alignment.text_pruning import RTP_MODES, RtpMode, prune_caption, prune_captions

__all__ = [
    "CURVATURE_RANGE_FACTOR",
    "DISTANCE_SPACES",
    "ENTAILMENT_SPACES",
    "EVAL_QUERY_AGGREGATIONS",
    "ITM_NEGATIVES",
    "MAX_EMBEDDING_SCALE",
    "MERU_APERTURE",
    "MERU_WEIGHT",
    "QUERY_AGGREGATIONS",
    "RTP_MODES",
    "SPACES",
    "TEMPERATURE_RANGE",
    "AlignmentOutput",
    "ContrastiveAlignment",
    "HardNegatives",
    "QueryAggregation",
    "RtpMode",
    "Space",
    "aggregate_queries",
    "check_entailment_space",
    "cosine_identity_gap",
    "entailment_loss",
    "exterior_angle",
    "half_aperture",
    "hardest_negatives",
    "hyperbolic_points",
    "itm_loss",
    "pick_random_queries",
    "prune_caption",
    "prune_captions",
    "query_similarity",
    "radius",
    "random_query_indices",
    "same_image",
    "sampled_negatives",
    "saturated",
    "symmetric_infonce",
    "to_space",
]
