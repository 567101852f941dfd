"""Hyperbolic maps: the Poincaré ball (HyperET, hyperbolic image–text alignment) and the Lorentz model (MERU's
image–text alignment), on top of geoopt's functional stereographic math.

The spaces have curvature ``-c`` (``c > 0``); every map acts on the last dimension (row-wise for a weight matrix in
PyTorch's ``(out, in)`` layout). All maps compute in at least float32 with autocast disabled (float64 stays float64)
and return the input's dtype: hyperbolic maps in bf16/fp16 leave the ball.

Three families live here:

* thin wrappers over geoopt (:func:`exp0`, :func:`log0`, :func:`mobius_matvec`, :func:`project`, :func:`radius`),
  used wherever geoopt's own epsilons are acceptable, which run geoopt's TorchScript functions unoptimised so that
  every call gives the same values and gradients (:func:`plain_torchscript`), and the all-pairs Poincaré distance
  (:func:`poincare_pairwise_distance`, closed form, checked against geoopt's ``dist``);
* :func:`released_hyperbolic_chain`, the one function that writes out the clamped chain of the released HyperET code
  (``log0(M ⊗_c exp0(w))`` with its specific clamps), because geoopt's epsilons differ from the released ones;
* the Lorentz model as MERU stores it (space components only, the time component computed):
  :func:`lorentz_exp0`, :func:`lorentz_time`, :func:`lorentz_pairwise_distance`, :func:`lorentz_radius`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from geoopt.manifolds.stereographic import math as pmath

# Clamps of the released HyperET code: tanh input ±15, artanh input ±(1-1e-5), norms floored at 1e-5, results kept
# inside radius (1-1e-3)/√c. geoopt uses ±(1-1e-7), 1e-15 and 4e-3 (fp32) instead.
TANH_CLAMP = 15.0
ARTANH_EPS = 1e-5
NORM_FLOOR = 1e-5
PROJECT_EPS = 1e-3

Tensor = torch.Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (never half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def at_least_fp32(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``fn`` with tensors upcast to >= float32 and autocast off; return the first input's dtype."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.is_floating_point()]
        out_dtype = tensors[0].dtype
        dtype = compute_dtype(*tensors)
        cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
        kw = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
        device_type = tensors[0].device.type
        no_autocast = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            result = fn(*cast, **kw)
        return result.to(out_dtype)

    return wrapper


def plain_torchscript(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``fn`` (a call into geoopt's TorchScript functions) with the JIT's optimising executor off.

    The profiling executor runs a scripted function as written on its first call and from then on an optimised graph
    whose gradients (TorchScript's own derivative formulas) round differently: the same inputs would get different
    gradients at a process's first step, so a resumed fit would drift from the uninterrupted one. Off, every call is
    the plain interpreter with autograd's derivatives.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        with torch.jit.optimized_execution(False):
            return fn(*args, **kwargs)

    return wrapper


def _k(c: float | Tensor, like: Tensor) -> Tensor:
    """geoopt's sectional curvature ``k = -c`` as a tensor on ``like``'s device and dtype."""
    c = c if isinstance(c, Tensor) else torch.tensor(float(c), dtype=torch.float64)
    return -c.to(device=like.device, dtype=like.dtype).reshape(())


@at_least_fp32
@plain_torchscript
def exp0(v: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Exponential map at the origin: ``tanh(√c‖v‖) v / (√c‖v‖)``."""
    return pmath.expmap0(v, k=_k(c, v))


