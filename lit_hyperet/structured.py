"""Identity-initialised structured matrices ``M`` (n×n) applied to the rows of a weight without densifying ``M``.

``matrix(x)`` (forward) computes ``x @ Mᵀ`` (each row ``w`` becomes ``M·w``); ``dense()`` builds the n×n matrix and
exists for tests, reports and merging only.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_hyperet.user_errors import ConfigError


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
            raise ConfigError(f"block_diagonal: block size {block_size} does not divide the matrix size {n}")
        self.n, self.block_size, self.num_blocks = n, block_size, n // block_size
        eye = torch.eye(block_size, dtype=torch.float32)
        self.blocks = nn.Parameter(eye.repeat(self.num_blocks, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block ``k`` of each row becomes ``B_k · x_k``: one batched matmul ``B_k @ X_kᵀ`` over the blocks.

        ``X_kᵀ`` (``b × rows``) is a strided view of the transposed input and the result is returned as a transposed
        view (not contiguous for 2-D inputs): both layouts go to BLAS without a copy, which made forward + backward
        about 2× faster than copying into a ``(r, rows, b)`` layout and back. ``F.linear`` takes such a weight as is.
        """
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.n)
        rows = x2.shape[0]
        xt = x2.T.reshape(self.num_blocks, self.block_size, rows)  # (r, b, rows), a view
        out = torch.bmm(self.blocks.to(x.dtype), xt)  # (r, b, rows)
        return out.reshape(self.n, rows).T.reshape(*lead, self.n)


class BandedMatrix(StructuredMatrix):
    """Banded ``M`` with band width ``d`` (diagonals ``-d..d``): ``(2d+1)·n − d(d+1)`` parameters in one 1-D vector.

    Layout of the vector: the main diagonal, then for ``k = 1..d`` the ``+k`` and ``−k`` diagonals (``n−k`` each).
    """

    def __init__(self, n: int, band_width: int) -> None:
        super().__init__()
        if not 0 <= band_width < n:
            raise ConfigError(f"banded: band width {band_width} must be in [0, {n - 1}] for matrix size {n}")
        self.n, self.band_width = n, band_width
        sizes = [n] + [n - k for k in range(1, band_width + 1) for _ in (0, 1)]
        values = torch.zeros(sum(sizes), dtype=torch.float32)
        values[:n] = 1.0
        self.bands = nn.Parameter(values)
        self._sizes = sizes

    def diagonals(self) -> dict[int, torch.Tensor]:
        """``{offset: values}``; offset ``k`` holds ``M[i, i+k]`` (``i`` from 0), offset ``-k`` holds ``M[i+k, i]``."""
        return _split_bands(self.bands, self._sizes, self.band_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of shifted diagonals: ``(M·x)_i = Σ_k M[i, i+k] x_{i+k}`` (hand-written backward, see
        :class:`_BandedApply`)."""
        return _BandedApply.apply(x, self.bands, self._sizes, self.band_width)


def _split_bands(bands: torch.Tensor, sizes: list[int], band_width: int) -> dict[int, torch.Tensor]:
    parts = torch.split(bands, sizes)
    out = {0: parts[0]}
    for k in range(1, band_width + 1):
        out[k], out[-k] = parts[2 * k - 1], parts[2 * k]
    return out


def _shifted_sum(x: torch.Tensor, diags: dict[int, torch.Tensor], band_width: int, transpose: bool) -> torch.Tensor:
    """``x @ Mᵀ`` (``transpose=False``) or ``x @ M`` for the banded ``M`` given by its diagonals, accumulated in place
    into one output buffer (no temporary per diagonal)."""
    n = x.shape[-1]
    out = x * diags[0]
    for k in range(1, band_width + 1):
        up, down = (diags[-k], diags[k]) if transpose else (diags[k], diags[-k])
        out[..., : n - k].addcmul_(x[..., k:], up)  # entry i reads x_{i+k}
        out[..., k:].addcmul_(x[..., : n - k], down)  # entry i reads x_{i-k}
    return out


class _BandedApply(torch.autograd.Function):
    """``x @ Mᵀ`` for banded ``M`` with an explicit backward.

    Autograd through the in-place shifted adds records a ``CopySlices`` node per add, each copying the whole
    gradient, which made forward + backward about 4× slower than needed. Here the backward is one product and row-sum
    per diagonal for ``M`` and, only when ``x`` needs it, the transposed band product for ``x``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bands: torch.Tensor, sizes: list[int], band_width: int) -> torch.Tensor:
        ctx.save_for_backward(x, bands)
        ctx.sizes, ctx.band_width = sizes, band_width
        return _shifted_sum(x, _split_bands(bands.to(x.dtype), sizes, band_width), band_width, transpose=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, bands = ctx.saved_tensors
        n, d = x.shape[-1], ctx.band_width
        grad_x = grad_bands = None
        if ctx.needs_input_grad[1]:
            g, xs = grad.reshape(-1, n), x.reshape(-1, n)
            parts = [(g * xs).sum(0)]
            for k in range(1, d + 1):
                parts.append((g[:, : n - k] * xs[:, k:]).sum(0))  # d/d M[i, i+k]
                parts.append((g[:, k:] * xs[:, : n - k]).sum(0))  # d/d M[i+k, i]
            grad_bands = torch.cat(parts).to(bands.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = _shifted_sum(grad, _split_bands(bands.to(grad.dtype), ctx.sizes, d), d, transpose=True)
        return grad_x, grad_bands, None, None


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
