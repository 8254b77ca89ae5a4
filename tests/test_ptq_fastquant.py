"""The PTQ fast path equals floatlab.quantize bit for bit, and the quantizer's conventions hold."""

import pytest
import torch

import floatlab
from floatlab.ptq.fastquant import fast_quantize
from floatlab.ptq.quantizer import FrozenGrid, QuantSpec, fake_quant
from floatlab.ptq.weights import rtn_weight

SCALAR = ["bf16", "fp16", "e4m3", "e5m2", "hif8", "int8", "int4", "e2m1", "e3m2", "e2m3", "e1m2"]
BLOCK = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4", "nvfp4_46", "nvfp4_2d", "hif4"]


def _data(seed, shape=(12, 192)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 2)
    x.view(-1)[::97] = 0
    x.view(-1)[1::101] = -0.0
    return x


def _same(a, b):
    return torch.equal(torch.nan_to_num(a, nan=1.5), torch.nan_to_num(b, nan=1.5)) and \
        torch.equal(torch.signbit(a), torch.signbit(b))


def _scaled(seed):
    """Rows at very different magnitudes (1e-4 to 1e3), so one tensor covers every range."""
    x = _data(seed)
    return x * torch.logspace(-4, 3, x.shape[0])[:, None]


@pytest.mark.parametrize("fmt", SCALAR)
@pytest.mark.parametrize("saturate", [None, True])
def test_scalar_fast_path_is_exact(fmt, saturate):
    x = _scaled(1)
    assert _same(fast_quantize(x, fmt, saturate=saturate), floatlab.quantize(x, fmt, saturate=saturate))


@pytest.mark.parametrize("fmt", ["e4m3", "hif8", "int4", pytest.param("e2m1", marks=pytest.mark.slow),
                                 pytest.param("e1m2", marks=pytest.mark.slow)])
def test_scalar_fast_path_ties_and_specials(fmt):
    f = floatlab.get_format(fmt)
    vals = floatlab.decode(torch.arange(2 ** f.bits), f).float()
    vals = vals[torch.isfinite(vals)].unique()
    mids = (vals[1:] + vals[:-1]) / 2                      # every tie between neighbours
    x = torch.cat([vals, mids, torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30])])
    for sat in (None, True):
        for mode in ("rne", "rna", "rnz"):
            assert _same(fast_quantize(x, f, rounding=mode, saturate=sat),
                         floatlab.quantize(x, f, rounding=mode, saturate=sat))


@pytest.mark.parametrize("fmt", BLOCK)
def test_block_fast_path_is_exact(fmt):
    x = _scaled(2)
    assert _same(fast_quantize(x, fmt), floatlab.quantize(x, fmt))


def test_block_fast_path_nonfinite_falls_back():
    x = _data(3)
    x[0, 5] = float("nan")
    assert _same(fast_quantize(x, "mxfp4"), floatlab.quantize(x, "mxfp4"))


@pytest.mark.parametrize("fmt", ["bf16", "e4m3", "hif8", "int8", "int4", "mxfp8_e4m3", "mxfp4", "nvfp4", "nvfp4_46", "hif4"])
def test_rtn_weight_packs_exactly(fmt):
    w = _data(4, (8, 200)) * 0.05                         # 200: not a multiple of 16/32/64 (padding)
    spec = QuantSpec(fmt)
    q = rtn_weight(w, spec)
    fq = fake_quant(w, spec, "weight")
    assert torch.equal(q.dequantize(), fq)
    deq = q.to_qtensor().dequantize(torch.float32)
    if q.row_scale is not None:
        deq = deq * q.row_scale
    assert torch.equal(deq, fq)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "hif4", "mxfp8_e4m3"])
def test_frozen_grid_reproduces_fake_quant(fmt):
    w = _data(5, (8, 128)) * 0.02
    spec = QuantSpec(fmt)
    b = spec.fmt.block[0]
    fq = fake_quant(w, spec, "weight")
    amax = w.abs().amax()
    for g0 in range(0, 128, b):
        grid = FrozenGrid(w[:, g0:g0 + b], spec, tensor_amax=amax)
        for j in range(b):
            assert torch.equal(grid.round(w[:, g0 + j], j), fq[:, g0 + j])


def test_conventions():
    x = torch.randn(4, 64)
    # scalar formats: per-token absmax scaling to the target; bf16 unscaled
    y = fake_quant(x, QuantSpec("int8"), "act")
    s = x.abs().amax(-1, keepdim=True) / 127
    assert torch.equal(y, torch.round(x / s).clamp(-128, 127) * s)
    assert torch.equal(fake_quant(x, "bf16", "act"), x.bfloat16().float())
    assert QuantSpec("hif8").target == 15.0 and QuantSpec("hif8", scale_target="max").target == 32768.0
    with pytest.raises(ValueError, match="padding"):
        fake_quant(torch.randn(4, 40), QuantSpec("mxfp4", pad=False), "weight")
    with pytest.raises(ValueError, match="unknown format"):
        QuantSpec("fp5")


def test_block_not_dividing_with_padding_off_is_refused_up_front():
    from torch import nn

    from floatlab.ptq.apply import check_blocks
    from floatlab.ptq.config import PTQConfig
    layers = {"encoder.layer.0.x": nn.Linear(40, 8)}
    with pytest.raises(ValueError, match="not a multiple of the mxfp4 block"):
        check_blocks(layers, PTQConfig(weight=QuantSpec("mxfp4", pad=False)))
    check_blocks(layers, PTQConfig(weight=QuantSpec("mxfp4")))     # padding on: fine
