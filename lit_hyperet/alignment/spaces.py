"""Where image and text embeddings meet: the four spaces, their per-query similarities, radii and saturation.

Embeddings ``u`` (the Q-Former's projections, un-normalised) are mapped into a space by :func:`to_space`, then
compared by :func:`query_similarity` (higher is more similar):

========================= ============================================== ============================================
space                     point                                          similarity
========================= ============================================== ============================================
``euclidean``             ``u / ‖u‖`` (BLIP-2's ITC)                     dot product = cosine
``poincare_cosine``       ``proj(exp0_c(α u))`` in the Poincaré ball      cosine of the ball points
``poincare_distance``     ``proj(exp0_c(α u))`` in the Poincaré ball      − Poincaré distance
``lorentz``               ``lorentz_exp0_c(α u)`` (MERU, space part)      − Lorentzian geodesic distance
========================= ============================================== ============================================

``α`` is the embedding scale, ``c`` the curvature, ``proj`` geoopt's projection inside the ball (margin
:data:`lit_hyperet.geometry.GEOOPT_BALL_MARGIN`).

**The identity.** ``exp0`` and the projection only rescale a vector by a positive factor, so
``cos(proj(exp0(α u)), proj(exp0(α v))) = cos(u, v)``: ``poincare_cosine`` gives exactly the ``euclidean``
similarities (up to rounding) whatever ``c`` and ``α`` are; its radii are unconstrained by the loss.
:func:`cosine_identity_gap` measures the difference.

Everything computes in at least float32 with autocast off (:func:`lit_hyperet.geometry.at_least_fp32`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lit_hyperet import geometry as g

Tensor = torch.Tensor
Space = Literal["euclidean", "poincare_cosine", "poincare_distance", "lorentz"]
SPACES: tuple[str, ...] = ("euclidean", "poincare_cosine", "poincare_distance", "lorentz")
#: Spaces whose similarity is a negative hyperbolic distance (the radius then matters to the loss).
DISTANCE_SPACES: tuple[str, ...] = ("poincare_distance", "lorentz")
#: Relative slack when deciding that a point sits at its space's limit.
SATURATION_TOLERANCE = 1e-5


def check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"space {space!r} is not one of {', '.join(SPACES)}")


def _poincare_points(u: Tensor, c: float | Tensor, scale: float | Tensor) -> Tensor:
    ball = g.exp0(u * scale, c)
    return g.project(ball, c, eps=g.ball_margin(ball.dtype))


@g.at_least_fp32
def to_space(space: Space, u: Tensor, c: float | Tensor = 1.0, scale: float | Tensor = 1.0) -> Tensor:
    """The points of embeddings ``u`` (``[..., D]``) in ``space`` (same shape; see the module docstring)."""
    check_space(space)
    if space == "euclidean":
        return F.normalize(u, dim=-1)
    if space == "lorentz":
        return g.lorentz_exp0(u * scale, c)
    return _poincare_points(u, c, scale)


@g.at_least_fp32
def hyperbolic_points(space: Space, u: Tensor, c: float | Tensor = 1.0, scale: float | Tensor = 1.0) -> Tensor:
    """The hyperbolic points whose radius is reported: ``to_space`` for the hyperbolic spaces, and for ``euclidean``
    the Poincaré-ball points ``proj(exp0_c(α u))`` its embeddings would have (its loss never sees them)."""
    check_space(space)
    if space == "lorentz":
        return g.lorentz_exp0(u * scale, c)
    return _poincare_points(u, c, scale)


@g.at_least_fp32
def query_similarity(space: Space, image: Tensor, text: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Similarity of every image query with every text: points ``image [B, Q, D]`` and ``text [T, D]`` (from
    :func:`to_space`) give ``[B, Q, T]``; no temperature."""
    check_space(space)
    if space == "euclidean":
        return image @ text.T
    if space == "poincare_cosine":
        return F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    if space == "poincare_distance":
        return -g.poincare_pairwise_distance(image, text, c)
    return -g.lorentz_pairwise_distance(image, text, c)


@g.at_least_fp32
def radius(space: Space, points: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Hyperbolic radius (distance to the origin) of :func:`hyperbolic_points`; reduces the last dim.

    Poincaré ball: ``2·artanh(√c‖x‖)/√c``; Lorentz model: ``acosh(√c x_t)/√c``.
    """
    check_space(space)
    return g.lorentz_radius(points, c) if space == "lorentz" else g.radius(points, c)


@torch.no_grad()
def saturated(space: Space, points: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Whether each of :func:`hyperbolic_points` sits at its space's numerical limit (bool, the last dim reduced).

    Poincaré ball: ``√c‖x‖`` at geoopt's projection bound ``1 − margin`` (float32: 4e-3), i.e. the radius at
    ``2·artanh(1 − margin)/√c``; Lorentz model: ``√c‖v‖`` at MERU's sinh clamp ``asinh(2^15)``, i.e. ``√c‖x‖`` at
    ``2^15``. Beyond these the embedding's radius no longer follows its norm.
    """
    check_space(space)
    dtype = g.compute_dtype(points)
    points = points.to(dtype)
    s = (c.detach() if isinstance(c, Tensor) else torch.tensor(float(c))).to(points.device, dtype).sqrt()
    scaled = s * points.norm(dim=-1)
    if space == "lorentz":
        limit = torch.sinh(torch.tensor(g.LORENTZ_SINH_MAX, dtype=dtype))
    else:
        limit = torch.tensor(1 - g.ball_margin(dtype), dtype=dtype)
    return scaled >= limit.to(points.device) * (1 - SATURATION_TOLERANCE)


@torch.no_grad()
def cosine_identity_gap(u_image: Tensor, u_text: Tensor, c: float | Tensor = 1.0, scale: float | Tensor = 1.0) -> float:
    """``max |poincare_cosine − euclidean|`` over the per-query similarities of raw embeddings ``u_image [B, Q, D]``
    and ``u_text [T, D]``: zero up to rounding, whatever ``c`` and ``scale`` (the identity in the module docstring)."""
    sims = [
        query_similarity(space, to_space(space, u_image, c, scale), to_space(space, u_text, c, scale), c)
        for space in ("poincare_cosine", "euclidean")
    ]
    return float((sims[0] - sims[1]).abs().max())
