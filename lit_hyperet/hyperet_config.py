"""``HyperETConfig``: which Linears HyperET adapts and with which structured matrix and space (plain data, no torch;
:mod:`lit_hyperet.hyperet` applies it and re-exports these names)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lit_hyperet.user_errors import ConfigError

if TYPE_CHECKING:
    from lit_hyperet.structured import StructuredMatrix

Variant = Literal["diagonal", "block_diagonal", "banded", "full"]
Space = Literal["hyperbolic", "hyperbolic_no_mobius", "euclidean"]
VARIANTS: tuple[str, ...] = ("diagonal", "block_diagonal", "banded", "full")
SPACES: tuple[str, ...] = ("hyperbolic", "hyperbolic_no_mobius", "euclidean")

#: q and v projections of transformers vision towers: CLIP / SigLIP (``encoder.layers.N.self_attn.{q,v}_proj``) and
#: DINOv2 (``encoder.layer.N.attention.{q,v}_proj``, older releases ``attention.attention.{query,value}``). The
#: look-ahead keeps a whole LLaVA's language model (``language_model``) and CLIP text towers (``text_model``) out.
DEFAULT_TARGETS = (
    r"^(?!.*(?:language_model|text_model))"
    r"(?:.*\.)?encoder\.layers?\.\d+\.(?:self_attn|attention(?:\.attention)?)\.(?:q_proj|v_proj|query|value)$"
)
DEFAULT_BLOCK_SIZE = 4  # released block-diagonal setting


@dataclass
class HyperETConfig:
    """Which Linears HyperET adapts and how.

    Args:
        variant: structure of ``M``: ``diagonal`` (n params), ``block_diagonal`` (n·b), ``banded``
            ((2d+1)n − d(d+1)) or ``full`` (n²).
        num_blocks: block count for ``block_diagonal`` (give this or ``block_size``; must divide n).
        block_size: block side length for ``block_diagonal`` (default 4, the released setting; must divide n).
        band_width: band width d for ``banded`` (released: 2).
        space: ``hyperbolic`` (paper Eq. 9), ``hyperbolic_no_mobius`` or ``euclidean`` (``W0·Mᵀ``).
        curvature: c > 0 of the Poincaré ball (released: 0.01).
        learn_curvature: learn c per adapted weight (a 1-D parameter kept positive with softplus).
        targets: regex searched in the qualified names of ``nn.Linear`` modules.
        fast_path: use the exact identity ``log0(M ⊗_c exp0(w)) = M·w`` on rows where no clamp can fire.
    """

    variant: Variant = "diagonal"
    num_blocks: int | None = None
    block_size: int | None = None
    band_width: int = 2
    space: Space = "hyperbolic"
    curvature: float = 0.01
    learn_curvature: bool = False
    targets: str = DEFAULT_TARGETS
    fast_path: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown HyperET variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.space not in SPACES:
            raise ConfigError(f"unknown HyperET space {self.space!r}; valid: {', '.join(SPACES)}")
        if not self.curvature > 0:
            raise ConfigError(f"curvature must be > 0, got {self.curvature}")
        if self.num_blocks is not None and self.block_size is not None:
            raise ConfigError(f"give num_blocks ({self.num_blocks}) or block_size ({self.block_size}), not both")
        if self.band_width < 0:
            raise ConfigError(f"band_width must be >= 0, got {self.band_width}")
        re.compile(self.targets)

    def block_size_for(self, n: int) -> int:
        """Block side length for an n×n matrix; a count or size that does not divide n is a ``ConfigError``."""
        if self.num_blocks is not None:
            if self.num_blocks < 1 or n % self.num_blocks:
                raise ConfigError(
                    f"hyperet.num_blocks {self.num_blocks} does not divide {n}; use one of {_divisors(n)}"
                )
            return n // self.num_blocks
        size = self.block_size if self.block_size is not None else DEFAULT_BLOCK_SIZE
        if size < 1 or n % size:
            raise ConfigError(f"hyperet.block_size {size} does not divide {n}; use one of {_divisors(n)}")
        return size

    def build_matrix(self, n: int) -> StructuredMatrix:
        """An identity-initialised structured matrix of size n."""
        # Imported here: the configuration itself is plain data, readable without torch (sweep reports).
        from lit_hyperet.structured import BandedMatrix, BlockDiagonalMatrix, DiagonalMatrix, FullMatrix

        if self.variant == "diagonal":
            return DiagonalMatrix(n)
        if self.variant == "block_diagonal":
            return BlockDiagonalMatrix(n, self.block_size_for(n))
        if self.variant == "banded":
            return BandedMatrix(n, self.band_width)
        return FullMatrix(n)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
