"""nn.scaling.amax: the largest finite magnitude, whatever non-finite values, dtypes or sizes
(its one-pass fast path must agree with the masked definition)."""

import pytest
import torch

from floatlab.nn.scaling import amax

INF, NAN = float("inf"), float("nan")


def _definition(x):
    a = x.abs()
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    return a.amax() if a.numel() else torch.zeros((), dtype=x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("values", [[1.0, -7.5, 3.0], [1.0, INF, -3.0], [NAN, -2.0], [NAN, -INF], [], [-0.0], [-5.0]])
def test_amax_is_the_largest_finite_magnitude(dtype, values):
    x = torch.tensor(values, dtype=dtype)
    got, want = amax(x), _definition(x)
    assert got.dtype == dtype and got.shape == () and torch.equal(got, want)
    assert torch.equal(amax(x.reshape(-1, 1)), want)
