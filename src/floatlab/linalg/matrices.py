"""Test matrices with a prescribed condition number (randsvd, as MATLAB's ``gallery('randsvd')``)."""

from __future__ import annotations

import math

import torch


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-distributed (n, n) orthogonal matrix (QR of a Gaussian matrix, signs fixed), float64."""
    g = torch.randn(n, n, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))[None, :]


def randsvd(n: int, kappa: float, *, mode: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """``U diag(sigma) V^T`` with Haar ``U``, ``V`` and 2-norm condition number ``kappa``, float64.

    ``mode`` 3 (default): geometrically spaced singular values ``sigma_i = kappa^(-(i-1)/(n-1))``;
    mode 2: one small singular value ``1/kappa``, the rest 1; mode 1: one large, the rest
    ``1/kappa``. ``||A||_2 = 1``.

    Source: the ``randsvd`` test matrix of Higham's Test Matrix Toolbox and MATLAB's
    ``gallery('randsvd', n, kappa, mode)`` (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2nd ed., SIAM 2002, Section 28.3), with the same mode numbers; the Haar factors
    come from :func:`random_orthogonal`.

    Returns:
        An (n, n) float64 tensor.

    Raises:
        ValueError: ``n < 2``, ``kappa`` below 1 or not finite, or an unknown mode.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not (kappa >= 1 and math.isfinite(kappa)):
        raise ValueError(f"kappa must be finite and >= 1, got {kappa!r}")
    i = torch.arange(n, dtype=torch.float64)
    if mode == 3:
        sigma = torch.tensor(float(kappa), dtype=torch.float64) ** (-i / (n - 1))
    elif mode == 2:
        sigma = torch.ones(n, dtype=torch.float64)
        sigma[-1] = 1 / kappa
    elif mode == 1:
        sigma = torch.full((n,), 1 / kappa, dtype=torch.float64)
        sigma[0] = 1.0
    else:
        raise ValueError(f"mode must be 1, 2 or 3, got {mode!r}")
    u = random_orthogonal(n, generator)
    v = random_orthogonal(n, generator)
    return (u * sigma[None, :]) @ v.T
