"""decode(encode(x)) equals quantize(x) for every format and every input dtype (issue 12 fault 5).

``decode`` used to return float32 whatever was encoded, so a bfloat16 NVFP4 tensor decoded to
values that differ from ``quantize`` in most places. Every path that dequantizes a QTensor is
checked for the same mistake: ``decode``, ``QTensor.dequantize``, ``floatlab.load`` and a
``torch.save``/``torch.load`` round trip keep the encoded dtype; PTQ's packed weights record the
float32 they were computed in.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import floatlab
from conftest import stress_float32
from test_fast import assert_same_bits

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _inputs(name: str, dtype: torch.dtype) -> torch.Tensor:
    """Stress values of the format (scalar) or scaled Gaussian blocks with zeros and ties (block),
    without NaN where the format has no NaN code (encode refuses those)."""
    fmt = floatlab.get_format(name)
    if fmt.kind == "block":
        g = torch.Generator().manual_seed(len(name))
        x = torch.randn(32, 64, generator=g, dtype=torch.float64)
        x = x * torch.exp2(torch.randint(-12, 12, (32, 1), generator=g).double())
        x[3] = 0.0
        x[5, ::3] = (torch.arange(22, dtype=torch.float64) - 11) / 8 + 1 / 16   # binary ties
        return x.to(dtype)
    with np.errstate(all="ignore"):
        x = stress_float32(name, 400, seed=3)
    if x.size > 2000:            # 16-bit formats: a sample of their 65536 midpoints, specials kept
        keep = np.sort(np.random.default_rng(3).permutation(x.size - 14)[:2000])
        x = np.concatenate([x[keep], x[-14:]])
    x = torch.from_numpy(x).double()
    if dtype is torch.float64:       # bits below float32's precision
        x = x * (1 + (torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.5) * 2 ** -30)
    x = x.to(dtype)
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
        if not fmt.signed:
            x = x.abs()
    return x


@pytest.mark.parametrize("name", floatlab.list_formats())
def test_decode_of_encode_equals_quantize_in_the_input_dtype(name):
    for dtype in DTYPES:
        x = _inputs(name, dtype)
        q = floatlab.encode(x, name)
        want = floatlab.quantize(x, name)
        assert q.dtype == dtype
        assert_same_bits(floatlab.decode(q), want, f"decode {name} {dtype}")
        assert_same_bits(q.dequantize(), want, f"dequantize {name} {dtype}")
        assert_same_bits(floatlab.decode(q, dtype=torch.float64).to(dtype), want, f"float64 {name} {dtype}")


@pytest.mark.parametrize("name", ["nvfp4", "hif4", "mxfp4", "e4m3", "int4"])
def test_save_load_and_pickle_keep_the_encoded_dtype(name, tmp_path):
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        x = _inputs(name, dtype)
        want = floatlab.quantize(x, name)
        q = floatlab.encode(x, name)
        floatlab.save(tmp_path / "q.safetensors", {"q": q})
        assert_same_bits(floatlab.decode(floatlab.load(tmp_path / "q.safetensors")["q"]), want, f"load {name}")
        buf = io.BytesIO()
        torch.save(q, buf)
        buf.seek(0)
        assert_same_bits(floatlab.decode(torch.load(buf, weights_only=True)), want, f"pickle {name}")


def test_the_reported_case():
    """Issue 12 fault 5: bfloat16 NVFP4 decoded to float32 and differed in 124 of 128 values."""
    x = torch.randn(4, 32, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    y = floatlab.decode(floatlab.encode(x, "nvfp4"))
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, floatlab.quantize(x, "nvfp4"))


def test_raw_codes_decode_to_float32_unless_asked():
    codes = torch.tensor([0x38, 0x7E, 0x80], dtype=torch.uint8)
    assert floatlab.decode(codes, "e4m3").dtype == torch.float32
    assert floatlab.decode(codes, "e4m3").tolist() == [1.0, 448.0, -0.0]
    assert floatlab.decode(codes, "e4m3", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bad_dtype_is_refused_by_decode_and_dequantize():
    q = floatlab.encode(torch.randn(32), "mxfp4")
    for bad in (torch.int32, torch.complex64, "float32"):
        with pytest.raises(TypeError, match="dtype must be one of"):
            floatlab.decode(q, dtype=bad)
        with pytest.raises(TypeError, match="dtype must be one of"):
            q.dequantize(bad)
    with pytest.raises(TypeError, match="dtype must be one of"):
        floatlab.decode(torch.tensor([1], dtype=torch.uint8), "e4m3", dtype=torch.int8)


def test_ptq_packed_weights_decode_to_the_float32_they_were_computed_in():
    """ptq/weights.py packs float32 weights (rtn_weight computes in float32) and says so."""
    from floatlab.ptq.quantizer import QuantSpec
    from floatlab.ptq.weights import QWeight, rtn_weight

    w = torch.randn(8, 64, dtype=torch.bfloat16)
    for fmt in ("nvfp4", "hif4", "e4m3"):
        spec = QuantSpec(fmt)
        qw = rtn_weight(w, spec)
        qt = qw.to_qtensor()
        assert qt.dtype == torch.float32
        grid = floatlab.decode(qt)               # scalar formats: grid values, row scale apart
        assert torch.equal(grid if qw.row_scale is None else grid * qw.row_scale, qw.dequantize())
        back = QWeight.from_tensors(spec, "l", qw.tensors("l"))
        assert torch.equal(back.dequantize(), qw.dequantize())
