"""``HyperETConfig``: which Linears HyperET adapts, which slices of fused q/k/v projections, and with which structured
matrix and space (plain data, no torch; :mod:`lit_hyperet.hyperet` applies it and re-exports these names)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lit_hyperet.user_errors import ConfigError

if TYPE_CHECKING:
    from lit_hyperet.structured import StructuredMatrix

Variant = Literal["diagonal", "block_diagonal", "banded", "full"]
Space = Literal["hyperbolic", "hyperbolic_no_mobius", "euclidean"]
VARIANTS: tuple[str, ...] = ("diagonal", "block_diagonal", "banded", "full")
SPACES: tuple[str, ...] = ("hyperbolic", "hyperbolic_no_mobius", "euclidean")

#: The attention projections of transformers vision towers, never a language model's or a Q-Former's:
#:
#: * separate q and v projections: CLIP / SigLIP (``encoder.layers.N.self_attn.{q,v}_proj``), DINOv2
#:   (``encoder.layer.N.attention.{q,v}_proj``) and DINOv3 (``model.layer.N.attention.{q,v}_proj``);
#: * fused q/k/v projections (adapted slice by slice, see ``HyperETConfig.fused_slices``): SAM
#:   (``vision_encoder.layers.N.attn.qkv``) and BLIP-2's vision tower (``encoder.layers.N.self_attn.qkv``).
#:
#: The look-ahead keeps a whole LLaVA's language model (``language_model``), CLIP text towers (``text_model``) and a
#: BLIP-2 Q-Former (``qformer``) out; a Llama decoder (``model.layers.N.self_attn``) and a Q-Former built on its own
#: (``encoder.layer.N.attention.attention.query``) do not have the shapes above. (transformers releases that still
#: named DINOv2's projections ``attention.attention.{query,value}``, the Q-Former's names, need explicit targets.)
DEFAULT_TARGETS = (
    r"^(?!.*(?:language_model|text_model|qformer))(?:.*\.)?(?:"
    r"(?:vision_)?encoder\.layers\.\d+\.(?:self_attn|attn)\.(?:q_proj|v_proj|qkv)"
    r"|(?:encoder|model)\.layer\.\d+\.attention\.(?:q_proj|v_proj)"
    r")$"
)
#: A targeted Linear whose qualified name ends like this holds q, k and v stacked: weight ``(3n, n)``, rows
#: ``[q; k; v]`` (SAM and BLIP-2 ``qkv``; an ``nn.Linear`` named ``in_proj``, as some towers call it).
FUSED_NAME_PATTERN = r"(?:qkv|in_proj)$"
#: The row blocks of a fused projection, in weight order.
FUSED_SLICE_NAMES: tuple[str, ...] = ("q", "k", "v")
DEFAULT_FUSED_SLICES: tuple[str, ...] = ("q", "v")  # HyperET adapts q and v
DEFAULT_BLOCK_SIZE = 4  # released block-diagonal setting


def _default_fused_slices() -> list[str]:
    return list(DEFAULT_FUSED_SLICES)


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
        targets: regex searched in the qualified names of ``nn.Linear`` modules. A matched Linear whose name ends in
            ``qkv`` or ``in_proj`` is a fused q/k/v projection (weight ``(3n, n)``, rows ``[q; k; v]``; another shape
            is an error) and is adapted slice by slice.
        fused_slices: the row blocks of fused q/k/v projections to adapt, a non-empty subset of ``q``, ``k``, ``v`` in
            that order (default q and v); each gets its own n×n ``M``, the others stay frozen as they are.
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
    fused_slices: list[str] = field(default_factory=_default_fused_slices)
    fast_path: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"hyperet.variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.space not in SPACES:
            raise ConfigError(f"hyperet.space {self.space!r} is not one of {', '.join(SPACES)}")
        if not self.curvature > 0:
            raise ConfigError(f"hyperet.curvature must be > 0, got {self.curvature}")
        if self.num_blocks is not None and self.block_size is not None:
            raise ConfigError(
                f"hyperet: give num_blocks ({self.num_blocks}) or block_size ({self.block_size}), not both"
            )
        if self.band_width < 0:
            raise ConfigError(f"hyperet.band_width must be >= 0, got {self.band_width}")
        try:
            re.compile(self.targets)
        except re.error as err:
            raise ConfigError(f"hyperet.targets is not a valid regular expression: {err}") from None
        _check_fused_slices(self.fused_slices)

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


def is_fused_name(name: str) -> bool:
    """Whether a qualified Linear name says fused q/k/v projection (:data:`FUSED_NAME_PATTERN`)."""
    return re.search(FUSED_NAME_PATTERN, name) is not None


def _check_fused_slices(value: object) -> None:
    names = list(value) if isinstance(value, (list, tuple)) else None
    if not names or names != [s for s in FUSED_SLICE_NAMES if s in names]:
        raise ConfigError(
            "hyperet.fused_slices must be a non-empty subset of q, k, v in that order (e.g. [q, v] or [q, k, v]); "
            f"got {value!r}"
        )


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


#: Checkpoint hyper-parameters (dotted, under the module's ``hyperet`` argument) that change which HyperET tensors
#: exist: a checkpoint disagreeing in one of them cannot be loaded onto the configured model.
LAYOUT_HPARAMS = (
    "hyperet",
    "hyperet.variant",
    "hyperet.num_blocks",
    "hyperet.block_size",
    "hyperet.band_width",
    "hyperet.targets",
    "hyperet.fused_slices",
    "hyperet.learn_curvature",
)