@at_least_fp32
@plain_torchscript
def log0(y: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Logarithmic map at the origin: ``artanh(√c‖y‖) y / (√c‖y‖)``."""
    return pmath.logmap0(y, k=_k(c, y))


@at_least_fp32
@plain_torchscript
def mobius_matvec(m: Tensor, x: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Möbius matrix-vector product ``M ⊗_c x`` of a dense ``(n, n)`` matrix with the rows of ``x`` (Ganea et al.)."""
    return pmath.mobius_matvec(m, x, k=_k(c, x))


@at_least_fp32
@plain_torchscript
def project(x: Tensor, c: float | Tensor = 0.01, eps: float = PROJECT_EPS) -> Tensor:
    """Rescale rows whose norm exceeds ``(1 - eps)/√c`` back inside the ball."""
    return pmath.project(x, k=_k(c, x), eps=eps)


@at_least_fp32
@plain_torchscript
def radius(x: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Hyperbolic radius (distance to the origin) of ball points: ``(2/√c) artanh(√c‖x‖)``; reduces the last dim."""
    return pmath.dist0(x, k=_k(c, x))


def _sqrt_c(c: float | Tensor, like: Tensor) -> Tensor:
    c = c if isinstance(c, Tensor) else torch.tensor(float(c), dtype=torch.float64)
    return c.to(device=like.device, dtype=like.dtype).reshape(()).sqrt()


def row_norm(x: Tensor, floor: float = 0.0) -> Tensor:
    """``x.norm(dim=-1, keepdim=True).clamp_min(floor)``: same values, and the same gradient where ``‖x‖ > floor``.

    PyTorch's CPU norm kernel is 10-40× slower when the last dim is not the contiguous one (the transposed view that
    ``block_diagonal`` returns); there the norm is computed as a square root of a sum of squares instead.
    """
    if x.dim() < 2 or x.stride(-1) == 1:
        norm = x.norm(dim=-1, keepdim=True)
        return norm.clamp_min(floor) if floor > 0 else norm
    return (x * x).sum(dim=-1, keepdim=True).clamp_min(floor * floor).sqrt()


def _clamped_artanh(x: Tensor) -> Tensor:
    return torch.atanh(x.clamp(-1 + ARTANH_EPS, 1 - ARTANH_EPS))


@at_least_fp32
def released_hyperbolic_chain(w: Tensor, mw_of: Callable[[Tensor], Tensor], c: float | Tensor = 0.01) -> Tensor:
    """``log0(M ⊗_c exp0(w))`` row-wise, with exactly the clamps of the released HyperET code.

    ``mw_of(x)`` applies the (structured) matrix to the rows of ``x`` (``x @ Mᵀ``). Clamps: tanh input ±15, artanh
    input ±(1 - 1e-5), every norm floored at 1e-5, Möbius result projected inside radius ``(1 - 1e-3)/√c``; rows where
    ``M u`` is exactly zero give zero. Written by hand (not with geoopt) because geoopt's epsilons differ; tests check
    it against geoopt where no clamp fires.
    """
    s = _sqrt_c(c, w)
    # exp0
    w_norm = row_norm(w, NORM_FLOOR)
    u = torch.tanh((s * w_norm).clamp(-TANH_CLAMP, TANH_CLAMP)) * w / (s * w_norm)
    # M ⊗_c u
    mu = mw_of(u)
    u_norm = row_norm(u, NORM_FLOOR)
    mu_norm = row_norm(mu, NORM_FLOOR)
    z = mu_norm / u_norm * _clamped_artanh(s * u_norm)
    res = torch.tanh(z.clamp(-TANH_CLAMP, TANH_CLAMP)) * mu / (mu_norm * s)
    res = torch.where((mu == 0).all(dim=-1, keepdim=True), torch.zeros_like(res), res)
    max_norm = (1 - PROJECT_EPS) / s
    res_norm = row_norm(res, NORM_FLOOR)
    res = torch.where(res_norm > max_norm, res / res_norm * max_norm, res)
    # log0
    y_norm = row_norm(res, NORM_FLOOR)
    return res / y_norm / s * _clamped_artanh(s * y_norm)


def released_chain_clamp_mask(w: Tensor, mw: Tensor, c: float | Tensor = 0.01, margin: float = 0.0) -> Tensor:
    """Rows (bool, shape ``w.shape[:-1]``) where a clamp of :func:`released_hyperbolic_chain` fires (or, with
    ``margin > 0``, comes within that relative margin of firing).

    Without clamps the chain is exactly ``M·w`` (``M ⊗_c x = exp0(M log0 x)``), and its intermediate norms have
    closed forms in ``‖w‖`` and ``‖Mw‖``: ``√c‖u‖ = tanh(√c‖w‖)``, ``‖Mu‖ = ‖Mw‖·‖u‖/‖w‖`` and the Möbius tanh input is
    ``√c‖Mw‖``. A clamp fires iff one of them crosses its bound.
    """
    dtype = compute_dtype(w, mw)
    w, mw = w.detach().to(dtype), mw.detach().to(dtype)
    s = float(c.detach().reshape(-1)[0]) if isinstance(c, Tensor) else float(c)
    s = math.sqrt(s)
    lo, hi = 1 + margin, 1 - margin
    w_norm = row_norm(w).squeeze(-1)
    mw_norm = row_norm(mw).squeeze(-1)
    u_norm = torch.tanh(s * w_norm) / s
    mu_norm = mw_norm * u_norm / w_norm.clamp_min(torch.finfo(dtype).tiny)
    fires = w_norm < NORM_FLOOR * lo
    fires |= u_norm < NORM_FLOOR * lo
    fires |= s * w_norm > math.atanh(1 - ARTANH_EPS) * hi
    fires |= (mu_norm < NORM_FLOOR * lo) & (mw_norm > 0)
    fires |= s * mw_norm > math.atanh(1 - PROJECT_EPS) * hi
    y_norm = torch.tanh(s * mw_norm) / s
    fires |= (y_norm < NORM_FLOOR * lo) & (mw_norm > 0)
    return fires


# ---------------------------------------------------------------------------------------------------- distances

#: geoopt's margin inside the ball for its projection (``PoincareBall.expmap0(..., project=True)``): points are kept at
#: ``√c‖x‖ ≤ 1 − margin``; in float32 the radius therefore saturates at ``2·artanh(1 − 4e-3)/√c ≈ 6.21/√c``.
GEOOPT_BALL_MARGIN = {torch.float32: 4e-3, torch.float64: 1e-5}
#: MERU's sinh input clamp of the Lorentz exponential map: ``√c‖v‖`` in ``[1e-8, asinh(2^15)]``.
LORENTZ_SINH_MIN = 1e-8
LORENTZ_SINH_MAX = math.asinh(2.0**15)


def ball_margin(dtype: torch.dtype) -> float:
    """geoopt's projection margin for ``dtype`` (float32's for half precision, which these maps never compute in)."""
    return GEOOPT_BALL_MARGIN.get(dtype, GEOOPT_BALL_MARGIN[torch.float32])


def acosh_floor(dtype: torch.dtype) -> float:
    """The lower clamp of ``acosh``'s argument: ``1 + max(1e-8, machine epsilon)``.

    MERU clamps at ``1 + 1e-8``, which float32 rounds to exactly 1, where ``acosh``'s derivative is infinite (identical
    points then give NaN gradients); the next float above 1 keeps it finite. float64 keeps MERU's ``1 + 1e-8``.
    """
    return 1.0 + max(1e-8, torch.finfo(dtype).eps)


def _c(c: float | Tensor, like: Tensor) -> Tensor:
    c = c if isinstance(c, Tensor) else torch.tensor(float(c), dtype=torch.float64)
    return c.to(device=like.device, dtype=like.dtype).reshape(())


@at_least_fp32
def poincare_pairwise_distance(x: Tensor, y: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Poincaré distance between every row of ``x`` (``[..., N, D]``) and every row of ``y`` (``[M, D]``):
    ``[..., N, M]`` of ``(1/√c) acosh(1 + 2c‖x − y‖² / ((1 − c‖x‖²)(1 − c‖y‖²)))``.

    The closed form equals geoopt's ``dist`` (``2/√c · artanh(√c‖(−x) ⊕_c y‖)``) but needs one matrix product instead
    of an ``N × M × D`` Möbius sum. ``acosh``'s argument is clamped at :func:`acosh_floor`.
    """
    c = _c(c, x)
    x2 = (x * x).sum(-1)
    y2 = (y * y).sum(-1)
    sq = (x2[..., :, None] + y2 - 2 * x @ y.transpose(-1, -2)).clamp_min(0)
    denom = ((1 - c * x2)[..., :, None] * (1 - c * y2)).clamp_min(torch.finfo(x.dtype).tiny)
    arg = (1 + 2 * c * sq / denom).clamp_min(acosh_floor(x.dtype))
    return torch.acosh(arg) / c.sqrt()


