"""Poincaré-ball maps against their closed forms, geoopt, and dtype rules."""

from __future__ import annotations

import math

import pytest
import torch

from lit_hyperet import geometry as g

C = 0.01


@pytest.fixture
def rows() -> torch.Tensor:
    torch.manual_seed(0)
    return (
        torch.randn(16, 24, dtype=torch.float64) / 24**0.5 * torch.linspace(0.1, 20.0, 16, dtype=torch.float64)[:, None]
    )


def test_exp0_log0_closed_forms(rows: torch.Tensor) -> None:
    s = math.sqrt(C)
    norm = rows.norm(dim=-1, keepdim=True)
    expected = torch.tanh(s * norm) * rows / (s * norm)
    assert torch.allclose(g.exp0(rows, C), expected, atol=1e-12, rtol=1e-10)
    y = g.exp0(rows, C)
    yn = y.norm(dim=-1, keepdim=True)
    assert torch.allclose(g.log0(y, C), torch.atanh(s * yn) * y / (s * yn), atol=1e-12, rtol=1e-10)
    assert torch.allclose(g.log0(y, C), rows, atol=1e-9, rtol=1e-9)


def test_mobius_matvec_closed_form(rows: torch.Tensor) -> None:
    torch.manual_seed(1)
    m = torch.eye(24, dtype=torch.float64) + 0.2 * torch.randn(24, 24, dtype=torch.float64)
    x = g.exp0(rows, C)
    s = math.sqrt(C)
    mx = x @ m.T
    xn, mxn = x.norm(dim=-1, keepdim=True), mx.norm(dim=-1, keepdim=True)
    expected = torch.tanh(mxn / xn * torch.atanh(s * xn)) * mx / (s * mxn)
    assert torch.allclose(g.mobius_matvec(m, x, C), g.project(expected, C, eps=1e-5), atol=1e-12, rtol=1e-10)
    # M ⊗_c x = exp0(M · log0 x)
    assert torch.allclose(g.mobius_matvec(m, x, C), g.exp0(g.log0(x, C) @ m.T, C), atol=1e-12, rtol=1e-10)


def test_radius_closed_form_and_rad_exp0_is_twice_norm(rows: torch.Tensor) -> None:
    y = g.exp0(rows, C)
    s = math.sqrt(C)
    assert torch.allclose(g.radius(y, C), 2 / s * torch.atanh(s * y.norm(dim=-1)), atol=0, rtol=1e-10)
    for c in (0.01, 0.5, 2.0):
        small = rows[:6]  # keep √c‖f‖ away from tanh saturation so float64 can resolve it
        assert torch.allclose(g.radius(g.exp0(small, c), c), 2 * small.norm(dim=-1), atol=1e-9, rtol=1e-9)


def test_released_chain_matches_geoopt_where_no_clamp_fires(rows: torch.Tensor) -> None:
    torch.manual_seed(2)
    m = torch.eye(24, dtype=torch.float64) + 0.1 * torch.randn(24, 24, dtype=torch.float64)
    w = rows[:8]  # norms ≤ ~10: no clamp at c = 0.01
    assert not g.released_chain_clamp_mask(w, w @ m.T, C).any()
    geoopt_chain = g.log0(g.mobius_matvec(m, g.exp0(w, C), C), C)
    assert torch.allclose(g.released_hyperbolic_chain(w, lambda x: x @ m.T, C), geoopt_chain, atol=1e-12, rtol=1e-10)


def test_released_chain_clamps_fire_on_large_rows() -> None:
    torch.manual_seed(3)
    w = torch.randn(4, 24, dtype=torch.float64) * 20  # ‖w‖ ≈ 100 > 38
    out = g.released_hyperbolic_chain(w, lambda x: x, C)
    assert g.released_chain_clamp_mask(w, w, C).all()
    # projection bounds √c‖y‖ ≤ 1 − 1e-3, so the recovered row norm is capped at artanh(0.999)/√c ≈ 38
    assert torch.allclose(out.norm(dim=-1), torch.full((4,), math.atanh(1 - 1e-3) / math.sqrt(C), dtype=w.dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_maps_compute_in_fp32_under_autocast_and_return_input_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    x = torch.randn(8, 16) * 3
    xh = x.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g.exp0(xh, C)
        chain = g.released_hyperbolic_chain(xh, lambda v: v * 1.5, C)
    assert out.dtype == dtype and chain.dtype == dtype
    ref = g.exp0(xh.float(), C)  # the same inputs in fp32: only the final rounding differs
    assert torch.equal(out, ref.to(dtype))
    assert torch.isfinite(chain.float()).all()


def test_float64_stays_float64() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    assert g.exp0(x).dtype == torch.float64
    assert g.released_hyperbolic_chain(x, lambda v: v).dtype == torch.float64
