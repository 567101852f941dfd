"""MemVP's released checkpoints (``JieShibo/MemVP``'s ``train.py``, and HyperET's release built on it) mapped onto
:class:`~lit_hyperet.models.memvp.model.MemVPModel`'s trainable tensors.

MemVP saves every parameter whose name contains ``adapter`` (``{"model": tensors, "optimizer", "epoch", "scaler",
"args": argparse.Namespace}``; ``module.`` prefixed when saved from DDP). The official names and their homes here
(``T`` = ``backbone.visual.transformer.resblocks.N``, ``L`` = ``vision_tower.encoder.layers.N``):

* ``adapter_proj.fc{1,2}.{weight,bias}``, ``adapter_emb1``, ``adapter_emb2`` (1, emb, d): the same names;
* ``adapter_modality_embedding.weight`` (2, d), never read by MemVP's forward: the same name when the model keeps it
  (``modality_embedding``), else dropped;
* ``T.adapter_mlp.fc{1,2}.weight``: ``L.mlp.adapter_mlp.fc{1,2}.weight``;
* ``T.hyperbolic_attn.adapter_attn_{q,v}.{scaling,weights}``: the HyperET matrix of ``L.self_attn.{q,v}_proj``.

HyperET's matrices (its ``adapter_d.py`` / ``adapter_blockd.py`` / ``adapter_banded.py``; each ``M`` acts on the rows
of ``W`` as ``w ↦ M·w``, as here): ``scaling`` (n,) is the diagonal; ``weights`` (r, b, b) are the blocks of
``block_diag`` in order; a 1-D ``weights`` holds the entries of the banded ``M`` with ``|i − j| ≤ d`` in row-major
order (the coalesced indices of ``torch.sparse.spdiags``), re-laid here diagonal by diagonal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lit_hyperet.hyperet import HyperETWeight, adapted_modules
from lit_hyperet.structured import BandedMatrix, BlockDiagonalMatrix, DiagonalMatrix

#: Keys the official files hold that MemVP's forward never reads; dropped when the model has no home for them.
UNUSED = ("adapter_modality_embedding.weight",)
_DDP_PREFIX = "module."
_BLOCK = r"backbone\.visual\.transformer\.resblocks\.(\d+)\."
_ADAPTER = re.compile(_BLOCK + r"adapter_mlp\.(fc[12]\.weight)$")
_HYPERET = re.compile(_BLOCK + r"hyperbolic_attn\.adapter_attn_([qkv])\.(scaling|weights)$")
_TOWER = "vision_tower.encoder.layers.{}."


@dataclass
class OfficialMapping:
    """The official tensors under their ``MemVPModel`` names, and what did not fit.

    ``unknown``: official keys with no home in the model; ``missing``: trainable model tensors the file lacks;
    ``dropped``: official keys left out on purpose (:data:`UNUSED`); ``mismatched``: ``(key, what)`` for tensors
    whose shape or structure does not fit (only checked when no key is unknown or missing).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str]] = field(default_factory=list)


