"""Per-token radius quantities of visual features mapped into the Poincaré ball (curvature ``-c``).

For a token feature ``f`` (a Euclidean vector, treated as a tangent vector at the origin) and ``x = exp0(f)``:

* ``rad`` — the hyperbolic radius ``Rad(exp0(f)) = (2/√c)·artanh(√c‖exp0(f)‖)``, computed through
  ``geometry.radius(geometry.exp0(f, c), c)`` in float64. It equals ``2‖f‖`` exactly, for every ``c``.
* ``ball_norm`` — the Euclidean norm of the ball point ``‖exp0(f)‖ = tanh(√c‖f‖)/√c``: what the released HyperET
  visualisation scripts report per token (with ``c = 0.01``); it saturates at ``1/√c``.
* ``norm_radius`` — the 0–1 normalised radius ``√c·‖exp0(f)‖ = tanh(√c‖f‖)``: ``ball_norm`` divided by the ball's
  radius ``1/√c``.

geoopt clamps ``artanh`` near 1, so the ``rad`` chain saturates once ``√c‖f‖`` exceeds about 8.4 in float64
(``‖f‖ ≳ 84`` at ``c = 0.01``; in float32 already from ``‖f‖ ≈ 50``). Tokens where the chain departs from ``2‖f‖``
by more than :data:`SATURATION_RTOL` get the closed form ``2‖f‖`` instead, and are counted (``saturated``).
"""

from __future__ import annotations

import math

import torch

from lit_hyperet import geometry

QUANTITIES: tuple[str, ...] = ("rad", "ball_norm", "norm_radius")
#: Formula of each reported quantity (written into JSON summaries, CSV headers' documentation and CLI help).
FORMULAS: dict[str, str] = {
    "rad": "Rad(exp0(f)) = (2/sqrt(c)) * artanh(sqrt(c) * ||exp0(f)||) = 2 * ||f|| (hyperbolic radius, any c)",
    "ball_norm": "||exp0(f)|| = tanh(sqrt(c) * ||f||) / sqrt(c) (Euclidean norm of the ball point; released scripts; "
    "saturates at 1/sqrt(c))",
    "norm_radius": "sqrt(c) * ||exp0(f)|| = tanh(sqrt(c) * ||f||) in [0, 1) (ball_norm divided by the ball radius "
    "1/sqrt(c))",
}
NORMALISATION = (
    "norm_radius = sqrt(c) * ||exp0(f)|| = tanh(sqrt(c) * ||f||): the Euclidean norm of the ball point divided by the "
    "ball's radius 1/sqrt(c), so 0 is the origin and 1 the boundary"
)
SATURATION_RTOL = 1e-6


def token_quantities(features: torch.Tensor, c: float = 0.01) -> tuple[dict[str, torch.Tensor], int]:
    """``rad``, ``ball_norm`` and ``norm_radius`` of each feature vector (last dim reduced), in float64.

    Returns the quantities (each of shape ``features.shape[:-1]``) and the number of tokens whose ``rad`` chain
    saturated and was replaced by the closed form ``2‖f‖`` (see the module docstring).
    """
    if not c > 0:
        raise ValueError(f"curvature c must be > 0, got {c}")
    f = features.detach().to(torch.float64)
    ball = geometry.exp0(f, c)
    chain = geometry.radius(ball, c)
    closed = 2 * f.norm(dim=-1)
    saturated = (chain - closed).abs() > SATURATION_RTOL * closed.clamp_min(1e-12)
    rad = torch.where(saturated, closed, chain)
    ball_norm = ball.norm(dim=-1)
    quantities = {"rad": rad, "ball_norm": ball_norm, "norm_radius": math.sqrt(c) * ball_norm}
    return quantities, int(saturated.sum())
