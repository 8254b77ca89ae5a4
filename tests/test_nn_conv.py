"""Quantized convolutions: the implicit GEMM equals the quantize-then-conv construction (fprop,
dgrad, wgrad), its reduction order is channel-major, and bad input is refused naming the layer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import floatlab
import floatlab.nn as fnn
from floatlab.nn import GemmSpec, LinearSpec, Recipe, TensorSpec
from floatlab.nn.hadamard import random_hadamard, rht

RECIPE_NAMES = fnn.list_recipes()
GEOMETRIES = [dict(stride=1, padding=0, dilation=1, groups=1),
              dict(stride=2, padding=1, dilation=1, groups=2),
              dict(stride=1, padding=2, dilation=2, groups=1),
              dict(stride=3, padding=0, dilation=1, groups=4)]   # stride 3 > kernel: uncovered pixels


def _q(t, ts: TensorSpec, axis, gen, gemm):
    """One operand, quantized as docs/training.md says (scaled specs: 2^floor(log2(max/amax)))."""
    if ts.format is None:
        return t
    if ts.quantizer:
        k_axis = -2 if gemm == "fprop" else -1
        return fnn.lowbit.get_quantizer(ts.format).values(t, k_axis)
    f = floatlab.get_format(ts.format)
    kw = {"axis": axis} if f.kind == "block" else {}
    s = 1.0
    if ts.scaling is not fnn.Scaling.NONE:
        target = ts.scale_to or getattr(f, "element", f).max_value
        a = t.abs().max().double()
        s = 2.0 ** float(torch.floor(torch.log2(target / a))) if a > 0 else 1.0
    return floatlab.quantize(t * s, ts.format, rounding=ts.rounding, saturate=ts.saturate,
                             generator=gen if ts.stochastic else None, **kw) / s


def _rows(cols, g):          # (N, G*K, L) -> (G, N*L, K)
    n, gk, l = cols.shape
    return cols.view(n, g, gk // g, l).permute(1, 0, 3, 2).reshape(g, n * l, -1)


def _unrows(r, n):           # (G, N*L, C) -> (N, G*C, L)
    g, nl, c = r.shape
    return r.view(g, n, nl // n, c).permute(1, 0, 3, 2).reshape(n, g * c, nl // n)


def construction(x, w, gy, spec: LinearSpec, seed, stride, padding, dilation, groups):
    """The documented semantics written out: unfold, quantize each GEMM operand (blocks along the
    GEMM's contraction), matmul, fold."""
    gen = torch.Generator().manual_seed(seed)
    k = w.shape[2:]
    geo = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation)
    n, G = x.shape[0], groups
    cols = _rows(F.unfold(x, **geo), G)
    wg = w.reshape(G, w.shape[0] // G, -1)
    d = _rows(gy.reshape(n, gy.shape[1], -1), G)

    def gemm(a, b, gs: GemmSpec, index, name):
        if gs.hadamard:
            R = random_hadamard(gs.hadamard, seed * 3 + index)
            a, b = rht(a, R, -1), rht(b, R, -2)
        # contiguous operands, as qconv documents (the summation order follows the layout)
        return _q(a, gs.a, -1, gen, name).contiguous() @ _q(b, gs.b, -2, gen, name).contiguous()

    y = _unrows(gemm(cols, wg.transpose(1, 2), spec.fprop, 0, "fprop"), n).reshape(gy.shape)
    gx = F.fold(_unrows(gemm(d, wg, spec.dgrad, 1, "dgrad"), n), x.shape[2:], **geo)
    gw = gemm(d.transpose(1, 2), cols, spec.wgrad, 2, "wgrad").reshape(w.shape)
    return y, gx, gw


def _run(layer, x, gy):
    xr = x.clone().requires_grad_()
    y = layer(xr)
    y.backward(gy)
    return y.detach(), xr.grad, layer.weight.grad


CASES = ([(name, GEOMETRIES[1]) for name in RECIPE_NAMES]
         + [(name, g) for name in ("mxfp4_rht_sr", "fp8", "nvfp4", "int8", "ternary") for g in GEOMETRIES if g is not GEOMETRIES[1]])


@pytest.mark.parametrize("name,geometry", CASES,
                         ids=[f"{n}-s{g['stride']}p{g['padding']}d{g['dilation']}g{g['groups']}" for n, g in CASES])
def test_qconv2d_equals_construction(name, geometry):
    spec = fnn.get_recipe(name).default
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False, **geometry)
    x = torch.randn(3, 8, 11, 10) * 3
    q = fnn.QConv2d.from_conv(conv, spec, seed=7)
    gy = torch.randn(3, 16, *conv(x).shape[2:]) * 1e-3
    y, gx, gw = _run(q, x, gy)
    ry, rgx, rgw = construction(x, conv.weight.detach(), gy, spec, 7, **geometry)
    assert torch.equal(y, ry)
    assert torch.equal(gx, rgx)
    assert torch.equal(gw, rgw)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp8"])
