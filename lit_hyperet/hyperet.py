"""HyperET: structured matrices reparametrising frozen vision-encoder weights in the Poincaré ball.

For every adapted ``nn.Linear`` with frozen weight ``W0`` (rows ``w``), the weight used in the forward pass is

* ``hyperbolic``:           ``log0(M ⊗_c exp0(W0))`` with the released code's clamps (paper Eq. 9);
* ``hyperbolic_no_mobius``: ``log0(proj(exp0(W0) · Mᵀ))`` (plain product inside the ball, the paper's "⊗_c ✗" row);
* ``euclidean``:            ``W0 · Mᵀ`` (the same parameters without geometry).

Because ``M ⊗_c x = exp0(M · log0(x))``, the ``hyperbolic`` weight equals ``W0 · Mᵀ`` exactly whenever no clamp fires
(at c = 0.01 that needs ``‖M w‖ ≳ 38``; real CLIP rows have norm ≈ 1). The implementation uses that identity as an
exact fast path for the rows that are safely away from every clamp and runs the clamped chain on the others;
:func:`hyperet_report` says, per adapted weight, how far the result is from ``W0 · Mᵀ`` and on how many rows a clamp
fired.

Fused q/k/v projections (one Linear with weight ``(3n, n)``, rows ``[q; k; v]``: SAM's and BLIP-2's ``qkv``, an
``in_proj``) are adapted slice by slice: one parametrization (:class:`FusedHyperETWeight`) on the Linear's ``weight``
holds a :class:`HyperETWeight` with its own n×n ``M`` for each block named in ``HyperETConfig.fused_slices`` (q and v
by default) and passes the other blocks through unchanged, so each adapted block is exactly what a separate q or v
projection with the same ``W0`` and ``M`` gives, and the model code stays the library's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from lit_hyperet.geometry import (
    PROJECT_EPS,
    at_least_fp32,
    compute_dtype,
    exp0,
    log0,
    project,
    released_chain_clamp_mask,
    released_hyperbolic_chain,
    row_norm,
)
from lit_hyperet.hyperet_config import (  # the configuration, re-exported here where users import it from
    DEFAULT_BLOCK_SIZE as DEFAULT_BLOCK_SIZE,
    DEFAULT_FUSED_SLICES as DEFAULT_FUSED_SLICES,
    DEFAULT_TARGETS as DEFAULT_TARGETS,
    FUSED_NAME_PATTERN as FUSED_NAME_PATTERN,
    FUSED_SLICE_NAMES as FUSED_SLICE_NAMES,
    SPACES as SPACES,
    VARIANTS as VARIANTS,
    HyperETConfig as HyperETConfig,
    Space as Space,
    Variant as Variant,
    is_fused_name as is_fused_name,
)
from lit_hyperet.user_errors import ConfigError

# Rows within this relative margin of a clamp take the clamped chain, so rounding cannot flip the fast path's choice.
FAST_PATH_MARGIN = 1e-3


def hyperbolic_weight(
    w0: torch.Tensor, apply_m: Callable[[torch.Tensor], torch.Tensor], c: float | torch.Tensor, fast_path: bool = True
) -> torch.Tensor:
    """``log0(M ⊗_c exp0(W0))`` with the released clamps; with ``fast_path`` the clamp-free rows use ``M·w``."""
    if not fast_path:
        return released_hyperbolic_chain(w0, apply_m, c)

    @at_least_fp32
    def _mixed(w: torch.Tensor) -> torch.Tensor:
        mw = apply_m(w)
        slow = released_chain_clamp_mask(w, mw, c, margin=FAST_PATH_MARGIN)
        if not bool(slow.any()):
            return mw
        rows = slow.nonzero().squeeze(1)
        return mw.index_copy(0, rows, released_hyperbolic_chain(w.index_select(0, rows), apply_m, c))

    return _mixed(w0)


# Norm floor of the radial no-Möbius computation (geoopt's own): rows of norm below it are zero to every digit here.
_NO_MOBIUS_NORM_FLOOR = 1e-15


@at_least_fp32
def _no_mobius_weight(w0: torch.Tensor, apply_m: Callable[[torch.Tensor], torch.Tensor], c) -> torch.Tensor:
    """``log0(proj(exp0(W0) · Mᵀ))``, computed radially.

    ``exp0``, ``proj`` and ``log0`` at the origin only rescale each row, so ``M·exp0(w) = (‖exp0(w)‖/‖w‖)·M·w`` and
    the result is ``Mw`` rescaled to norm ``log0(proj(‖M·exp0(w)‖))``. The maps (geoopt's, with geoopt's epsilons) are
    applied to the 1-D points ``‖·‖`` instead of whole rows: the same values (tests check them against the row-wise
    chain) without the many n²-sized intermediate tensors whose backward cost more than ten times ``W0·Mᵀ``.
    """
    mw = apply_m(w0)
    w_norm = row_norm(w0, _NO_MOBIUS_NORM_FLOOR)
    mw_norm = row_norm(mw, _NO_MOBIUS_NORM_FLOOR)
    ball_norm = exp0(w_norm, c) / w_norm * mw_norm  # ‖M·exp0(w)‖
    return log0(project(ball_norm, c, eps=PROJECT_EPS), c) / mw_norm * mw


@at_least_fp32
def _euclidean_weight(w0: torch.Tensor, apply_m: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return apply_m(w0)


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class HyperETWeight(nn.Module):
    """Parametrization on an adapted Linear's ``weight``: maps the frozen ``W0`` to the adapted weight (also the
    adapter of one slice of a fused projection, inside :class:`FusedHyperETWeight`)."""

    def __init__(self, in_features: int, config: HyperETConfig) -> None:
        super().__init__()
        self.space: str = config.space
        self.fast_path = config.fast_path
        self.matrix = config.build_matrix(in_features)
        self._fixed_curvature = float(config.curvature)
        if config.learn_curvature:
            # 1-D (FSDP refuses 0-d parameters) and positive through softplus.
            self.curvature_raw = nn.Parameter(torch.full((1,), _softplus_inverse(config.curvature)))
        else:
            self.curvature_raw = None

    def curvature(self) -> float | torch.Tensor:
        """c (a 1-element tensor when learnable, else a float)."""
        if self.curvature_raw is None:
            return self._fixed_curvature
        return nn.functional.softplus(self.curvature_raw.float())

    def euclidean(self, w0: torch.Tensor) -> torch.Tensor:
        """``W0 · Mᵀ`` (what every space reduces to when no clamp fires)."""
        return _euclidean_weight(w0, self.matrix)

    def forward(self, w0: torch.Tensor) -> torch.Tensor:
        """The adapted weight, computed in >= float32 and returned in ``w0``'s dtype."""
        c = self.curvature()
        if self.space == "hyperbolic":
            return hyperbolic_weight(w0, self.matrix, c, self.fast_path)
        if self.space == "hyperbolic_no_mobius":
            return _no_mobius_weight(w0, self.matrix, c)
        return self.euclidean(w0)

    @torch.no_grad()
    def clamp_fraction(self, w0: torch.Tensor) -> float:
        """Fraction of rows of ``W0`` on which a clamp of this space fires."""
        c = self.curvature()
        w = w0.to(compute_dtype(w0))
        if self.space == "hyperbolic":
            fired = released_chain_clamp_mask(w, self.matrix(w), c)
        elif self.space == "hyperbolic_no_mobius":
            cf = float(c.reshape(-1)[0]) if isinstance(c, torch.Tensor) else c
            ball = self.matrix(exp0(w, c))
            fired = ball.norm(dim=-1) > (1 - PROJECT_EPS) / math.sqrt(cf)
        else:
            return 0.0
        return float(fired.float().mean())

    def extra_repr(self) -> str:
        learn = " (learnable)" if self.curvature_raw is not None else ""
        return f"space={self.space}, c={float(torch.as_tensor(self.curvature()).reshape(-1)[0]):g}{learn}"


