"""Identity-initialised structured matrices ``M`` (n×n) applied to the rows of a weight without densifying ``M``.

``matrix(x)`` (forward) computes ``x @ Mᵀ`` (each row ``w`` becomes ``M·w``); ``dense()`` builds the n×n matrix and exists for
tests, reports and merging only.
"""

from __future__ import annotations

import torch
from torch import nn


class StructuredMatrix(nn.Module):
    """Base class: an n×n matrix with a structured set of learnable entries."""

    n: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - documented in the module docstring
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The matrix as a dense ``(n, n)`` tensor."""
        eye = torch.eye(self.n, dtype=self._dtype(), device=self._device())
        return self(eye).T

    def num_parameters(self) -> int:
        """Number of learnable entries."""
        return sum(p.numel() for p in self.parameters())

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class DiagonalMatrix(StructuredMatrix):
    """``M = diag(d)``: n parameters (the released default)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.diag = nn.Parameter(torch.ones(n, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast multiply: ``x * d``."""
        return x * self.diag.to(x.dtype)


class BlockDiagonalMatrix(StructuredMatrix):
    """``M = block_diag(B_1, …, B_r)`` with ``r = n / block_size`` blocks of ``block_size²`` parameters each."""

    def __init__(self, n: int, block_size: int) -> None:
        super().__init__()
        if block_size < 1 or n % block_size:
            raise ValueError(f"block_diagonal: block size {block_size} does not divide the matrix size {n}")
        self.n, self.block_size, self.num_blocks = n, block_size, n // block_size
        eye = torch.eye(block_size, dtype=torch.float32)
        self.blocks = nn.Parameter(eye.repeat(self.num_blocks, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batched matmul on a ``(rows, r, b)`` view: block ``k`` of each row becomes ``B_k · x_k``."""
        lead = x.shape[:-1]
        xb = x.reshape(-1, self.num_blocks, self.block_size).transpose(0, 1)  # (r, rows, b)
        out = torch.bmm(xb, self.blocks.to(x.dtype).transpose(1, 2))  # (r, rows, b)
        return out.transpose(0, 1).reshape(*lead, self.n)


class BandedMatrix(StructuredMatrix):
    """Banded ``M`` with band width ``d`` (diagonals ``-d..d``): ``(2d+1)·n − d(d+1)`` parameters in one 1-D vector.

    Layout of the vector: the main diagonal, then for ``k = 1..d`` the ``+k`` and ``−k`` diagonals (``n−k`` each).
    """

    def __init__(self, n: int, band_width: int) -> None:
        super().__init__()
        if not 0 <= band_width < n:
            raise ValueError(f"banded: band width {band_width} must be in [0, {n - 1}] for matrix size {n}")
        self.n, self.band_width = n, band_width
        sizes = [n] + [n - k for k in range(1, band_width + 1) for _ in (0, 1)]
        values = torch.zeros(sum(sizes), dtype=torch.float32)
        values[:n] = 1.0
        self.bands = nn.Parameter(values)
        self._sizes = sizes

    def diagonals(self) -> dict[int, torch.Tensor]:
        """``{offset: values}``; offset ``k`` holds ``M[i, i+k]``."""
        parts = torch.split(self.bands, self._sizes)
        out = {0: parts[0]}
        for k in range(1, self.band_width + 1):
            out[k], out[-k] = parts[2 * k - 1], parts[2 * k]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of shifted diagonals: ``(M·x)_i = Σ_k M[i, i+k] x_{i+k}``."""
        n = self.n
        diags = {k: v.to(x.dtype) for k, v in self.diagonals().items()}
        out = x * diags[0]
        for k in range(1, self.band_width + 1):
            out[..., : n - k] += x[..., k:] * diags[k]  # rows i = 0..n-k-1 read x_{i+k}
            out[..., k:] += x[..., : n - k] * diags[-k]  # rows i = k..n-1 read x_{i-k}
        return out


class FullMatrix(StructuredMatrix):
    """Dense ``M``: n² parameters (the LLaVA-1.5 pre-training setting)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(torch.eye(n, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Mᵀ``."""
        return x @ self.weight.to(x.dtype).T


def banded_parameter_count(n: int, band_width: int) -> int:
    """``(2d+1)·n − d(d+1)``."""
    return (2 * band_width + 1) * n - band_width * (band_width + 1)
