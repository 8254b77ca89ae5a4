"""LU factorization with partial pivoting in which every operation is rounded to a format.

The algorithm is the textbook right-looking one (Golub & Van Loan, Algorithm 3.4.1), written out so
that the rounding of each operation is visible. At step ``k``:

1. pivot: the row ``p >= k`` with the largest ``|a_pk|`` (the first one on ties, as LAPACK's
   ``idamax``) is swapped with row ``k``;
2. multipliers: ``l_ik = fl(a_ik / a_kk)``;
3. Schur complement: ``a_ij = fl(a_ij - fl(l_ik * a_kj))`` (two roundings; ``fma=True`` rounds
   ``a_ij - l_ik a_kj`` once, as a fused multiply-add).

``fl`` rounds into the factorization format ``u_f`` with :class:`~floatlab.emulation.Rounder`
(``floatlab.quantize`` semantics, or the native cast where it is the same function). The
arithmetic itself is float64, which makes each operation correctly rounded for every format up to
fp32 (products are exact; ``a - p``, ``a / b`` decide their rounding exactly, see
:mod:`floatlab.emulation`). With ``"fp64"`` nothing is rounded and the factors are those of plain
float64 arithmetic in this order (``tests/test_linalg.py`` checks them against a NumPy reference bit
for bit and against ``scipy.linalg.lu_factor``: same pivots, factors equal to rounding).

Triangular solves (:func:`lu_solve`) round every operation the same way (column-oriented forward
and back substitution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from floatlab.emulation.rounding import Rounder, two_product, two_sum
from floatlab.text import plural


class SingularMatrixError(ValueError):
    """The factorization met a zero pivot (the message names the step and the column)."""


def _check_matrix(A, what: str = "A") -> torch.Tensor:
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(A).__name__}")
    if not A.is_floating_point() or A.is_complex():
        raise TypeError(f"{what} must be a real floating tensor, got {A.dtype}")
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{what} must be a square matrix, got shape {tuple(A.shape)}")
    if A.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 x 0)")
    _check_finite(A, what, "LU needs finite input")
    return A


def _check_finite(t: torch.Tensor, what: str, need: str) -> None:
    """Refuse a vector or matrix holding NaN/Inf, naming how many and where the first one is."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        at = tuple(int(v) for v in bad.nonzero()[0])
        where = f"entry {at[0]}" if t.dim() == 1 else f"row {at[0]}, column {at[1]}"
        raise ValueError(f"{what} has {plural(int(bad.sum()), 'non-finite entry', 'non-finite entries')} "
                         f"(first at {where}: {t[at].item()}); {need}")


def _check_finite_rhs(b: torch.Tensor) -> None:
    _check_finite(b, "b", "the solve needs finite input")


@dataclass
class LUFactors:
    """``P A = L U`` with ``L`` unit lower triangular, both stored in ``lu`` (float64 values of
    the factorization format).

    Attributes:
        lu: (n, n) float64: ``U`` on and above the diagonal, the multipliers of ``L`` below it.
        piv: (n,) int64, LAPACK/SciPy convention: row ``i`` was swapped with row ``piv[i]``.
        perm: (n,) int64 row permutation: ``A[perm] = L @ U`` (up to the rounding).
        rounder: the rounding of the factorization (format, mode).
        growth: the growth factor ``max |u_ij| / max |a_ij|``.
        row_scale, col_scale, mu: the diagonal scaling applied before factorizing (see
            :func:`floatlab.linalg.squeeze`): the factors are those of ``mu * diag(row_scale) @ A
            @ diag(col_scale)``; all ones and ``mu = 1`` without scaling.
    """

    lu: torch.Tensor
    piv: torch.Tensor
    perm: torch.Tensor
    rounder: Rounder
    growth: float
    row_scale: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None
    mu: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.lu.shape[0]

    @property
    def L(self) -> torch.Tensor:
        return torch.tril(self.lu, -1) + torch.eye(self.n, dtype=self.lu.dtype)

    @property
    def U(self) -> torch.Tensor:
        return torch.triu(self.lu)

    @property
    def format(self) -> str:
        return self.rounder.name


def lu_factor(A: torch.Tensor, fmt="fp16", rounding=None, *, saturate: bool | None = None,
              generator: torch.Generator | None = None, fma: bool = False,
              backend: str | None = None) -> LUFactors:
    """LU with partial pivoting of the square matrix ``A``, every operation rounded to ``fmt``.

    ``A`` itself is first rounded into ``fmt`` (scale it beforehand to fit the format's range:
    :func:`floatlab.linalg.squeeze`). Cost: ``n`` steps of O((n-k)^2) tensor work; n = 256 takes
    well under a second for fp16/bf16 (native casts) and a few seconds for other formats.

    Args:
        A: (n, n) float16/bfloat16/float32/float64 tensor, finite.
        fmt: the factorization format ``u_f`` (``"fp16"``, ``"bf16"``, ``"e4m3"``, ``"tf32"``,
            ``"fp32"``, ``"fp64"``, any scalar floatlab format).
        rounding, saturate, generator: as :func:`floatlab.quantize` (``generator`` for ``sr``).
        fma: round ``a - l*u`` once instead of twice.
        backend: ``floatlab.quantize``'s backend.

    Returns:
        :class:`LUFactors` (float64 tensors holding values of ``fmt``).

    Raises:
        TypeError: ``A`` is not a real floating tensor; a block format.
        ValueError: ``A`` is not square, is empty or holds NaN/Inf; an unknown format or mode.
        SingularMatrixError: a zero pivot (exactly singular, or singular after rounding to
            ``fmt``); the message names the step.
        FloatingPointError: the factorization overflowed in ``fmt`` (NaN/Inf appeared).
    """
    _check_matrix(A)
    r = Rounder(fmt, rounding, saturate=saturate, generator=generator, backend=backend)
    a0 = A.detach().to(torch.float64)
    lu = r(a0).clone()
    if not bool(torch.isfinite(lu).all()):
        raise FloatingPointError(
            f"A does not fit in {r.name!r}: rounding it gives NaN/Inf (max |a_ij| = "
            f"{a0.abs().max().item():.3g}, largest {r.name} value {r.spec.max_value:.6g}); scale it "
            "first, e.g. floatlab.linalg.squeeze(A, fmt)")
    piv = _right_looking(lu, r, fma)
    amax = float(a0.abs().max())
    growth = float(lu.triu().abs().max()) / amax if amax > 0 else math.inf
    perm = _perm_from_piv(piv)
    return LUFactors(lu, piv, perm, r, growth)


