"""Random Hadamard transforms (RHT): seeded orthogonal mixing along a GEMM's contraction axis.

``R = D H / sqrt(n)`` with ``H`` the Sylvester Hadamard matrix of order ``n`` (a power of two)
and ``D`` a diagonal of random signs drawn from ``seed``; ``R R^T = I``. For a GEMM ``A @ B``
with contraction length ``K``, both operands are cut into chunks of ``n`` along ``K`` (zero-padded
to a multiple of ``n``) and each chunk is multiplied by ``R``: ``(A R)(R^T B) = A B`` exactly in
real arithmetic, while outliers are spread over ``n`` values before quantization.
"""

from __future__ import annotations

import functools

import torch

SIZES = (16, 32, 64, 128, 256)


def _check(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n!r}")


@functools.lru_cache(maxsize=64)
def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix of order ``n`` (symmetric and orthogonal)."""
    _check(n)
    return (_sylvester(n) / n ** 0.5).to(dtype)


@functools.lru_cache(maxsize=256)
def _random_hadamard64(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    return signs[:, None] * _sylvester(n) / n ** 0.5


def random_hadamard(n: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``diag(random signs from seed) @ H / sqrt(n)``: orthogonal, the same for the same seed."""
    _check(n)
    return _random_hadamard64(n, int(seed)).to(dtype=dtype, device=device)


def rht(x: torch.Tensor, R: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Multiply every length-``n`` chunk of ``x`` along ``axis`` by ``R`` (``x_chunk @ R``).

    ``axis`` is zero-padded to a multiple of ``n`` first, so the result may be longer along
    ``axis`` than ``x``; pad the other GEMM operand the same way (this function does).
    """
    n = R.shape[0]
    moved = x.movedim(axis, -1)
    k = moved.shape[-1]
    pad = (-k) % n
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    chunks = moved.reshape(*moved.shape[:-1], -1, n)
    out = (chunks @ R.to(dtype=x.dtype, device=x.device)).reshape(*moved.shape)
    return out.movedim(-1, axis)
