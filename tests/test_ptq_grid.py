"""PTQ rounding: fake_quant and GPTQ's frozen block grids equal floatlab.quantize bit for bit; the
quantizer's conventions hold."""

import pytest
import torch

import floatlab
from floatlab.ptq.grid import block_grid
from floatlab.plain.blocking import to_blocks
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


@pytest.mark.parametrize("fmt", BLOCK)
def test_block_grid_of_unchanged_blocks_is_quantize(fmt):
    x = _scaled(2)
    f = floatlab.get_format(fmt)
    xb, blocking = to_blocks(x, f.block)
    assert _same(blocking.unblock(block_grid(xb, f).round(xb)), floatlab.quantize(x, fmt))


@pytest.mark.parametrize("fmt", SCALAR + BLOCK)
def test_fake_quant_is_quantize_with_its_scale(fmt):
    """fake_quant = floatlab.quantize (block formats, bf16/fp16) or quantize(x/s)*s with the
    row absmax mapped to the scale target (narrow scalar formats)."""
    x = _scaled(1)
    spec = QuantSpec(fmt)
    if spec.is_block:
        expect = floatlab.quantize(x, fmt)
    elif not spec.scaled:
        expect = floatlab.quantize(x, fmt, saturate=True)
    else:
        s = x.abs().amax(-1, keepdim=True) / spec.target
        expect = floatlab.quantize(x / s, fmt, saturate=True) * s
    assert _same(fake_quant(x, spec, "act"), expect)


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
