"""Mixed-precision iterative refinement: LU-IR and GMRES-IR in three precisions.

Carson & Higham, *Accelerating the solution of linear systems by iterative refinement in three
precisions*, SIAM J. Sci. Comput. 40(2), 2018: the factorization precision ``u_f``, the working
precision ``u`` (the solution is stored in it), and the residual precision ``u_r``:

1. factor ``A`` (optionally scaled, :func:`floatlab.linalg.squeeze`) in ``u_f``:
   :func:`floatlab.linalg.lu_factor`, every operation rounded;
2. ``x_0``: solve ``A x = b`` with the factors in ``u_f`` (every operation rounded, right-hand side
   scaled into range by a power of two), stored in ``u``;
3. repeat: ``r_i = b - A x_i`` computed in ``u_r`` and rounded to ``u``; the correction ``d_i`` solves
   ``A d = r_i``; ``x_{i+1} = fl_u(x_i + d_i)``.

The correction solve is what tells the two methods apart:

* **LU-IR**: ``d_i`` from the LU factors in ``u_f`` (triangular solves with every operation rounded
  to ``u_f``, as in Carson & Higham's Algorithm 1.1). Theory: converges while ``kappa(A) u_f`` is
  well below 1.
* **GMRES-IR**: ``d_i`` from GMRES on the left-preconditioned system ``U^-1 L^-1 P A d = U^-1 L^-1 P
  r_i`` (:func:`floatlab.linalg.gmres`). In Carson & Higham the preconditioned product is applied
  in ``u^2``; here every GMRES operation and the preconditioner (triangular solves with the ``u_f``
  factors' values) run in the working precision ``u``, the variant of Amestoy, Buttari, Higham,
  L'Excellent, Mary and Vieuble (2021) with ``u_g = u_p = u``. Theory: reaches condition numbers
  around ``u^-1/2 u_f^-1`` and beyond, since the preconditioned matrix has condition number
  about ``(1 + kappa u_f)^2``.

Precisions: ``u`` and ``u_r`` are ``"fp64"`` (torch.float64) or ``"fp32"`` (torch.float32), with
``u_r`` at least as precise as ``u``; ``u_f`` is any scalar floatlab format.

Stopping (the same for both methods), on the normwise backward error
``eta = ||b - A x||_inf / (||A||_inf ||x||_inf + ||b||_inf)`` of the ``u_r`` residual:

* **converged** once ``eta <= tol`` (default ``tol = 2 u``, twice the unit roundoff of ``u``: about
  what a backward-stable solver in ``u`` reaches);
* **diverged** if ``eta`` is not finite or exceeds 10 times its starting value (or 1);
* **stagnated** if three consecutive steps fail to bring ``eta`` below 0.9 times its best value so
  far (progress slower than that would need far more steps than the theory's rate);
* **max_iter** otherwise after ``max_iter`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from floatlab.emulation.rounding import resolve_format

from .gmres import gmres
from .lu import LUFactors, _check_finite_rhs, _check_matrix, lu_factor, lu_solve
from .scaling import squeeze

PRECISIONS = {"fp64": torch.float64, "fp32": torch.float32}
UNIT_ROUNDOFF = {"fp64": 2.0 ** -53, "fp32": 2.0 ** -24}
METHODS = ("lu-ir", "gmres-ir")


@dataclass
class RefinementResult:
    """Outcome of one refinement run.

    Attributes:
        x: (n,) float64 solution (values of the working precision).
        status: ``"converged"``, ``"stagnated"``, ``"diverged"`` or ``"max_iter"``.
        iterations: refinement steps taken (corrections applied).
        backward_errors: ``eta`` of ``x_0, x_1, ...``.
        forward_errors: ``||x_i - x_true||_inf / ||x_true||_inf`` when ``x_true`` was given.
        gmres_iterations: GMRES steps of each correction (GMRES-IR; empty for LU-IR).
        method, u_f, u, u_r: the setting; ``factors``: the LU factors used.
    """

    x: torch.Tensor
    status: str
    iterations: int
    backward_errors: list[float]
    forward_errors: list[float] | None
    gmres_iterations: list[int]
    method: str
    u_f: str
    u: str
    u_r: str
    factors: LUFactors | None = field(default=None, repr=False)

    @property
    def converged(self) -> bool:
        return self.status == "converged"


def _precision(name, what):
    if name not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, PRECISIONS))}, got {name!r}")
    return name


def default_scaling(fmt) -> str | None:
    """``"squeeze"`` for formats with less range than fp32 (fp16, fp8, ...), else None: what
    ``scaling="auto"`` picks."""
    return "squeeze" if resolve_format(fmt).max_value < 1e30 else None


def factorize(A: torch.Tensor, fmt="fp16", *, scaling: str | None = None, theta: float = 0.1,
              rounding=None, saturate=None, generator=None, retries: int = 3) -> LUFactors:
    """``lu_factor`` of ``A``, after the two-sided scaling when ``scaling="squeeze"``.

    With scaling, an overflow during the factorization (element growth beyond the format's
    range) is retried with ``theta`` divided by 8, up to ``retries`` times (Higham, Pranesh and
    Zounon choose ``theta = 0.1``; growth of partial pivoting on larger random matrices needs
    more headroom). The returned factors carry the scaling (``row_scale``, ``col_scale``, ``mu``;
    ``meta["theta"]``), which :func:`refine` undoes in its solves.

    Raises:
        FloatingPointError: still overflowing after the retries (or without scaling).
        SingularMatrixError, ValueError, TypeError: as :func:`floatlab.linalg.lu_factor`.
    """
    _check_matrix(A)
    if scaling not in (None, "none", "squeeze", "auto"):
        raise ValueError(f"scaling must be None, 'none', 'squeeze' or 'auto', got {scaling!r}")
    if scaling == "auto":
        scaling = default_scaling(fmt)
    if scaling != "squeeze":
        f = lu_factor(A.detach().to(torch.float64), fmt, rounding, saturate=saturate, generator=generator)
        f.meta["theta"] = None
        return f
    for attempt in range(retries + 1):
        sc = squeeze(A, fmt, theta)
        try:
            f = lu_factor(sc.apply(A), fmt, rounding, saturate=saturate, generator=generator)
        except FloatingPointError:
            if attempt == retries:
                raise
            theta /= 8
            continue
        f.row_scale, f.col_scale, f.mu = sc.row, sc.col, sc.mu
        f.meta["theta"] = theta
        return f
    raise AssertionError("unreachable")


def _pow2_scale(v: torch.Tensor) -> float:
    m = float(v.abs().max())
    if m == 0 or not math.isfinite(m):
        return 1.0
    return 2.0 ** math.floor(math.log2(m))


def solve_low(factors: LUFactors, r: torch.Tensor) -> torch.Tensor:
    """``A^-1 r`` with the factors in their own precision (every operation rounded), float64.

    Applies the factors' scaling: ``d = S (LU)^-1 (mu R r)``; the right-hand side is scaled by a
    power of two into ``[1, 2)`` first (and the result back), so neither underflows in ``u_f``.
    """
    c = r.to(torch.float64)
    if factors.row_scale is not None:
        c = factors.mu * factors.row_scale * c
    s = _pow2_scale(c)
    y = lu_solve(factors, c / s) * s
    if factors.col_scale is not None:
        y = factors.col_scale * y
    return y


def _preconditioner(factors: LUFactors, dtype: torch.dtype):
    """``v -> M^-1 v`` in ``dtype`` with the factors' values (triangular solves in ``dtype``)."""
    L = factors.L.to(dtype)
    U = factors.U.to(dtype)
    perm = factors.perm
    row = None if factors.row_scale is None else (factors.mu * factors.row_scale).to(dtype)
    col = None if factors.col_scale is None else factors.col_scale.to(dtype)

    def apply(v: torch.Tensor) -> torch.Tensor:
        c = v.to(dtype)
        if row is not None:
            c = row * c
        c = c[perm][:, None]
        y = torch.linalg.solve_triangular(L, c, upper=False, unitriangular=True)
        y = torch.linalg.solve_triangular(U, y, upper=True)[:, 0]
        return col * y if col is not None else y

    return apply


