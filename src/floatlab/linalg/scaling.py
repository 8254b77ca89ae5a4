"""Two-sided diagonal scaling before a low-precision factorization ("squeezing" a matrix).

Higham, Pranesh and Zounon, *Squeezing a matrix into half precision, with an application to
solving linear systems*, SIAM J. Sci. Comput. 41(4), 2019, Algorithm 2.2: scale the rows to
max-norm 1 (``R = diag(1 / max_j |a_ij|)``), then the columns of ``R A`` (``S``), so that every
row and column of ``R A S`` has largest magnitude 1; then multiply by ``mu = theta * x_max`` so
that the largest entries use the top of the format's range (``theta = 0.1`` leaves room for
growth during the factorization) and small entries stay clear of underflow.

Here ``R``, ``S`` and ``mu`` are powers of two (the nearest below the exact reciprocal), so the
scaling is exact in float64 and ``A = R^-1 (mu R A S) S^-1 / mu`` holds exactly; the largest entry
of each row and column then lies in ``[1, 2)`` before ``mu``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floatlab.emulation.rounding import resolve_format

from .lu import _check_matrix


def _pow2_below(x: torch.Tensor) -> torch.Tensor:
    """The largest power of two <= x (x > 0), float64."""
    return torch.exp2(torch.floor(torch.log2(x)))


@dataclass
class Scaling:
    """``A_scaled = mu * diag(row) @ A @ diag(col)`` (all powers of two)."""

    row: torch.Tensor
    col: torch.Tensor
    mu: float

    def apply(self, A: torch.Tensor) -> torch.Tensor:
        return self.mu * (self.row[:, None] * A.to(torch.float64) * self.col[None, :])


def squeeze(A: torch.Tensor, fmt="fp16", theta: float = 0.1) -> Scaling:
    """The two-sided diagonal scaling of ``A`` for a factorization in ``fmt`` (see module docs).

    Args:
        A: (n, n) finite float tensor with no zero row or column.
        fmt: the factorization format (its largest value ``x_max`` sets ``mu``).
        theta: fraction of ``x_max`` the largest entries are scaled to (0 < theta <= 1).

    Returns:
        :class:`Scaling` with float64 ``row`` and ``col`` factors and ``mu``.

    Raises:
        ValueError: a zero row or column (the matrix is singular), bad ``theta``, non-square or
            non-finite ``A``, unknown format.
    """
    _check_matrix(A)
    if not 0 < theta <= 1:
        raise ValueError(f"theta must be in (0, 1], got {theta!r}")
    spec = resolve_format(fmt)
    a = A.detach().to(torch.float64).abs()
    rmax = a.amax(1)
    if bool((rmax == 0).any()):
        raise ValueError(f"row {int((rmax == 0).nonzero()[0])} of A is zero: the matrix is singular")
    row = 1.0 / _pow2_below(rmax)
    cmax = (row[:, None] * a).amax(0)
    if bool((cmax == 0).any()):
        raise ValueError(f"column {int((cmax == 0).nonzero()[0])} of A is zero: the matrix is singular")
    col = 1.0 / _pow2_below(cmax)
    # after scaling the largest entry is < 2: mu * 2 <= theta * x_max
    mu = float(_pow2_below(torch.tensor(theta * spec.max_value / 2, dtype=torch.float64)))
    return Scaling(row, col, mu)
