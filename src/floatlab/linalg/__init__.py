"""Mixed-precision linear algebra: LU with every operation rounded, and iterative refinement.

>>> import torch
>>> from floatlab.linalg import randsvd, refine
>>> A = randsvd(60, 1e2, generator=torch.Generator().manual_seed(0))
>>> x_true = torch.ones(60, dtype=torch.float64)
>>> res = refine(A, A @ x_true, "fp16", method="lu-ir")        # u_f = fp16, u = u_r = fp64
>>> res.status, res.iterations < 10                            # kappa u_f = 0.05: a few steps
('converged', True)
>>> res = refine(A, A @ x_true, "fp16", method="gmres-ir", scaling="squeeze")
>>> res.status, res.iterations <= 3, sum(res.gmres_iterations) < 20
('converged', True, True)

* :func:`lu_factor`, :func:`lu_solve`: LU with partial pivoting and triangular solves, every
  operation rounded to a floatlab format (``"fp16"``, ``"bf16"``, ``"e4m3"``, ..., ``"fp64"``).
* :func:`squeeze`: two-sided diagonal scaling before a low-precision factorization.
* :func:`refine` (``lu_ir``, ``gmres_ir``): Carson-Higham iterative refinement with precisions
  ``u_f`` (factorization), ``u`` (working) and ``u_r`` (residual); :func:`gmres`.
* :func:`randsvd`: test matrices of a given condition number.
* :mod:`floatlab.linalg.study`: the refinement study behind ``floatlab solve``.

See ``docs/numerics.md``.
"""

from .gmres import GMRESResult, gmres
from .lu import LUFactors, SingularMatrixError, lu_factor, lu_solve
from .matrices import randsvd, random_orthogonal
from .refine import METHODS, RefinementResult, factorize, gmres_ir, lu_ir, refine, solve_low
from .scaling import Scaling, squeeze

__all__ = ["GMRESResult", "LUFactors", "METHODS", "RefinementResult", "Scaling", "SingularMatrixError",
           "factorize", "gmres", "gmres_ir", "lu_factor", "lu_ir", "lu_solve", "randsvd",
           "random_orthogonal", "refine", "solve_low", "squeeze"]
