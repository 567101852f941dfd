"""MERU's entailment loss: a caption's entailment cone should contain its image (Desai et al. 2023, MERU
``meru/lorentz.py`` ``half_aperture`` / ``oxy_angle`` and ``meru/models.py``).

On the hyperboloid (points stored by their space components ``x``, curvature ``−c``), the cone of a text point ``t``
has its apex at ``t`` and the half aperture ``asin(2K / (√c‖t‖))`` (``K`` = MERU's ``min_radius``, 0.1: points
nearer the origin than that get the aperture of the boundary). The loss of a pair is ``max(0, angle(t, i) −
aperture(t))`` where ``angle(t, i)`` is the exterior angle at ``t`` of the hyperbolic triangle (origin, ``t``,
``i``): zero when the image lies inside the text's cone, growing with how far outside it is. MERU weights the batch
mean by 0.2. The formulas and their clamps (``eps = 1e-8``) are MERU's, written out here because no library has
them.

Poincaré-ball points are mapped to the hyperboloid by the isometry ``x = 2p / (1 − c‖p‖²)`` first, so both
hyperbolic spaces use the same cones (angles and distances to the origin are kept by an isometry). Euclidean
embeddings have no cone: :func:`check_entailment_space` refuses them.
"""

from __future__ import annotations

import torch

from lit_hyperet.alignment import spaces as sp
from lit_hyperet.geometry import at_least_fp32, lorentz_time

Tensor = torch.Tensor
#: MERU's ``min_radius`` (the cone's aperture constant ``K``) and the weight of its entailment term.
MERU_APERTURE = 0.1
MERU_WEIGHT = 0.2
EPS = 1e-8
#: Spaces whose points are hyperbolic (the ball for the Poincaré spaces, the hyperboloid for ``lorentz``).
ENTAILMENT_SPACES: tuple[str, ...] = ("poincare_cosine", "poincare_distance", "lorentz")


def check_entailment_space(space: str) -> None:
    """``ValueError`` for a space without hyperbolic points (``euclidean``)."""
    if space not in ENTAILMENT_SPACES:
        raise ValueError(
            f"the entailment loss needs hyperbolic points (space {', '.join(ENTAILMENT_SPACES)}); {space!r} has "
            "unit vectors without cones"
        )


@at_least_fp32
def ball_to_hyperboloid(p: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Space components ``2p / (1 − c‖p‖²)`` of the hyperboloid point isometric to the Poincaré-ball point ``p``."""
    c = torch.as_tensor(c, dtype=p.dtype, device=p.device)
    return 2 * p / (1 - c * (p * p).sum(-1, keepdim=True)).clamp_min(torch.finfo(p.dtype).tiny)


@at_least_fp32
def half_aperture(x: Tensor, c: float | Tensor = 1.0, aperture: float = MERU_APERTURE) -> Tensor:
    """Half aperture ``asin(2K / (√c‖x‖))`` of the cones at hyperboloid points ``x`` (MERU, last dim reduced)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    asin_input = 2 * aperture / (x.norm(dim=-1) * c.sqrt() + EPS)
    return torch.asin(asin_input.clamp(-1 + EPS, 1 - EPS))


@at_least_fp32
def exterior_angle(x: Tensor, y: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Exterior angle at ``x`` of the triangle (origin, ``x``, ``y``) of hyperboloid points (MERU's ``oxy_angle``,
    pairs along the leading dims, last dim reduced)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    x_time, y_time = lorentz_time(x, c), lorentz_time(y, c)
    c_xyl = c * ((x * y).sum(-1) - x_time * y_time)
    numerator = y_time + c_xyl * x_time
    denominator = torch.sqrt(torch.clamp(c_xyl**2 - 1, min=EPS))
    acos_input = numerator / (x.norm(dim=-1) * denominator + EPS)
    return torch.acos(acos_input.clamp(-1 + EPS, 1 - EPS))


def hyperboloid_points(space: str, points: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Points of a hyperbolic space (:func:`.spaces.to_space`) as hyperboloid space components."""
    check_entailment_space(space)
    return points if space == "lorentz" else ball_to_hyperboloid(points, c)


def entailment_loss(
    space: sp.Space, text: Tensor, image: Tensor, c: float | Tensor = 1.0, aperture: float = MERU_APERTURE
) -> Tensor:
    """Mean over pairs of ``max(0, angle(text, image) − half_aperture(text))``: ``text`` and ``image`` are matching
    points of ``space`` (:func:`.spaces.to_space`), ``[..., D]`` each, pair by pair."""
    t, i = hyperboloid_points(space, text, c), hyperboloid_points(space, image, c)
    return torch.clamp(exterior_angle(t, i, c) - half_aperture(t, c, aperture), min=0).mean()
