"""Left-preconditioned GMRES in one IEEE precision (float32 or float64), written out.

Every operation is ordinary torch arithmetic in the given dtype (no emulation): the precision is
that of ``dtype``. Arnoldi uses classical Gram-Schmidt reorthogonalized once (CGS2, as stable as
modified Gram-Schmidt and vectorized), the least-squares problem is updated with Givens rotations,
the initial guess is zero, and there is no restart. It stops when the preconditioned residual
``||M^-1 (b - A x_k)||_2 <= tol * ||M^-1 b||_2`` (from the Givens recurrence) or after ``max_iter``
steps.

Sources: GMRES, Saad and Schultz, "GMRES: A Generalized Minimal Residual Algorithm for Solving
Nonsymmetric Linear Systems", SIAM J. Sci. Stat. Comput. 7(3), 1986 (Givens update of the
Hessenberg least-squares problem, Section 3); CGS2, Giraud, Langou and Rozloznik, "The loss of
orthogonality in the Gram-Schmidt orthogonalization process", Comput. Math. Appl. 50, 2005. Its
use inside GMRES-IR follows Carson and Higham, SIAM J. Sci. Comput. 40(2), 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GMRESResult:
    x: torch.Tensor
    iterations: int
    relres: float          # final preconditioned relative residual (recurrence)
    converged: bool


def gmres(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *,
          precond: Callable[[torch.Tensor], torch.Tensor] | None = None, tol: float = 1e-6,
          max_iter: int | None = None, dtype: torch.dtype = torch.float64) -> GMRESResult:
    """Solve ``M^-1 A x = M^-1 b`` (``matvec(v) = A v``, ``precond(v) = M^-1 v``) in ``dtype``:
    GMRES (Saad and Schultz, SIAM J. Sci. Stat. Comput. 7(3), 1986) with CGS2 Arnoldi, Givens
    rotations, a zero initial guess and no restart (the module docstring has the details).

    Args:
        matvec: ``v -> A v`` on (n,) tensors of ``dtype``.
        b: (n,) right-hand side.
        precond: ``v -> M^-1 v`` (``None``: identity).
        tol: relative tolerance on the preconditioned residual.
        max_iter: Krylov dimension limit (default n).
        dtype: torch.float32 or torch.float64: the precision of every GMRES operation.

    Returns:
        :class:`GMRESResult` (``x`` of ``dtype``). A zero ``M^-1 b`` gives ``x = 0``, converged; a
        non-finite one gives ``x = 0``, not converged, ``relres`` NaN.

    Raises:
        ValueError: ``dtype`` other than float32/float64, ``b`` not a 1-D tensor, ``tol`` not
            positive.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"GMRES runs in float32 or float64, got {dtype}")
    if not isinstance(b, torch.Tensor) or b.dim() != 1:
        raise ValueError(f"b must be a 1-D tensor (n,), got "
                         f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    pre = precond if precond is not None else (lambda v: v)
    b = b.to(dtype)
    n = b.shape[0]
    m = n if max_iter is None else max(1, min(int(max_iter), n))
    r0 = pre(b).to(dtype)
    beta = float(torch.linalg.vector_norm(r0))
    if beta == 0 or not math.isfinite(beta):
        return GMRESResult(torch.zeros(n, dtype=dtype), 0, 0.0 if beta == 0 else math.nan, beta == 0)
    V = torch.zeros(m + 1, n, dtype=dtype)
    H = torch.zeros(m + 1, m, dtype=dtype)
    g = torch.zeros(m + 1, dtype=dtype)
    cs = torch.zeros(m, dtype=dtype)
    sn = torch.zeros(m, dtype=dtype)
    V[0] = r0 / beta
    g[0] = beta
    k = 0
    relres = 1.0
    for j in range(m):
        w = pre(matvec(V[j])).to(dtype)
        basis = V[: j + 1]
        h = basis @ w
        w = w - basis.T @ h
        h2 = basis @ w                      # second pass (CGS2)
        w = w - basis.T @ h2
        h = h + h2
        hn = torch.linalg.vector_norm(w)
        H[: j + 1, j] = h
        H[j + 1, j] = hn
        if hn != 0:
            V[j + 1] = w / hn
        for i in range(j):                  # previous rotations
            a, c = H[i, j].clone(), H[i + 1, j].clone()
            H[i, j] = cs[i] * a + sn[i] * c
            H[i + 1, j] = -sn[i] * a + cs[i] * c
        a, c = H[j, j], H[j + 1, j]
        rho = torch.sqrt(a * a + c * c)
        if rho == 0:
            cs[j], sn[j] = 1.0, 0.0
        else:
            cs[j], sn[j] = a / rho, c / rho
        H[j, j] = rho
        H[j + 1, j] = 0.0
        g[j + 1] = -sn[j] * g[j]
        g[j] = cs[j] * g[j]
        k = j + 1
        relres = float(abs(g[j + 1])) / beta
        if relres <= tol or hn == 0:
            break
    y = torch.linalg.solve_triangular(H[:k, :k], g[:k, None], upper=True)[:, 0]
    x = V[:k].T @ y
    return GMRESResult(x, k, relres, relres <= tol)