def test_qconv1d_is_the_2d_case_with_kernel_height_one(name):
    spec = fnn.get_recipe(name).default
    torch.manual_seed(1)
    conv = nn.Conv1d(6, 12, 5, stride=2, padding=2, dilation=1, groups=3, bias=False)
    x = torch.randn(4, 6, 40)
    q = fnn.QConv1d.from_conv(conv, spec, seed=3)
    gy = torch.randn(4, 12, conv(x).shape[-1])
    y, gx, gw = _run(q, x, gy)
    ry, rgx, rgw = construction(x.unsqueeze(2), conv.weight.detach().unsqueeze(2), gy.unsqueeze(2),
                                spec, 3, (1, 2), (0, 2), (1, 1), 3)
    assert torch.equal(y, ry.squeeze(2)) and torch.equal(gx, rgx.squeeze(2))
    assert torch.equal(gw, rgw.squeeze(2))


def test_fprop_blocks_run_over_channel_major_windows():
    """An independent loop: each output is the dot product of the window vector, gathered in the
    order (c, i, j) and quantized in mxfp4 blocks of 32, with the quantized weight row. The sums
    of these short products are exact in float64, so the comparison is bit for bit."""
    torch.manual_seed(2)
    C, O, k, s, p, d = 5, 3, 3, 2, 1, 2      # K = 45: one full block and a padded one
    x = torch.randn(2, C, 9, 8)
    w = torch.randn(O, C, k, k)
    q = fnn.QConv2d.from_conv(nn.Conv2d(C, O, k, s, p, d, bias=False), LinearSpec.uniform("mxfp4"))
    q.weight = nn.Parameter(w.clone())
    y = q(x).double()
    wq = floatlab.quantize(w.reshape(O, -1), "mxfp4", axis=-1).double()
    H, W = y.shape[2:]
    xp = F.pad(x, (p, p, p, p))
    for n in range(2):
        for h in range(H):
            for v in range(W):
                window = torch.stack([xp[n, c, h * s + i * d, v * s + j * d]
                                      for c in range(C) for i in range(k) for j in range(k)])
                xq = floatlab.quantize(window, "mxfp4").double()
                assert torch.equal(y[n, :, h, v], wq @ xq)


