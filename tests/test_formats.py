"""Registry, spelled formats, derived facts, and worked examples from FORMATS.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import floatlab
from conftest import ALL_ORACLES, SCALAR_FORMATS


def test_registry_has_every_required_name():
    assert set(SCALAR_FORMATS) <= set(floatlab.list_formats())


@pytest.mark.parametrize("name", [n for n in ALL_ORACLES if n != "e8m0"])
def test_finfo_agrees_with_the_oracle(name):
    ours, theirs = floatlab.finfo(name), (np.finfo if name == "fp16" else __import__("ml_dtypes").finfo)(ALL_ORACLES[name]) if name != "hif8" else None
    if theirs is None:
        return
    assert ours.max == float(theirs.max)
    assert ours.smallest_normal == float(theirs.smallest_normal)
    assert ours.smallest_subnormal == float(theirs.smallest_subnormal)
    assert ours.eps == float(theirs.eps)


def test_hif8_facts_from_formats_md():
    i = floatlab.finfo("hif8")
    assert (i.max, i.smallest_normal, i.smallest_subnormal, i.eps) == (2.0 ** 15, 2.0 ** -15, 2.0 ** -22, 0.125)
    assert i.num_finite == 253 and i.binades == 38
    assert floatlab.finfo("fp16").binades == 40


@pytest.mark.parametrize("name,boundary", [("e4m3", 480), ("e5m2", 65536), ("hif8", 1.5 * 2 ** 15),
                                           ("e2m1", 8), ("int8", 128), ("e8m0", 2.0 ** 128),
                                           ("e4m3fnuz", 256), ("ue5m3", 122880)])
def test_overflow_boundary(name, boundary):
    assert floatlab.get_format(name).overflow_boundary == boundary


def test_spelled_formats_parse_and_round_trip_their_spelling():
    f = floatlab.get_format("e6m9")
    assert (f.ebits, f.mbits, f.bias, f.bits) == (6, 9, 31, 16)
    assert floatlab.get_format(f.spelled()) == f
    g = floatlab.get_format("ue4m3fn_b10")
    assert (g.signed, g.bias, g.has_inf) == (False, 10, False)
    assert floatlab.get_format("uint4").max_value == 15
    assert floatlab.get_format("E4M3FN") is floatlab.get_format("e4m3")


def test_hif8_worked_examples_from_formats_md():
    x = torch.tensor([1.0625, -1.0625, 2.125, 18, 3.875, 15.5, 240, 28672, 32768, 40959.996,
                      40960, float("inf"), 1.5 * 2 ** -22, 1.4 * 2 ** -22, 1.5 * 2 ** -16, 2.0 ** -23,
                      -0.0], dtype=torch.float32)
    want = [1.125, -1.125, 2.25, 20, 4, 16, 256, 32768, 32768, 32768, math.inf, math.inf,
            2.0 ** -21, 2.0 ** -22, 2.0 ** -15, 2.0 ** -22, 0.0]
    y = floatlab.quantize(x, "hif8")
    assert y.tolist() == [float(np.float32(w)) for w in want]
    assert not y[-1].signbit()  # no negative zero
    codes = floatlab.encode(torch.tensor([0.0, float("nan"), float("inf"), 32768, 2 ** -15, 2 ** -22, 1.0, 1.125]), "hif8").codes
    assert codes.tolist() == [0x00, 0x80, 0x6F, 0x6E, 0x7E, 0x01, 0x08, 0x09]


def test_hif8_saturate_option():
    y = floatlab.quantize(torch.tensor([40960.0, -1e9, float("inf")]), "hif8", saturate=True)
    assert y.tolist() == [32768.0, -32768.0, 32768.0]


def test_hif8_hybrid_follows_the_golden_rules():
    # |E| < 4: ties away; 1.0625 is a tie between 1.0 and 1.125
    assert floatlab.quantize(torch.tensor([1.0625]), "hif8", rounding="hybrid").item() == 1.125
    # |E| >= 4, SSR: 17 + 1/16 in e=4 (spacing 4): f14 of 0.265625 = 4352, t14 = low 14 bits
    x = torch.tensor([17.0625])
    bits = x.view(torch.int32).item() & 0x3FFF
    f14 = int(((17.0625 - 16) / 4) * 2 ** 14)
    expect = 20.0 if f14 >= bits else 16.0
    assert floatlab.quantize(x, "hif8", rounding="hybrid").item() == expect
    # below 2^-23 the golden returns zero
    assert floatlab.quantize(torch.tensor([2.0 ** -24]), "hif8", rounding="hybrid").item() == 0.0


@pytest.mark.parametrize("name,x,expected", [
    ("e4m3", 464.0, 448.0), ("e4m3", 465.0, math.nan), ("e4m3", math.inf, math.nan),
    ("e5m2", 61440.0, math.inf), ("e5m2", 61439.0, 57344.0), ("e2m1", 100.0, 6.0),
    ("e2m1", -math.inf, -6.0), ("e3m2", 1e9, 28.0), ("int8", -1000.0, -128.0), ("int8", 127.5, 127.0),
    ("fp16", 65520.0, math.inf), ("bf16", 1e39, math.inf), ("e8m0", 0.0, math.nan),
    ("e8m0", 1e-45, 2.0 ** -127), ("ue4m3", -1.0, math.nan), ("ue4m3", -0.0, 0.0),
])
def test_overflow_and_special_values(name, x, expected):
    y = floatlab.quantize(torch.tensor([x], dtype=torch.float64), name).item()
    assert (math.isnan(y) and math.isnan(expected)) or y == expected


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "fp16", "hif8", "e8m0"])
def test_saturate_clamps_every_overflow(name):
    fmt = floatlab.get_format(name)
    x = torch.tensor([1e300, -1e300, float("inf")], dtype=torch.float64)
    y = floatlab.quantize(x, name, saturate=True)
    assert y.tolist()[0] == fmt.max_value and y.tolist()[2] == fmt.max_value


def test_nan_never_becomes_a_number():
    for name in SCALAR_FORMATS:
        for mode in ["rne", "rtz", "rup", "sr"]:
            assert torch.isnan(floatlab.quantize(torch.tensor([float("nan")]), name, rounding=mode, saturate=True)).all()


def test_same_dtype_and_shape_out():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.randn(3, 5, dtype=dtype)
        y = floatlab.quantize(x, "e4m3")
        assert y.dtype == dtype and y.shape == x.shape


def test_decode_of_encode_equals_quantize_for_every_input_dtype_and_strided_input():
    x = torch.randn(64, 32).t()[::2] * 100  # non-contiguous
    for name in ["e4m3", "hif8", "e2m1", "int4", "fp16", "e8m0"]:
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype).abs() if name == "e8m0" else x.to(dtype)
            q = floatlab.encode(xd, name)
            assert torch.equal(floatlab.decode(q, dtype=dtype), floatlab.quantize(xd, name))