def _right_looking(lu: torch.Tensor, r: Rounder, fma: bool) -> torch.Tensor:
    """Factor ``lu`` in place (float64, values of the format); returns LAPACK-style pivots."""
    n = lu.shape[0]
    piv = torch.empty(n, dtype=torch.int64)
    for k in range(n):
        p = k + int(torch.argmax(lu[k:, k].abs()))
        piv[k] = p
        if lu[p, k] == 0:
            raise SingularMatrixError(
                f"zero pivot at step {k} (column {k} is zero on and below the diagonal after "
                f"{k} elimination steps in {r.name!r}): the matrix is singular"
                + ("" if r.identity else f", or singular to {r.name} precision; try a wider format "
                   "or scale the matrix (floatlab.linalg.squeeze)"))
        if p != k:
            lu[[k, p]] = lu[[p, k]]
        if k == n - 1:
            break
        l = r(lu[k + 1:, k] / lu[k, k])
        lu[k + 1:, k] = l
        urow = lu[k, k + 1:]
        block = lu[k + 1:, k + 1:]
        if fma:
            lu[k + 1:, k + 1:] = _fused_update(r, block, l, urow)
        else:
            prod = r(l[:, None] * urow[None, :])
            lu[k + 1:, k + 1:] = _sub(r, block, prod)
        if not bool(torch.isfinite(lu[k + 1:, k:]).all()):
            raise FloatingPointError(
                f"the factorization overflowed in {r.name!r} at step {k} (growth beyond "
                f"{r.spec.max_value:.6g}); scale the matrix (floatlab.linalg.squeeze) or pass "
                "saturate=True")
    return piv


def _sub(r: Rounder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``fl(a - b)`` rounded as the exact difference (every mode: see ``Rounder.round_exact``)."""
    if r.identity:
        return a - b
    s, e = two_sum(a, -b)
    return r.round_exact(s, e)


def _fused_update(r: Rounder, a, l, u):
    p, pe = two_product(l[:, None].expand_as(a), u[None, :].expand_as(a))
    if r.identity:
        return a - p
    s, se = two_sum(a, -p)
    # a - l*u = s + se - pe; the residual -pe + se is tiny next to s
    return r.round_exact(s, se - pe)


def _perm_from_piv(piv: torch.Tensor) -> torch.Tensor:
    perm = list(range(len(piv)))
    for i, p in enumerate(piv.tolist()):
        perm[i], perm[p] = perm[p], perm[i]
    return torch.tensor(perm, dtype=torch.int64)


def lu_solve(factors: LUFactors, b: torch.Tensor, rounder: Rounder | None = None) -> torch.Tensor:
    """Solve ``A x = b`` with the factors, every operation rounded (default: the factors' format).

    ``b`` (float tensor of shape (n,) or (n, k)) is rounded into the format first. No scaling is
    applied here: :func:`floatlab.linalg.refine` scales right-hand sides into range. Returns
    float64 values of the format, the shape of ``b``.

    Raises:
        ValueError: ``b`` has the wrong length or holds NaN/Inf.
    """
    r = factors.rounder if rounder is None else rounder
    if not isinstance(b, torch.Tensor) or not b.is_floating_point():
        raise TypeError("b must be a floating torch.Tensor")
    if b.shape[0] != factors.n or b.dim() not in (1, 2):
        raise ValueError(f"b must have shape ({factors.n},) or ({factors.n}, k), got {tuple(b.shape)}")
    _check_finite_rhs(b)
    lu = factors.lu
    x = r(b.detach().to(torch.float64)[factors.perm]).clone()
    vec = x.dim() == 1
    if vec:
        x = x[:, None]
    n = factors.n
    for j in range(n - 1):          # L y = P b (unit diagonal)
        prod = r(lu[j + 1:, j, None] * x[j][None, :])
        x[j + 1:] = _sub(r, x[j + 1:], prod)
    for j in range(n - 1, -1, -1):  # U x = y
        x[j] = r(x[j] / lu[j, j])
        if j:
            prod = r(lu[:j, j, None] * x[j][None, :])
            x[:j] = _sub(r, x[:j], prod)
    return x[:, 0] if vec else x
