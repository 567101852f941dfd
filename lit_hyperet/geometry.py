"""Poincaré-ball maps used by HyperET, on top of geoopt's functional stereographic math.

The ball has curvature ``-c`` (``c > 0``); every map acts on the last dimension (row-wise for a weight matrix in
PyTorch's ``(out, in)`` layout). All maps compute in at least float32 with autocast disabled (float64 stays float64)
and return the input's dtype: hyperbolic maps in bf16/fp16 leave the ball (see the project's pitfalls notes).

Two families live here:

* thin wrappers over geoopt (:func:`exp0`, :func:`log0`, :func:`mobius_matvec`, :func:`project`, :func:`radius`),
  used wherever geoopt's own epsilons are acceptable;
* :func:`released_hyperbolic_chain`, the one function that writes out the clamped chain of the released HyperET code
  (``log0(M ⊗_c exp0(w))`` with its specific clamps), because geoopt's epsilons differ from the released ones.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

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
    def wrapper(*args, **kwargs):
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


def _k(c: float | Tensor, like: Tensor) -> Tensor:
    """geoopt's sectional curvature ``k = -c`` as a tensor on ``like``'s device and dtype."""
    c = c if isinstance(c, Tensor) else torch.tensor(float(c), dtype=torch.float64)
    return -c.to(device=like.device, dtype=like.dtype).reshape(())


@at_least_fp32
def exp0(v: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Exponential map at the origin: ``tanh(√c‖v‖) v / (√c‖v‖)``."""
    return pmath.expmap0(v, k=_k(c, v))


@at_least_fp32
def log0(y: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Logarithmic map at the origin: ``artanh(√c‖y‖) y / (√c‖y‖)``."""
    return pmath.logmap0(y, k=_k(c, y))


@at_least_fp32
def mobius_matvec(m: Tensor, x: Tensor, c: float | Tensor = 0.01) -> Tensor:
    """Möbius matrix-vector product ``M ⊗_c x`` of a dense ``(n, n)`` matrix with the rows of ``x`` (Ganea et al.)."""
    return pmath.mobius_matvec(m, x, k=_k(c, x))


@at_least_fp32
def project(x: Tensor, c: float | Tensor = 0.01, eps: float = PROJECT_EPS) -> Tensor:
    """Rescale rows whose norm exceeds ``(1 - eps)/√c`` back inside the ball."""
    return pmath.project(x, k=_k(c, x), eps=eps)


@at_least_fp32
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
