"""Hyperbolic radius analysis of visual tokens and of image–text embeddings (``python -m lit_hyperet radius``).

For a visual token ``f`` mapped into the Poincaré ball (curvature ``-c``) as ``x = exp0(f)``, three quantities are
reported (see :mod:`lit_hyperet.radius.tokens`):

* ``rad = Rad(exp0(f)) = (2/√c)·artanh(√c‖exp0(f)‖)`` — the hyperbolic radius; it equals ``2‖f‖`` exactly;
* ``ball_norm = ‖exp0(f)‖ = tanh(√c‖f‖)/√c`` — what the released HyperET scripts print (saturates at ``1/√c``);
* ``norm_radius = √c·‖exp0(f)‖ = tanh(√c‖f‖)`` — the 0–1 normalised radius (``ball_norm`` over the ball radius).

Modules, in the order a run flows through them: ``command`` (argument parsing, orchestration) → ``runs`` (run specs,
model and data built through the CLI, per-image records collected from the dataloader) using ``tokens`` (which
visual tokens, and the quantities above) → ``analysis`` (statistics, groups such as the grade band, summary, tables,
accuracy per radius bin) → ``outputs`` (CSV, markdown, JSON, MLflow) and ``plots`` (PNGs).

For an image–text alignment model the command takes another path: ``alignment`` (image and caption embeddings'
radius in the model's own space, retrieval hits, caption specificity) → ``alignment_outputs`` (per image, per caption
and per specificity level tables, reliability bins, the radius-sorted image grid), reusing ``analysis``, ``outputs``
and ``plots``.
"""

from __future__ import annotations

from lit_hyperet.radius.tokens import FORMULAS, NORMALISATION, QUANTITIES, token_quantities

__all__ = ["FORMULAS", "NORMALISATION", "QUANTITIES", "main", "token_quantities"]


def main(argv: list[str] | None = None) -> int:
    """``python -m lit_hyperet radius …`` (see ``--help``)."""
    from lit_hyperet.radius.command import main as _main

    return _main(argv)
