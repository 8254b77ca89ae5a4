"""The paper recipes: HiFloat8's per-role rounding and delayed scaling reach the right GEMM
operands (values checked against floatlab.quantize directly), its gradients overflow to Inf for
the loss scaler; MXFP4's truncation-free (RCEIL) preset never clips a block max."""

from __future__ import annotations

import pytest
import torch

import floatlab
from floatlab.nn import functional as qf
from floatlab.nn.modules import QLinear
from floatlab.nn.recipes import get_recipe
from floatlab.nn.scaling import pow2_scale


@pytest.fixture(autouse=True)
def _uncompiled(monkeypatch):
    # the reference path: the same numbers (tests/test_fast.py), without compiling kernels for
    # these small operands
    monkeypatch.setenv("FLOATLAB_FAST", "0")


def _spy(monkeypatch):
    calls = []
    real = qf.fake_quantize

    def spy(x, fmt, rounding=None, saturate=True, axis=-1, generator=None, native=True, grad="ste"):
        calls.append((fmt, rounding, saturate, tuple(x.shape)))
        return real(x, fmt, rounding, saturate, axis, generator, native, grad)
    monkeypatch.setattr(qf, "fake_quantize", spy)
    return calls


def _layer(recipe: str, n_in=64, n_out=32):
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    r = get_recipe(recipe)
    return QLinear.from_linear(lin, r.default, seed=3, amax_history=r.amax_history)


def _q(t, rounding, saturate):
    """Per-tensor power-of-two scaling to 2^7 (the history is empty on a first step, so the
    current amax), HiF8 with ``rounding``, unscaled: what each operand should be."""
    s = pow2_scale(t.abs().amax(), 2.0 ** 7)
    return floatlab.quantize(t * s, "hif8", rounding=rounding, saturate=saturate) / s


def test_hif8_paper_rounds_forward_tensors_ties_away_and_gradients_hybrid(monkeypatch):
    layer = _layer("hif8_paper")
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(16, 64, generator=g) * 3).requires_grad_(True)
    gy = torch.randn(16, 32, generator=g) * 1e-3
    y = layer(x)
    y.backward(gy)
    # the order of quantizations: fprop.a, fprop.b, dgrad.a, dgrad.b, wgrad.a, wgrad.b
    assert calls == [("hif8", "rna", True, (16, 64)), ("hif8", "rna", True, (64, 32)),
                     ("hif8", "hybrid", False, (16, 32)), ("hif8", "rna", True, (32, 64)),
                     ("hif8", "hybrid", False, (32, 16)), ("hif8", "rna", True, (16, 64))]
    w = layer.weight.detach()
    xd = x.detach()
    # the values: each GEMM's operands as floatlab.quantize gives them for that role
    assert torch.equal(y.detach(), _q(xd, "rna", True) @ _q(w.t(), "rna", True))
    assert torch.equal(x.grad, _q(gy, "hybrid", False) @ _q(w, "rna", True))
    assert torch.equal(layer.weight.grad, _q(gy.t(), "hybrid", False) @ _q(xd, "rna", True))
    # hybrid is not ties-away on these gradients (HR moves values with |E| >= 4 stochastically)
    s = pow2_scale(gy.abs().amax(), 2.0 ** 7)
    assert not torch.equal(_q(gy, "hybrid", False), _q(gy, "rna", False))
    assert bool((gy * s).abs().max() >= 16)


def test_hif8_paper_delayed_scaling_uses_the_history_and_overflow_reaches_the_scaler():
    layer = _layer("hif8_paper")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 64, generator=g).requires_grad_(True)
    layer(x).backward(torch.randn(16, 32, generator=g) * 1e-3)
    hist = layer.amax_history
    assert hist.shape == (6, 16) and bool((hist[:, 0] > 0).all()) and bool((hist[:, 1:] == 0).all())
    # a gradient 2^12 times larger than the history: its scale still comes from the history
    # (delayed), so it lands above HiF8's overflow threshold and, not saturating, becomes Inf
    x.grad = None
    layer(x).backward(torch.randn(16, 32, generator=g) * 1e-3 * 2 ** 12)
    assert not bool(torch.isfinite(x.grad).all())
    x.grad = None
    sat = _layer("hif8")                      # the older recipe saturates its gradients instead
    sat(x).backward(torch.randn(16, 32, generator=g) * 1e-3 * 2 ** 12)
    assert bool(torch.isfinite(x.grad).all())


def test_mxfp4_paper_is_truncation_free_and_rounds_only_gradients_stochastically(monkeypatch):
    layer = _layer("mxfp4_paper")
    calls = _spy(monkeypatch)
    x = torch.randn(16, 64).requires_grad_(True)
    layer(x).backward(torch.randn(16, 32))
    f = "e2m1/e8m0/32/rceil"
    assert [c[:2] for c in calls] == [(f, None), (f, None), (f, "sr"), (f, None), (f, "sr"), (f, None)]
    # the block max never clips under RCEIL (scale = amax/6 rounded up to a power of two), while
    # OCP's floor rule (scale 2^(floor(log2 amax) - 2)) clips maxima in (6, 8) * 2^k to 6 * 2^k
    for m in (7.5, 7.9):
        for k in (-10, 0, 10):
            v = torch.zeros(32, dtype=torch.float64)
            v[0], v[1] = m * 2.0 ** k, 2.0 ** k
            assert floatlab.quantize(v, f)[0] == 8 * 2.0 ** k          # nearest: 7.5 and 7.9 -> 8
            assert floatlab.quantize(v, "mxfp4")[0] == 6 * 2.0 ** k    # clipped