def refine(A: torch.Tensor, b: torch.Tensor, fmt="fp16", *, method: str = "lu-ir",
           working: str = "fp64", residual: str = "fp64", rounding=None, saturate=None,
           scaling: str | None = None, theta: float = 0.1, factors: LUFactors | None = None,
           tol: float | None = None, max_iter: int | None = None, gmres_tol: float = 1e-6,
           gmres_max_iter: int | None = None, x_true: torch.Tensor | None = None) -> RefinementResult:
    """Solve ``A x = b`` by LU-IR or GMRES-IR with ``u_f = fmt`` (Carson and Higham, SIAM J. Sci.
    Comput. 40(2), 2018; GMRES-IR as Amestoy et al. 2021 with ``u_g = u_p = u``: the module
    docstring gives the steps and the stopping rules).

    Args:
        A: (n, n) finite float tensor; b: (n,) finite float tensor.
        fmt: the factorization precision ``u_f`` (``"fp16"``, ``"bf16"``, ``"e4m3"``, ...).
        method: ``"lu-ir"`` or ``"gmres-ir"``.
        working: ``u``, ``"fp64"`` or ``"fp32"``. residual: ``u_r``, ``"fp64"`` or ``"fp32"``.
        rounding, saturate: of the factorization (and of the ``u_f`` solves).
        scaling: ``None``/``"none"``, ``"squeeze"`` (two-sided diagonal scaling, then
            ``mu = theta x_max``) or ``"auto"`` (squeeze for formats with less range than fp32,
            as ``floatlab solve`` does by default).
        factors: reuse factors from :func:`factorize` (then ``fmt``/``scaling`` are taken from them).
        tol: backward-error target (default ``2 u``).
        max_iter: refinement steps (default 100 for LU-IR, which converges slowly when
            ``kappa u_f`` approaches 1, and 20 for GMRES-IR); stagnation ends hopeless runs early.
        gmres_tol, gmres_max_iter: GMRES's relative tolerance and Krylov limit (default n).
        x_true: the exact solution, to record forward errors.

    Returns:
        :class:`RefinementResult`.

    Raises:
        ValueError: non-square/non-finite ``A``, wrong-size or non-finite ``b``, unknown format,
            method or precision, ``u_r`` less precise than ``u``.
        SingularMatrixError: a zero pivot in ``u_f`` (the message names the step).
        FloatingPointError: the factorization overflowed in ``u_f`` (try ``scaling="squeeze"``).
    """
    _check_matrix(A)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    _precision(working, "working")
    _precision(residual, "residual")
    if UNIT_ROUNDOFF[residual] > UNIT_ROUNDOFF[working]:
        raise ValueError(f"the residual precision ({residual}) must be at least the working "
                         f"precision ({working})")
    n = A.shape[0]
    if not isinstance(b, torch.Tensor) or b.shape != (n,):
        raise ValueError(f"b must be a tensor of shape ({n},), got "
                         f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    _check_finite_rhs(b)
    if factors is None:
        factors = factorize(A, fmt, scaling=scaling, theta=theta, rounding=rounding, saturate=saturate)
    u_dtype, r_dtype = PRECISIONS[working], PRECISIONS[residual]
    u = UNIT_ROUNDOFF[working]
    tol = 2 * u if tol is None else tol
    if max_iter is None:
        max_iter = 100 if method == "lu-ir" else 20
    A64, b64 = A.detach().to(torch.float64), b.detach().to(torch.float64)
    A_r, b_r = A64.to(r_dtype), b64.to(r_dtype)
    A_u = A64.to(u_dtype)
    norm_a = float(A64.abs().sum(1).max())
    norm_b = float(b64.abs().max())
    xt = None if x_true is None else x_true.detach().to(torch.float64)

    def to_u(v):  # store in the working precision
        return v.to(u_dtype).to(torch.float64)

    def backward_error(x, r):
        den = norm_a * float(x.abs().max()) + norm_b
        return float(r.abs().max()) / den if den > 0 else 0.0

    def forward_error(x):
        return float((x - xt).abs().max() / xt.abs().max())

    precond = _preconditioner(factors, u_dtype) if method == "gmres-ir" else None
    x = to_u(solve_low(factors, b64))
    etas, fwd, inner = [], [] if xt is not None else None, []
    status = "max_iter"
    best = math.inf
    since_best = 0
    steps = 0
    while True:
        if not bool(torch.isfinite(x).all()):
            etas.append(math.inf)
            if fwd is not None:
                fwd.append(math.inf)
            status = "diverged"
            break
        r = (b_r - A_r @ x.to(r_dtype)).to(torch.float64)   # u_r, then stored in u
        r = to_u(r)
        eta = backward_error(x, r)
        etas.append(eta)
        if fwd is not None:
            fwd.append(forward_error(x))
        if eta <= tol:
            status = "converged"
            break
        if not math.isfinite(eta) or (len(etas) > 1 and eta > 10 * max(etas[0], 1e-300)) or eta > 1:
            status = "diverged"
            break
        if eta < 0.9 * best:
            best, since_best = eta, 0
        else:
            since_best += 1
            if since_best >= 3:
                status = "stagnated"
                break
        if steps >= max_iter:
            break
        if method == "lu-ir":
            d = solve_low(factors, r)
        else:
            res = gmres(lambda v: A_u @ v, r.to(u_dtype), precond=precond, tol=gmres_tol,
                        max_iter=gmres_max_iter, dtype=u_dtype)
            inner.append(res.iterations)
            d = res.x.to(torch.float64)
        x = to_u(x + to_u(d))
        steps += 1
    return RefinementResult(x, status, steps, etas, fwd, inner, method, factors.format, working,
                            residual, factors)


def lu_ir(A, b, fmt="fp16", **kwargs) -> RefinementResult:
    """:func:`refine` with ``method="lu-ir"``."""
    return refine(A, b, fmt, method="lu-ir", **kwargs)


def gmres_ir(A, b, fmt="fp16", **kwargs) -> RefinementResult:
    """:func:`refine` with ``method="gmres-ir"``."""
    return refine(A, b, fmt, method="gmres-ir", **kwargs)