class FusedHyperETWeight(nn.Module):
    """Parametrization on a fused q/k/v Linear's ``weight`` (``(3n, n)``, rows ``[q; k; v]``).

    ``slices`` holds one :class:`HyperETWeight` (its own n×n ``M``, and c when learnable) per adapted block, keyed
    ``q`` / ``k`` / ``v``; the forward adapts those blocks exactly as a separate projection's weight and passes the
    other blocks through as they are (the same tensor values, bit for bit). The Linear's bias is not touched.
    """

    def __init__(self, in_features: int, config: HyperETConfig) -> None:
        super().__init__()
        self.n = in_features
        self.slices = nn.ModuleDict({name: HyperETWeight(in_features, config) for name in config.fused_slices})

    def blocks(self, w0: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"q": W0_q, "k": W0_k, "v": W0_v}``: the row blocks of ``w0`` (views)."""
        return dict(zip(FUSED_SLICE_NAMES, w0.split(self.n, dim=0), strict=True))

    def adapted_blocks(self, w0: torch.Tensor) -> Iterator[tuple[str, torch.Tensor, HyperETWeight]]:
        """``(slice name, W0 block, its adapter)`` for every adapted block, in weight order."""
        for name, block in self.blocks(w0).items():
            if name in self.slices:
                yield name, block, self.slices[name]

    def forward(self, w0: torch.Tensor) -> torch.Tensor:
        """``[W_q; W_k; W_v]`` with the selected blocks adapted, in ``w0``'s dtype."""
        return torch.cat(
            [self.slices[name](block) if name in self.slices else block for name, block in self.blocks(w0).items()]
        )

    def extra_repr(self) -> str:
        return f"n={self.n}, slices={list(self.slices)}"


