"""floatlab.linalg: LU with every operation rounded, scaling, GMRES, LU-IR and GMRES-IR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab
from floatlab.linalg import (SingularMatrixError, factorize, gmres, lu_factor, lu_ir, lu_solve, randsvd,
                             refine, squeeze)

scipy_linalg = pytest.importorskip("scipy.linalg")


def _matrix(n, kappa, seed):
    return randsvd(n, kappa, generator=torch.Generator().manual_seed(seed))


def numpy_right_looking(a: np.ndarray):
    """The same algorithm in NumPy float64: an independent reference for the fp64 factors."""
    a = a.copy()
    n = a.shape[0]
    piv = np.zeros(n, dtype=np.int64)
    for k in range(n):
        p = k + int(np.argmax(np.abs(a[k:, k])))
        piv[k] = p
        a[[k, p]] = a[[p, k]]
        if k < n - 1:
            a[k + 1:, k] = a[k + 1:, k] / a[k, k]
            a[k + 1:, k + 1:] = a[k + 1:, k + 1:] - np.outer(a[k + 1:, k], a[k, k + 1:])
    return a, piv


def torch_right_looking(a: torch.Tensor):
    """Plain torch code, no floatlab: under floatlab.emulate every operation gets rounded."""
    a = a.clone()
    n = a.shape[0]
    for k in range(n):
        p = k + int(torch.argmax(a[k:, k].abs()))
        a[[k, p]] = a[[p, k]]
        if k < n - 1:
            a[k + 1:, k] = a[k + 1:, k] / a[k, k]
            a[k + 1:, k + 1:] = a[k + 1:, k + 1:] - a[k + 1:, k, None] * a[k, None, k + 1:]
    return a


def test_fp64_lu_equals_numpy_bit_for_bit_and_scipy_to_rounding():
    A = torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = lu_factor(A, "fp64")
    ref, piv = numpy_right_looking(A.numpy())
    assert np.array_equal(f.lu.numpy(), ref)
    lu_s, piv_s = scipy_linalg.lu_factor(A.numpy())
    assert np.array_equal(f.piv.numpy(), piv_s) and np.array_equal(piv, piv_s)
    scale = np.abs(np.tril(lu_s, -1) + np.eye(40)) @ np.abs(np.triu(lu_s))
    assert np.all(np.abs(f.lu.numpy() - lu_s) <= 1e-12 * scale.max())
    assert torch.allclose(f.L @ f.U, A[f.perm], atol=1e-12)


def test_lu_through_the_emulation_equals_scipy_in_fp64():
    A = torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with floatlab.emulate("fp64"):
        lu = torch_right_looking(A)
    lu_s, _ = scipy_linalg.lu_factor(A.numpy())
    assert np.allclose(lu.numpy(), lu_s, rtol=0, atol=1e-12)
    assert torch.equal(lu, lu_factor(A, "fp64").lu)


@pytest.mark.parametrize("fmt,rounding", [("fp16", "rne"), ("bf16", "rne"), ("bf16", "rtz"), ("e5m2", "rup")])
def test_lu_factor_equals_plain_lu_code_under_emulate(fmt, rounding):
    A = floatlab.quantize(_matrix(24, 1e2, seed=2).float(), fmt, rounding)   # A stored in fmt
    with floatlab.emulate(fmt, rounding=rounding):
        lu = torch_right_looking(A)
    f = lu_factor(A, fmt, rounding)
    assert torch.equal(lu.double(), f.lu)


def test_factors_are_values_of_the_format_and_accurate():
    A = _matrix(50, 1e2, seed=3)
    f = lu_factor(A, "fp16")
    assert torch.equal(floatlab.quantize(f.lu, "fp16"), f.lu)
    err = (f.L @ f.U - floatlab.quantize(A, "fp16")[f.perm]).abs().max()
    bound = 50 * 2.0 ** -11 * (f.L.abs() @ f.U.abs()).max()
    assert 0 < err <= bound


def test_stochastic_rounding_factorization_is_reproducible():
    A = _matrix(20, 10, seed=4)
    f1 = lu_factor(A, "bf16", "sr", generator=torch.Generator().manual_seed(7))
    f2 = lu_factor(A, "bf16", "sr", generator=torch.Generator().manual_seed(7))
    f3 = lu_factor(A, "bf16", "sr", generator=torch.Generator().manual_seed(8))
    assert torch.equal(f1.lu, f2.lu) and not torch.equal(f1.lu, f3.lu)


def test_lu_solve_every_operation_rounded():
    A = _matrix(30, 10, seed=5)
    b = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    f64 = lu_factor(A, "fp64")
    x = lu_solve(f64, b)
    assert torch.allclose(x, torch.from_numpy(scipy_linalg.lu_solve(scipy_linalg.lu_factor(A.numpy()), b.numpy())),
                          rtol=1e-12, atol=1e-13)
    f16 = lu_factor(A, "fp16")
    x16 = lu_solve(f16, b)
    assert torch.equal(floatlab.quantize(x16, "fp16"), x16)
    assert (x16 - x).abs().max() / x.abs().max() < 0.05


def test_squeeze_scaling_is_exact_and_fits():
    A = _matrix(20, 10, seed=6) * 1e6
    with pytest.raises(FloatingPointError, match="does not fit"):
        lu_factor(A, "fp16")
    s = squeeze(A, "fp16")
    As = s.apply(A)
    for v in (s.row, s.col, torch.tensor(s.mu)):
        assert torch.equal(torch.exp2(torch.log2(v).round()), v.double())
    assert As.abs().max() <= 0.1 * 65504
    assert (As.abs().amax(1) >= s.mu).all() and (As.abs().amax(0) >= s.mu).all()
    f = factorize(A, "fp16", scaling="squeeze")
    assert f.mu == s.mu


def test_lu_ir_converges_when_kappa_uf_small_and_stagnates_when_large():
    n = 60
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(n, dtype=torch.float64, generator=g)
    A = _matrix(n, 10, seed=10)
    res = lu_ir(A, A @ xt, "fp16", x_true=xt)
    assert res.status == "converged" and res.iterations <= 6
    assert res.backward_errors[-1] <= 2 * 2.0 ** -53 < res.backward_errors[0]
    assert res.forward_errors[-1] < 1e-14
    A = _matrix(n, 1e7, seed=11)              # kappa * u_f = 5000 >> 1
    res = lu_ir(A, A @ xt, "fp16", scaling="squeeze")
    assert res.status in ("stagnated", "diverged")
    assert min(res.backward_errors) > 1e-10
    # GMRES-IR reaches it
    res = refine(A, A @ xt, "fp16", method="gmres-ir", scaling="squeeze")
    assert res.status == "converged" and res.gmres_iterations


def test_fp32_working_precision():
    n = 40
    A = _matrix(n, 100, seed=12)
    xt = torch.ones(n, dtype=torch.float64)
    res = lu_ir(A, A @ xt, "fp16", working="fp32", x_true=xt)
    assert res.status == "converged"
    assert res.backward_errors[-1] <= 2 * 2.0 ** -24
    assert torch.equal(res.x.float().double(), res.x)
    with pytest.raises(ValueError, match="at least the working"):
        lu_ir(A, A @ xt, "fp16", working="fp64", residual="fp32")


def test_gmres_solves_a_system():
    g = torch.Generator().manual_seed(13)
    A = torch.randn(30, 30, dtype=torch.float64, generator=g) + 10 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, dtype=torch.float64, generator=g)
    res = gmres(lambda v: A @ v, b, tol=1e-12)
    assert res.converged and res.iterations < 30
    assert torch.allclose(res.x, torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)


def test_bad_input():
    A = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(SingularMatrixError, match="zero pivot at step 2"):
        lu_factor(A, "fp64")
    with pytest.raises(SingularMatrixError, match="step 0"):
        lu_factor(torch.zeros(3, 3), "fp16")
    with pytest.raises(ValueError, match="non-finite"):
        lu_factor(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "fp16")
    with pytest.raises(ValueError, match="square"):
        lu_factor(torch.ones(2, 3), "fp16")
    with pytest.raises(ValueError, match="unknown format"):
        lu_factor(torch.eye(3), "fp13")
    with pytest.raises(TypeError, match="real floating"):
        lu_factor(torch.eye(3, dtype=torch.int64), "fp16")
    with pytest.raises(ValueError, match="shape"):
        refine(torch.eye(3), torch.ones(4), "fp16")
    with pytest.raises(ValueError, match="method"):
        refine(torch.eye(3), torch.ones(3), "fp16", method="cg")
    with pytest.raises(ValueError, match="singular"):
        squeeze(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "fp16")
    with pytest.raises(ValueError, match="kappa"):
        randsvd(4, 0.5)