def strip_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the ``module.`` prefix DDP adds (every key or none carries it)."""
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def _hyperet_homes(model: nn.Module) -> dict[str, tuple[str, HyperETWeight]]:
    """``{"N.q": (name prefix of its M's parameters, HyperETWeight)}`` for the tower's adapted q / k / v
    projections."""
    homes = {}
    for name, module, weight in adapted_modules(model):
        found = re.fullmatch(r"vision_tower\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj", name)
        if found and isinstance(weight, HyperETWeight):
            index = list(module.parametrizations.weight).index(weight)
            homes[f"{found.group(1)}.{found.group(2)}"] = (f"{name}.parametrizations.weight.{index}.matrix.", weight)
    return homes


def _matrix_tensor(matrix: nn.Module, kind: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | str:
    """``(parameter name inside the matrix, tensor in its layout)``, or why the official tensor does not fit."""
    if isinstance(matrix, DiagonalMatrix):
        if kind != "scaling" or tuple(value.shape) != (matrix.n,):
            return f"{kind} {tuple(value.shape)} for a diagonal M of size {matrix.n} (expected scaling ({matrix.n},))"
        return "diag", value
    if isinstance(matrix, BlockDiagonalMatrix):
        expected = (matrix.num_blocks, matrix.block_size, matrix.block_size)
        if kind != "weights" or tuple(value.shape) != expected:
            return f"{kind} {tuple(value.shape)} for a block-diagonal M (expected weights {expected})"
        return "blocks", value
    if isinstance(matrix, BandedMatrix):
        n, d = matrix.n, matrix.band_width
        if kind != "weights" or value.dim() != 1 or value.numel() != matrix.bands.numel():
            return (
                f"{kind} {tuple(value.shape)} for a banded M of size {n} with band width {d} "
                f"(expected weights ({matrix.bands.numel()},))"
            )
        return "bands", banded_from_row_major(value, n, d)
    return f"a {type(matrix).__name__} M has no official layout"


def banded_from_row_major(values: torch.Tensor, n: int, band_width: int) -> torch.Tensor:
    """HyperET's banded entries (``|i − j| ≤ d``, row-major) as :class:`BandedMatrix`'s vector (main diagonal, then
    ``+k`` and ``−k`` for ``k = 1..d``)."""
    rows, cols = band_indices(n, band_width)
    dense = torch.zeros(n, n, dtype=values.dtype)
    dense[rows, cols] = values
    parts = [dense.diagonal(0)]
    for k in range(1, band_width + 1):
        parts += [dense.diagonal(k), dense.diagonal(-k)]
    return torch.cat(parts)


def band_indices(n: int, band_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the entries with ``|i − j| ≤ d`` of an n×n matrix, in row-major order."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i - j).abs() <= band_width
    return i[keep], j[keep]


def map_official(
    state: dict[str, torch.Tensor], model: nn.Module, trainable: dict[str, torch.Tensor]
) -> OfficialMapping:
    """Map an official state dict (``module.`` prefix allowed) onto ``model`` (a built ``MemVPModel``) whose trainable
    tensors are ``trainable`` (``{name in model: parameter}``). Names are matched first; shapes only when every key
    found its home and none is missing."""
    state = strip_ddp_prefix(state)
    homes = _hyperet_homes(model)
    out = OfficialMapping()
    sources: dict[str, tuple[str, torch.Tensor | str]] = {}  # model name -> (official key, tensor or mismatch)
    for key, value in state.items():
        target: str | None = None
        converted: torch.Tensor | str = value
        if key in trainable and key.startswith("adapter_"):
            target = key
        elif (found := _ADAPTER.fullmatch(key)) is not None:
            target = _TOWER.format(found.group(1)) + f"mlp.adapter_mlp.{found.group(2)}"
        elif (found := _HYPERET.fullmatch(key)) is not None and f"{found.group(1)}.{found.group(2)}" in homes:
            prefix, weight = homes[f"{found.group(1)}.{found.group(2)}"]
            fitted = _matrix_tensor(weight.matrix, found.group(3), value)
            if isinstance(fitted, str):  # reported with the shapes, under the matrix's parameter
                target, converted = next((n for n in trainable if n.startswith(prefix)), None), fitted
            else:
                target, converted = prefix + fitted[0], fitted[1]
        if target is None or target not in trainable:
            (out.dropped if key in UNUSED else out.unknown).append(key)
            continue
        sources[target] = (key, converted)
    out.missing = sorted(set(trainable) - set(sources))
    out.unknown.sort()
    if out.unknown or out.missing:
        return out
    for target, (key, value) in sorted(sources.items()):
        expected = tuple(trainable[target].shape)
        if isinstance(value, str):
            out.mismatched.append((key, value))
        elif tuple(value.shape) != expected:
            out.mismatched.append((key, f"shape {tuple(value.shape)}, the configured model's {target} is {expected}"))
        else:
            out.tensors[target] = value.to(trainable[target].dtype)
    return out