@at_least_fp32
def lorentz_exp0(v: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """MERU's exponential map at the hyperboloid's origin, returning the space components
    ``sinh(√c‖v‖) v / (√c‖v‖)`` (``sinh``'s input clamped to ``[1e-8, asinh(2^15)]``; the time component is
    :func:`lorentz_time`)."""
    rc_norm = _c(c, v).sqrt() * v.norm(dim=-1, keepdim=True)
    sinh_input = rc_norm.clamp(LORENTZ_SINH_MIN, LORENTZ_SINH_MAX)
    return torch.sinh(sinh_input) * v / rc_norm.clamp_min(LORENTZ_SINH_MIN)


@at_least_fp32
def lorentz_time(x: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """The time component ``√(1/c + ‖x‖²)`` of hyperboloid points stored by their space components ``x``; reduces
    the last dim."""
    return (1 / _c(c, x) + (x * x).sum(-1)).sqrt()


@at_least_fp32
def lorentz_pairwise_distance(x: Tensor, y: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Geodesic distance on the hyperboloid between every row of ``x`` (``[..., N, D]``) and every row of ``y``
    (``[M, D]``), both space components: ``[..., N, M]`` of ``acosh(−c⟨x, y⟩_L) / √c`` with
    ``⟨x, y⟩_L = x·y − x_t y_t`` (MERU's ``pairwise_dist``; ``acosh``'s argument clamped at :func:`acosh_floor`)."""
    c = _c(c, x)
    inner = x @ y.transpose(-1, -2) - lorentz_time(x, c)[..., :, None] * lorentz_time(y, c)
    return torch.acosh((-c * inner).clamp_min(acosh_floor(x.dtype))) / c.sqrt()


@at_least_fp32
def lorentz_radius(x: Tensor, c: float | Tensor = 1.0) -> Tensor:
    """Distance of hyperboloid points (space components) to the origin ``(0, 1/√c)``: ``acosh(√c x_t)/√c``, computed
    as the equal ``asinh(√c‖x‖)/√c`` (exact near the origin); reduces the last dim. ``lorentz_radius(lorentz_exp0(v))
    = ‖v‖`` where no clamp fires."""
    s = _c(c, x).sqrt()
    return torch.asinh(s * x.norm(dim=-1)) / s
