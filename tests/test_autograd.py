"""The autograd contract of floatlab.quantize (floatlab.ops.autograd): a straight-through
gradient for every format, backend and dtype; a clipped variant; an explicit way to turn it off."""

from __future__ import annotations

import pytest
import torch

import floatlab
from floatlab.kernels.dispatch import FastPathUnsupported
from floatlab.nn.quantizer import fake_quantize

SCALAR = ["e4m3", "e5m2", "hif8", "bf16", "fp16", "int8", "int4", "e2m1", "e3m2", "ue4m3", "e8m0"]
BLOCK = ["mxfp4", "mxfp8_e4m3", "mxint8", "nvfp4", "nvfp4_46", "nvfp4_2d", "hif4"]
BACKENDS = ["plain", "eager", "auto"]


def _same(a, b):
    """Equal values, NaN where the other is NaN."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _x(dtype=torch.float32, seed=0, shape=(4, 64)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", SCALAR + BLOCK)
def test_ste_gradient_is_the_upstream_gradient(fmt, backend):
    x0 = _x()
    try:
        expected = floatlab.quantize(x0, fmt, backend=backend)
    except FastPathUnsupported:
        pytest.skip(f"{fmt} has no fused kernel")
    x = x0.clone().requires_grad_()
    y = floatlab.quantize(x, fmt, backend=backend)
    assert y.requires_grad
    assert _same(y.detach(), expected)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fmt", ["e4m3", "hif8", "mxfp4", "nvfp4", "hif4"])
def test_ste_for_every_input_dtype(fmt, dtype):
    x = _x(dtype).requires_grad_()
    y = floatlab.quantize(x, fmt)
    assert y.dtype == dtype
    y.sum().backward()
    assert x.grad.dtype == dtype and torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("fmt", ["e4m3", "mxfp4", "hif4"])
def test_values_with_grad_equal_values_without(fmt):
    x = _x()
    for rounding in (None, "rtz", "sr"):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = floatlab.quantize(x.clone().requires_grad_(), fmt, rounding, generator=g1).detach()
        b = floatlab.quantize(x, fmt, rounding, generator=g2)
        assert _same(a, b)


def test_grad_none_detaches_and_no_grad_mode_records_nothing():
    x = _x().requires_grad_()
    assert not floatlab.quantize(x, "e4m3", grad="none").requires_grad
    assert not floatlab.quantize(x, "mxfp4", grad="none").requires_grad
    with torch.no_grad():
        assert not floatlab.quantize(x, "e4m3").requires_grad
    assert not floatlab.quantize(x.detach(), "e4m3").requires_grad


def test_clipped_ste_on_scalar_formats_by_hand():
    # e4m3 holds [-448, 448]; int4 [-8, 7]; an unsigned format nothing below 0
    x = torch.tensor([-500.0, -448.0, 0.3, 448.0, 449.0, 1000.0, float("nan"), float("inf")],
                     requires_grad=True)
    floatlab.quantize(x, "e4m3", grad="clipped", saturate=True).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    x = torch.tensor([-8.5, -8.0, 7.0, 7.4, 8.0, 0.2], requires_grad=True)
    floatlab.quantize(x, "int4", grad="clipped").sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 0, 0, 1]
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    floatlab.quantize(x, "ue4m3", grad="clipped").sum().backward()
    assert x.grad.tolist() == [0, 1, 1]


def test_clipped_ste_on_an_ocp_block_by_hand():
    # MXFP4, OCP FLOOR: amax 7 -> X = 2^(floor(log2 7) - 2) = 1, elements hold |v| <= 6, so 7 is clipped
    v = torch.zeros(32)
    v[:4] = torch.tensor([7.0, 6.0, -6.5, 0.5])
    x = v.clone().requires_grad_()
    y = floatlab.quantize(x, "mxfp4", grad="clipped")
    assert y.detach()[:4].tolist() == [6.0, 6.0, -6.0, 0.5]
    y.sum().backward()
    assert x.grad[:4].tolist() == [0, 1, 0, 1] and bool((x.grad[4:] == 1).all())


@pytest.mark.parametrize("fmt", BLOCK)
def test_clipped_block_gradient_stops_exactly_where_the_element_was_clamped(fmt):
    x0 = _x(shape=(16, 64)) ** 3          # heavy tails: some blocks clip under FLOOR/AMAX scales
    x = x0.clone().requires_grad_()
    y = floatlab.quantize(x, fmt, grad="clipped")
    assert torch.equal(y.detach(), floatlab.quantize(x0, fmt, backend="plain"))
    y.sum().backward()
    stopped = x.grad == 0
    assert bool((x.grad[~stopped] == 1).all())
    # no gradient -> the element lost magnitude to the clamp; gradient -> it was representable
    # within its block: rounding moved it by at most one step of its block, never past the max
    assert bool((y.detach().abs()[stopped] < x0.abs()[stopped]).all())


def test_lsq_scale_gradient_through_the_clipped_ste():
    # y = q(x/s) * s, int4 clipped STE: dy/ds = q - x/s inside [-8, 7], q (= +-max) outside (LSQ)
    x = torch.tensor([0.3, 1.0, 20.0, -20.0])
    s = torch.tensor(0.5, requires_grad=True)
    y = floatlab.quantize(x / s, "int4", grad="clipped") * s
    y.sum().backward()
    v = (x / 0.5)                                    # 0.6, 2, 40, -40
    q = torch.tensor([1.0, 2.0, 7.0, -8.0])
    expected = torch.where((v >= -8) & (v <= 7), q - v, q).sum()
    assert torch.allclose(s.grad, expected)


def test_out_refuses_a_gradient_with_a_clear_error():
    x = _x().requires_grad_()
    with pytest.raises(ValueError, match="out= cannot record a gradient"):
        floatlab.quantize(x, "e4m3", out=torch.empty_like(x))
    out = torch.empty_like(x)
    floatlab.quantize(x, "e4m3", out=out, grad="none")
    assert torch.equal(out, floatlab.quantize(x.detach(), "e4m3"))


def test_bad_grad_value():
    with pytest.raises(ValueError, match="grad must be one of"):
        floatlab.quantize(_x(), "e4m3", grad="straight")


def test_gradient_through_torch_compile():
    f = torch.compile(lambda t: floatlab.quantize(t, "e4m3") * 2, backend="eager", fullgraph=False)
    x = _x().requires_grad_()
    f(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "e4m3", "e5m2", "hif8", "mxfp4"])
def test_training_fake_quantize_follows_the_contract(fmt):
    """nn's fake_quantize takes native torch casts for some formats: same gradients."""
    x = (_x() * 100).requires_grad_()
    y = fake_quantize(x, fmt)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x2 = (_x() * 100).requires_grad_()
    fake_quantize(x2, fmt, grad="clipped").sum().backward()
    if fmt in ("e4m3", "e5m2", "hif8"):
        fi = floatlab.finfo(fmt)
        assert torch.equal(x2.grad, ((x2 >= -fi.max) & (x2 <= fi.max)).float())
