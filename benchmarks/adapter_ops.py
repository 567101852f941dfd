"""Cost of producing one adapted weight ``W = log0(M ⊗_c exp0(W0))`` for an n×n ``W0`` with CLIP-like rows (‖w‖ ≈ 1).

Three ways, for each structure of ``M`` (diagonal; block-diagonal, block size 4; banded, d = 2; full):

* ``reference``: the released code's chain on geoopt's functional math. ``M`` is densified on every call exactly as
  the released code does (``torch.diag``, ``torch.block_diag`` of the blocks, a sparse COO tensor ``.to_dense()``
  for banded), then ``logmap0(mobius_matvec(M, expmap0(W0)))``.
* ``package``: ``HyperETWeight(n, HyperETConfig(variant=…))(W0)``, hyperbolic space, fast path on (structured apply,
  clamped chain only on rows near a clamp).
* ``no_fast``: the same with ``fast_path=False`` (the clamped chain on every row, structured apply).
* ``euclidean``: the same module in the ``euclidean`` space, i.e. the bare structured product ``W0·Mᵀ``: the floor
  the fast path can reach (``package_vs_euclidean_time_ratio`` is the fast path's own overhead).

Forward runs with autograd recording (as in a training step); forward+backward adds ``autograd.grad`` w.r.t. the
parameters of ``M``. Usage: ``python benchmarks/adapter_ops.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: re-enter as ``benchmarks.adapter_ops`` so children can unpickle
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.adapter_ops import main

    raise SystemExit(main())

import torch
from geoopt.manifolds.stereographic import math as pmath

from benchmarks._common import (
    MEMORY_METHOD,
    fmt,
    interleaved_times,
    machine,
    median_ms,
    mem_ratio,
    paired_ratio,
    peak_memory_mib,
    rounds_for,
    script_main,
    table,
    time_method,
)
from lit_hyperet.hyperet import HyperETConfig, HyperETWeight

NAME = "adapter_ops"
SIZES = (256, 1024, 4096)
TINY_SIZES = (16,)
VARIANTS: dict[str, dict[str, int]] = {
    "diagonal": {},
    "block_diagonal": {"block_size": 4},
    "banded": {"band_width": 2},
    "full": {},
}
SIDES = ("reference", "package", "no_fast", "euclidean")
MODES = ("forward", "forward_backward")
CURVATURE = 0.01
# --quick leaves n = 4096 out: there the reference chain's dense n³ product takes 3-6 s per call on 2 cores.
QUICK_SIZES = (256, 1024)
Op = Callable[[], Any]


@dataclass(frozen=True)
class Effort:
    """Repeats: warm-up rounds (geoopt's TorchScript'd maps specialise and recompile on their first calls of each
    shape), a time budget per (n, variant, mode) turned into a clamped round count, warm-up calls per memory child."""

    warmup: int
    budget_s: float
    min_rounds: int
    max_rounds: int
    memory_warmup: int


EFFORT = {
    "full": Effort(warmup=3, budget_s=4.0, min_rounds=3, max_rounds=60, memory_warmup=3),
    "quick": Effort(warmup=3, budget_s=0.6, min_rounds=3, max_rounds=15, memory_warmup=3),
    "tiny": Effort(warmup=1, budget_s=0.0, min_rounds=1, max_rounds=1, memory_warmup=1),  # tests: structure only
}


# ----------------------------------------------------------------------------- the three ways


def clip_like_weight(n: int, seed: int = 0) -> torch.Tensor:
    """A frozen n×n weight whose rows have norm ≈ 1 (like CLIP's q/v projections)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=gen) / n**0.5


def package_module(n: int, variant: str, fast_path: bool, space: str = "hyperbolic", seed: int = 1) -> HyperETWeight:
    """The package's parametrization with ``M`` perturbed from the identity (the same values for every side)."""
    config = HyperETConfig(variant=variant, space=space, fast_path=fast_path, **VARIANTS[variant])
    module = HyperETWeight(n, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return module


def banded_indices(n: int, d: int) -> torch.Tensor:
    """COO indices of a band of width ``d``, built with ``torch.sparse.spdiags`` as the released code does."""
    offsets = torch.cat([torch.arange(0, d + 1), torch.arange(-1, -d - 1, -1)])
    ones = torch.ones(2 * d + 1, n)
    return torch.sparse.spdiags(ones, offsets, (n, n)).coalesce().indices()


class ReferenceChain:
    """The released chain: densify ``M`` each call, then geoopt ``logmap0(mobius_matvec(M, expmap0(W0)))``."""

    def __init__(self, package: HyperETWeight, variant: str) -> None:
        dense = package.matrix.dense().detach()
        self.n, self.variant = dense.shape[0], variant
        self.k = torch.tensor(-CURVATURE)
        if variant == "diagonal":
            self.param = torch.nn.Parameter(dense.diagonal().clone())
        elif variant == "block_diagonal":
            self.param = torch.nn.Parameter(package.matrix.blocks.detach().clone())
        elif variant == "banded":
            self.indices = banded_indices(self.n, VARIANTS["banded"]["band_width"])
            self.param = torch.nn.Parameter(dense[self.indices[0], self.indices[1]].clone())
        else:
            self.param = torch.nn.Parameter(dense.clone())

    def parameters(self) -> list[torch.nn.Parameter]:
        """The learnable entries of ``M`` in the released layout."""
        return [self.param]

    def dense(self) -> torch.Tensor:
        """``M`` densified as the released code does on every forward."""
        if self.variant == "diagonal":
            return torch.diag(self.param)
        if self.variant == "block_diagonal":
            return torch.block_diag(*[self.param[i] for i in range(self.param.shape[0])])
        if self.variant == "banded":
            return torch.sparse_coo_tensor(self.indices, self.param, (self.n, self.n)).to_dense()
        return self.param

    def __call__(self, w0: torch.Tensor) -> torch.Tensor:
        u = pmath.expmap0(w0, k=self.k)
        return pmath.logmap0(pmath.mobius_matvec(self.dense(), u, k=self.k), k=self.k)


def make_adapter(side: str, n: int, variant: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], list]:
    """``(weight function, parameters of M)`` for one side."""
    space = "euclidean" if side == "euclidean" else "hyperbolic"
    package = package_module(n, variant, fast_path=side != "no_fast", space=space)
    if side == "reference":
        ref = ReferenceChain(package, variant)
        return ref, ref.parameters()
    return package, list(package.parameters())


def make_op(side: str, n: int, variant: str, mode: str) -> Op:
    """A zero-argument call producing the adapted weight (and, for ``forward_backward``, the grads of ``M``)."""
    fn, params = make_adapter(side, n, variant)
    w0 = clip_like_weight(n)
    grad_out = clip_like_weight(n, seed=2)
    if mode == "forward":
        return lambda: fn(w0)
    return lambda: torch.autograd.grad(fn(w0), params, grad_out)


# ----------------------------------------------------------------------------- measuring


def max_deviation(n: int, variant: str) -> float:
    """Max |side − reference| of the adapted weight over the package's sides (a correctness sanity check)."""
    w0 = clip_like_weight(n)
    with torch.no_grad():
        ref = make_adapter("reference", n, variant)[0](w0)
        sides = [make_adapter(side, n, variant)[0] for side in SIDES[1:]]
        return max(float((fn(w0) - ref).abs().max()) for fn in sides)


def time_mode(n: int, variant: str, mode: str, effort: Effort) -> dict[str, float]:
    """Interleaved timing of the three sides; medians in ms and paired ratios against the reference."""
    sides = {side: make_op(side, n, variant, mode) for side in SIDES}
    interleaved_times(sides, 0, warmup=effort.warmup)
    rounds = rounds_for(sides, effort.budget_s, effort.min_rounds, effort.max_rounds)
    times = interleaved_times(sides, rounds, warmup=0)
    out = {f"{side}_ms": median_ms(times[side]) for side in SIDES}
    out["package_vs_reference_time_ratio"] = paired_ratio(times["package"], times["reference"])
    out["no_fast_vs_reference_time_ratio"] = paired_ratio(times["no_fast"], times["reference"])
    out["package_vs_euclidean_time_ratio"] = paired_ratio(times["package"], times["euclidean"])
    out["rounds"] = rounds
    return out


def memory_setup(side: str, n: int, variant: str, mode: str) -> Op:
    """Child-process entry point for :func:`peak_memory_mib` (single-threaded timing is irrelevant here)."""
    return make_op(side, n, variant, mode)


def measure_memory(n: int, variant: str, effort: Effort) -> dict[str, dict[str, float]]:
    """Peak MiB per side and mode, each in its own child process."""
    keys = [(side, mode) for mode in MODES for side in SIDES]
    jobs = [(memory_setup, (side, n, variant, mode)) for side, mode in keys]
    mib = peak_memory_mib(jobs, warmup=effort.memory_warmup)
    out: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    for (side, mode), value in zip(keys, mib, strict=True):
        out[mode][f"{side}_peak_mib"] = value["op_mib"]
    for mode in MODES:
        ratio = mem_ratio(out[mode]["package_peak_mib"], out[mode]["reference_peak_mib"])
        if ratio is not None:
            out[mode]["package_vs_reference_peak_mem_ratio"] = ratio
    return out


def run_one(n: int, variant: str, effort: Effort) -> dict[str, Any]:
    """All figures for one (n, variant)."""
    memory = measure_memory(n, variant, effort)
    result: dict[str, Any] = {mode: {**time_mode(n, variant, mode, effort), **memory[mode]} for mode in MODES}
    result["max_abs_deviation"] = max_deviation(n, variant)
    result["m_params"] = sum(p.numel() for p in package_module(n, variant, True).parameters())
    return result


def run(quick: bool = False, tiny: bool = False, sizes: Sequence[int] | None = None, log: bool = False) -> dict:
    """Figures for every size and variant: ``{"results": {n: {variant: {mode: {...}}}}, ...}``."""
    default = TINY_SIZES if tiny else QUICK_SIZES if quick else SIZES
    sizes = tuple(sizes or default)
    effort = EFFORT["tiny" if tiny else "quick" if quick else "full"]
    left_out = [f"n={n} (--quick)" for n in SIZES if quick and not tiny and n not in sizes]
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        results[str(n)] = {}
        for variant in VARIANTS:
            if log:
                print(f"[{NAME}] n={n} {variant} …", file=sys.stderr, flush=True)
            results[str(n)][variant] = run_one(n, variant, effort)
    return {
        "machine": machine(),
        "time_method": time_method(),
        "memory_method": MEMORY_METHOD,
        "quick": quick,
        "left_out": left_out,
        "results": results,
    }


# ----------------------------------------------------------------------------- output


def _time_row(n: str, variant: str, mode: str, r: dict[str, float]) -> list[str]:
    return [
        n,
        variant,
        mode,
        fmt(r["reference_ms"], 3),
        fmt(r["package_ms"], 3),
        fmt(r["package_vs_reference_time_ratio"], 3),
        fmt(r["no_fast_ms"], 3),
        fmt(r["no_fast_vs_reference_time_ratio"], 3),
        fmt(r["euclidean_ms"], 3),
        fmt(r["package_vs_euclidean_time_ratio"], 3),
    ]


def _memory_row(n: str, variant: str, mode: str, r: dict[str, float]) -> list[str]:
    return [
        n,
        variant,
        mode,
        *(fmt(r[f"{side}_peak_mib"], 1) for side in SIDES),
        fmt(r.get("package_vs_reference_peak_mem_ratio"), 3),
    ]


def format_table(result: dict) -> str:
    """Markdown tables: times with ratios (medians), then peak memory."""
    head = [
        "n",
        "M",
        "mode",
        "reference ms",
        "package ms",
        "package/ref",
        "no-fast ms",
        "no-fast/ref",
        "W0·Mᵀ ms",
        "package/W0·Mᵀ",
    ]
    mem_head = ["n", "M", "mode", "reference MiB", "package MiB", "no-fast MiB", "W0·Mᵀ MiB", "package/ref"]
    rows, mem_rows = [], []
    for n, variants in result["results"].items():
        for variant, modes in variants.items():
            for mode in MODES:
                rows.append(_time_row(n, variant, mode, modes[mode]))
                mem_rows.append(_memory_row(n, variant, mode, modes[mode]))
    lines = [table(head, rows), "", table(mem_head, mem_rows), ""]
    lines.append(f"time: {result['time_method']}")
    lines.append(f"memory: {result['memory_method']}")
    if result["left_out"]:
        lines.append("left out: " + ", ".join(result["left_out"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the tables, optionally write JSON."""

    def sizes(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sizes", type=int, nargs="+", help=f"matrix sizes (default: {' '.join(map(str, SIZES))})")

    return script_main(
        __doc__,
        "fewer repeats; leaves n=4096 out",
        lambda args: run(quick=args.quick, sizes=args.sizes, log=True),
        format_table,
        argv,
        add_arguments=sizes,
    )
