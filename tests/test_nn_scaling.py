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


def test_amax_of_zeros_is_positive_zero():
    for v in ([-0.0], [0.0, -0.0], [-0.0] * 5000):
        assert not torch.signbit(amax(torch.tensor(v)))


def test_pow2_scale_value_is_the_tensor_version_exactly():
    """The Python-float scale (used on CPU in training) equals pow2_scale on edge cases: ratios
    that are powers of two and their float32 neighbours, zero, subnormals, inf, NaN, clamps."""
    from floatlab.nn.scaling import pow2_scale, pow2_scale_value
    vals = [0.0, -0.0, INF, NAN, 1e-45, 1.17549435e-38, 3.4028235e38]
    for target in (448.0, 57344.0, 127.0, 7.0, 2.0 ** 7, 6.0):
        for k in range(-150, 140, 7):
            v = torch.tensor(target * 2.0 ** k, dtype=torch.float32).view(torch.int32)
            vals += [float((v + d).view(torch.float32)) for d in (-1, 0, 1)]
    for target in (448.0, 57344.0, 127.0, 7.0, 2.0 ** 7, 6.0):
        for a in vals:
            want = float(pow2_scale(torch.tensor(a, dtype=torch.float32), target))
            assert pow2_scale_value(float(torch.tensor(a, dtype=torch.float32)), target) == want


def test_delayed_amax_and_push_is_delayed_amax_then_push():
    from floatlab.nn.scaling import delayed_amax, delayed_amax_and_push, push
    for hist in ([0.0] * 4, [2.0, 0.0, 0.0, 0.0], [1.0, 5.0, 3.0, 0.5], [1.0, NAN, 3.0, 0.5]):
        for cur in (0.0, 4.0, 7.25):
            h1, h2 = torch.tensor(hist), torch.tensor(hist)
            c = torch.tensor(cur)
            want = delayed_amax(h1, c)
            push(h1, c)
            got = delayed_amax_and_push(h2, c)
            assert torch.equal(h1, h2) or torch.allclose(h1, h2, rtol=0, atol=0, equal_nan=True)
            assert got == float(want) or (got != got and float(want) != float(want))


def test_delayed_amax_and_push_takes_a_python_float_as_its_float32_value():
    from floatlab.nn.scaling import delayed_amax_and_push
    for hist in ([0.0] * 4, [1.0, 5.0, 3.0, 0.5], [1.0, NAN, 3.0, 0.5]):
        for cur in (0.0, 4.0, 1.0 + 2.0 ** -30, 3.4e38, 1e-45):    # the last three round in float32
            h1, h2 = torch.tensor(hist), torch.tensor(hist)
            want = delayed_amax_and_push(h1, torch.tensor(cur, dtype=torch.float64))
            got = delayed_amax_and_push(h2, cur)
            assert torch.equal(h1.view(torch.int32), h2.view(torch.int32))
            assert got == want or (got != got and want != want)