@pytest.mark.parametrize("fmt", ["e2m1", "int4", "mxfp4"])
def test_implicit_gemm_equals_torch_convolution_on_quantized_operands(fmt):
    """Where the float32 sums are exact (few-bit operands), fprop, dgrad and wgrad equal PyTorch's
    own convolution kernels run on the quantized operands, bit for bit: the implicit GEMM is the
    convolution. For scalar formats the operands are the quantized tensors; for mxfp4, dgrad's
    operands are dy blocked along C_out and W blocked along C_out (dim 0)."""
    torch.manual_seed(3)
    conv = nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 32, 9, 9) * 2
    q = fnn.QConv2d.from_conv(conv, LinearSpec.uniform(fmt))
    gy = torch.randn(2, 32, 5, 5) * 2
    y, gx, gw = _run(q, x, gy)
    W = conv.weight.detach()
    geo = dict(stride=2, padding=1)
    if fmt != "mxfp4":
        Q = lambda t: floatlab.quantize(t, fmt, saturate=True)
        assert torch.equal(y, F.conv2d(Q(x), Q(W), **geo))
        assert torch.equal(gw, torch.nn.grad.conv2d_weight(Q(x), W.shape, Q(gy), **geo))
        assert torch.equal(gx, torch.nn.grad.conv2d_input(x.shape, Q(W), Q(gy), **geo))
    else:
        Qa = lambda t, axis: floatlab.quantize(t, fmt, axis=axis)
        assert torch.equal(gx, torch.nn.grad.conv2d_input(x.shape, Qa(W, 0), Qa(gy, 1), **geo))


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), (1, "reflect"), (2, "circular"), ("valid", "zeros")])
def test_padding_modes_and_strings(padding, mode):
    """``"same"`` (asymmetric for an even kernel), reflect and circular padding: the input is
    padded first, as nn.Conv2d does; here only the input is quantized (int8 rounds to integers),
    so the result is nn.Conv2d's on the rounded input up to float32 summation order."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, (2, 3), padding=padding, padding_mode=mode)
    x = torch.randn(2, 3, 7, 6) * 4
    q = fnn.QConv2d.from_conv(conv, LinearSpec(GemmSpec(TensorSpec("int8"), TensorSpec())))
    ref = conv(floatlab.quantize(x, "int8", saturate=True))
    y = q(x)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-5, rtol=0)


def test_quantize_model_swaps_convolutions_and_reports_them():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 4, 3),
                          nn.Conv3d(1, 1, 2), nn.ConvTranspose2d(2, 2, 2), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="3D convolutions|transposed"):
        fnn.quantize_model(model, Recipe("r", LinearSpec.uniform("e4m3"), keep=()))
    r = model.floatlab_quantization
    assert r.quantized == ("0", "2", "5")
    assert isinstance(model[0], fnn.QConv2d) and isinstance(model[2], fnn.QConv1d)
    assert set(r.not_quantized) == {"3", "4"}
    assert model[0].weight is not None and "0" in fnn.quantized_layers(model)


def test_block_fit_refused_with_padding_off_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 1))
    spec = LinearSpec.uniform("mxfp8_e4m3")
    nopad = TensorSpec("mxfp8_e4m3", pad=False)
    strict = LinearSpec(GemmSpec(nopad, nopad), spec.dgrad, spec.wgrad)
    with pytest.raises(ValueError, match=r"layer '0': the fprop GEMM reduces over 27 values, not a "
                                         r"multiple of the mxfp8_e4m3 block of 32.*pad: true"):
        fnn.quantize_model(model, Recipe("strict", strict, keep=()))
    assert isinstance(model[0], nn.Conv2d) and not isinstance(model[2], fnn.QConv2d)   # nothing swapped
    # 32*1*1 fits; the wgrad reduction (N*L) is known only at run time: refused there, naming the layer
    wg = LinearSpec(spec.fprop, spec.dgrad, GemmSpec(nopad, nopad))
    m2 = nn.Sequential(nn.Conv2d(32, 32, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnn.quantize_model(m2, Recipe("wg", wg, keep=()))
    with pytest.raises(ValueError, match=r"layer '0': the wgrad GEMM reduces over 50 values"):
        m2(torch.randn(2, 32, 5, 5)).sum().backward()
    # the round trip keeps pad and an old recipe's dict does not grow a key
    r = Recipe("strict", strict, keep=())
    assert Recipe.from_json(r.to_json()) == r
    assert "pad" not in fnn.get_recipe("mxfp8").to_dict()["default"]["fprop"]["a"]


def test_generator_and_amax_history_travel_with_state_dict():
    conv = nn.Conv2d(4, 4, 3)
    q = fnn.QConv2d.from_conv(conv, fnn.get_recipe("fp8").default, seed=5)
    q(torch.randn(2, 4, 6, 6, requires_grad=True)).sum().backward()
    sd = q.state_dict()
    assert "amax_history" in sd and bool((sd["amax_history"][:, 0] > 0).all())
    q2 = fnn.QConv2d.from_conv(nn.Conv2d(4, 4, 3), fnn.get_recipe("fp8").default, seed=5)
    q2.load_state_dict(sd)
    assert torch.equal(q2.amax_history, q.amax_history)


def test_delayed_scaling_reuse_of_the_input_keeps_every_bit():
    """fp8 (delayed scaling): wgrad reuses fprop's quantized input only while wgrad's amax history
    equals the one fprop scaled with; a forward without backward in between makes them differ,
    and the full path runs. Compared with a spec whose wgrad input differs only in its block axis
    (meaningless for a scalar format), which never reuses: outputs, gradients and histories equal."""
    import copy
    import dataclasses
    spec = fnn.get_recipe("fp8").default
    other = dataclasses.replace(spec, wgrad=dataclasses.replace(
        spec.wgrad, b=dataclasses.replace(spec.wgrad.b, axis=fnn.BlockAxis.OUTER)))
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    layers = [fnn.QConv2d.from_conv(copy.deepcopy(conv), s, seed=5, amax_history=4) for s in (spec, other)]
    results = [[], []]
    for step, scale in enumerate((1.0, 30.0, 0.01, 5.0, 2.0)):
        x = torch.randn(2, 4, 7, 7) * scale
        gy = torch.randn(2, 6, 7, 7) * scale
        for q, out in zip(layers, results):
            if step == 2:
                with torch.no_grad():
                    q(x * 3)                  # pushes fprop's history only
            out.append(_run(q, x, gy) + (q.amax_history.clone(),))
            q.weight.grad = None
    for a, b in zip(*results):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    assert not torch.equal(layers[0].amax_history[0], layers[0].amax_history[5])   # diverged