#: What :func:`apply_hyperet` registers on a Linear's ``weight``.
HyperETParametrization = HyperETWeight | FusedHyperETWeight


def _hyperet_of(module: nn.Module) -> HyperETParametrization | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, HyperETWeight | FusedHyperETWeight)), None)


def adapted_modules(model: nn.Module) -> Iterator[tuple[str, nn.Linear, HyperETParametrization]]:
    """``(qualified name, Linear, parametrization)`` for every HyperET-adapted Linear in ``model``: a
    :class:`HyperETWeight` on a separate projection, a :class:`FusedHyperETWeight` on a fused q/k/v one."""
    for name, module in model.named_modules():
        hw = _hyperet_of(module)
        if hw is not None:
            yield name, module, hw


def adapted_width(model: nn.Module) -> int | None:
    """n of the adapted n×n matrices M (the largest when they differ; ``None`` when nothing is adapted)."""
    sizes = {m.matrix.n for m in model.modules() if isinstance(m, HyperETWeight)}
    return max(sizes) if sizes else None


def adapted_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the HyperET-adapted Linears in ``model`` (reads no parameter values)."""
    return [name for name, _, _ in adapted_modules(model)]


def adapted_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, HyperETWeight]]:
    """``(name, frozen W0, adapter)`` for every adapted weight: a separate projection's whole ``W0`` under its module
    name, each adapted block of a fused projection under ``module[q]`` / ``[k]`` / ``[v]``."""
    for name, module, hw in adapted_modules(model):
        w0 = module.parametrizations.weight.original
        if isinstance(hw, FusedHyperETWeight):
            for slice_name, block, slice_hw in hw.adapted_blocks(w0):
                yield f"{name}[{slice_name}]", block, slice_hw
        else:
            yield name, w0, hw


def apply_hyperet(model: nn.Module, config: HyperETConfig) -> list[str]:
    """Register HyperET on ``weight`` of every ``nn.Linear`` whose qualified name matches ``config.targets``.

    A matched Linear whose name ends in ``qkv`` or ``in_proj`` is a fused q/k/v projection: its weight must be
    ``(3n, n)`` (anything else is a ``ConfigError``), and it gets one :class:`FusedHyperETWeight` adapting the blocks
    named in ``config.fused_slices``; every other match gets a :class:`HyperETWeight`. W0
    (``module.parametrizations.weight.original``) is frozen, ``M`` (and c when learnable) are trainable; no other
    parameter's ``requires_grad`` changes. Returns the adapted Linears' names; raises ``ConfigError`` when nothing
    matches.
    """
    pattern = re.compile(config.targets)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    matches = [(n, m) for n, m in linears if pattern.search(n)]
    if not matches:
        shown = ", ".join(n for n, _ in linears[:40]) + (" …" if len(linears) > 40 else "")
        raise ConfigError(
            f"HyperET targets {config.targets!r} match no nn.Linear; candidates ({len(linears)}): {shown}"
        )
    for name, module in matches:  # checked before any Linear changes
        if _hyperet_of(module) is not None:
            raise ValueError(f"{name} already carries a HyperET parametrization")
        if is_fused_name(name) and module.out_features != 3 * module.in_features:
            raise ConfigError(
                f"{name} is named as a fused q/k/v projection but its weight is {module.out_features}×"
                f"{module.in_features}, not {3 * module.in_features}×{module.in_features} (rows [q; k; v]); "
                "leave it out of hyperet.targets"
            )
    for name, module in matches:
        parametrization = FusedHyperETWeight if is_fused_name(name) else HyperETWeight
        hw = parametrization(module.in_features, config).to(device=module.weight.device)
        parametrize.register_parametrization(module, "weight", hw)
        module.parametrizations.weight.original.requires_grad_(False)
    return [n for n, _ in matches]


def merge_hyperet(model: nn.Module) -> list[str]:
    """Bake every adapted weight (separate or fused) into a plain (frozen) ``weight`` parameter and remove the
    parametrizations."""
    merged = []
    with torch.no_grad():
        for name, module, _ in list(adapted_modules(model)):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            if not module.weight.is_contiguous():  # e.g. block_diagonal returns a transposed view; safetensors wants
                module.weight.data = module.weight.data.contiguous()  # contiguous tensors
            module.weight.requires_grad_(False)
            merged.append(name)
    return merged


def hyperet_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable HyperET parameters (``M`` entries and learnable curvatures) with their qualified names; those of
    a fused projection name their slice (``….qkv.parametrizations.weight.0.slices.q.matrix.diag``)."""
    out = []
    for name, module, hw in adapted_modules(model):
        prefix = f"{name}.parametrizations.weight.{list(module.parametrizations.weight).index(hw)}."
        out += [(prefix + n, p) for n, p in hw.named_parameters()]
    return out


@torch.no_grad()
def hyperet_report(model: nn.Module) -> dict[str, dict[str, float | int]]:
    """Per adapted weight (a separate projection by its module name, each adapted block of a fused one as
    ``module[q]`` / ``[k]`` / ``[v]``): ``params`` (trainable HyperET entries), ``identity_deviation``
    ``‖W − W0·Mᵀ‖/‖W0·Mᵀ‖`` and ``clamp_fraction`` (rows on which a clamp fired)."""
    report: dict[str, dict[str, float | int]] = {}
    for name, w0, hw in adapted_weights(model):
        w = hw(w0).to(compute_dtype(w0))
        ref = hw.euclidean(w0).to(w.dtype)
        report[name] = {
            "params": sum(p.numel() for p in hw.parameters()),
            "identity_deviation": float((w - ref).norm() / ref.norm().clamp_min(torch.finfo(ref.dtype).tiny)),
            "clamp_fraction": hw.clamp_fraction(w0),
        }
    return report


def summarize_report(report: dict[str, dict[str, float | int]]) -> dict[str, float | int]:
    """Totals over the report's entries (adapted weights; a fused projection counts once per adapted slice):
    their count, params, max identity deviation and mean clamp fraction."""
    if not report:
        return {"adapted_modules": 0, "params": 0, "identity_deviation_max": 0.0, "clamp_fraction_mean": 0.0}
    values = list(report.values())
    return {
        "adapted_modules": len(values),
        "params": int(sum(v["params"] for v in values)),
        "identity_deviation_max": max(float(v["identity_deviation"]) for v in values),
        "clamp_fraction_mean": sum(float(v["clamp_fraction"]) for v in values) / len(values),
    }
