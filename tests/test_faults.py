"""floatlab.faults: bit flips change exactly the chosen stored bits, reproducibly."""

from __future__ import annotations

import math

import pytest
import torch

import floatlab
from floatlab.faults import bit_sensitivity, bit_table, flip_bits, flip_random, inject

SCALAR = ["e4m3", "e5m2", "hif8", "e2m1", "e3m2", "int8", "int4", "bf16", "fp16", "ue5m3", "q3.4", "uq2.4"]
BLOCK = ["mxfp4", "mxfp8_e4m3", "mxint8", "nvfp4", "nvfp4_2d", "hif4"]


def _popcount_bytes(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of differing bits between two storage tensors (any dtype, same shape)."""
    x = torch.bitwise_xor(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)).to(torch.int64)
    return int(sum(((x >> k) & 1).sum() for k in range(8)))


def _storage_diff(q1, q2) -> int:
    total = _popcount_bytes(q1.data, q2.data)
    for name in q1.scales:
        total += _popcount_bytes(q1.scales[name], q2.scales[name])
    return total


def _data(shape=(6, 70), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("fmt", SCALAR + BLOCK)
def test_flip_bits_changes_exactly_the_chosen_code_bits(fmt):
    x = _data(seed=1)
    x = x if floatlab.get_format(fmt).kind == "block" or floatlab.get_format(fmt).signed else x.abs()
    q = floatlab.encode(x, fmt)
    bits = q.element_bits
    index = [0, 5, 71, 419]
    chosen = [0, bits - 1] if bits > 1 else [0]
    q2 = flip_bits(q, chosen, index=index)
    diff = torch.bitwise_xor(q.codes, q2.codes).reshape(-1)
    want = torch.zeros_like(diff)
    for i in index:
        for b in chosen:
            want[i] |= 1 << b
    assert torch.equal(diff, want)
    assert _storage_diff(q, q2) == len(index) * len(chosen)     # nothing else moved in memory
    assert torch.equal(flip_bits(q2, chosen, index=index).codes, q.codes)   # flipping twice restores


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "hif4"])
def test_flip_scale_bits(fmt):
    q = floatlab.encode(_data(seed=2), fmt)
    for name, t in q.scales.items():
        width = (t[0].numel() if t.dim() > 1 else 1) * t.element_size() * 8
        for bit in (0, width - 1):
            q2 = flip_bits(q, bit, index=[0], target=name)
            assert _storage_diff(q, q2) == 1
            assert torch.equal(q2.data, q.data)
            changed = (floatlab.decode(q2) != floatlab.decode(q)) & ~(floatlab.decode(q2).isnan() & floatlab.decode(q).isnan())
            assert changed.any()


def test_tensor_scale_flip_is_one_float32_bit():
    q = floatlab.encode(_data(seed=3), "nvfp4")
    q2 = flip_bits(q, 30, target="tensor_scale")    # the exponent's top bit
    a = q.scales["tensor_scale"].view(torch.int32)
    b = q2.scales["tensor_scale"].view(torch.int32)
    assert int(torch.bitwise_xor(a, b)) == 1 << 30


def test_flip_random_is_reproducible_and_flips_n_bits():
    q = floatlab.encode(_data(seed=4), "nvfp4")
    a, log_a = flip_random(q, 25, generator=torch.Generator().manual_seed(9))
    b, log_b = flip_random(q, 25, generator=torch.Generator().manual_seed(9))
    c, _ = flip_random(q, 25, generator=torch.Generator().manual_seed(10))
    assert _storage_diff(q, a) == 25 == len(log_a)
    assert torch.equal(a.data, b.data) and log_a.target == log_b.target and torch.equal(log_a.bit, log_b.bit)
    assert not torch.equal(a.data, c.data) or not all(torch.equal(a.scales[k], c.scales[k]) for k in a.scales)
    only_codes, log = flip_random(q, 7, target="codes", generator=torch.Generator().manual_seed(0))
    assert set(log.target) == {"codes"} and all(torch.equal(only_codes.scales[k], q.scales[k]) for k in q.scales)


def test_flip_random_bit_error_rate():
    q = floatlab.encode(_data((64, 64), seed=5), "e4m3")
    same, log0 = flip_random(q, rate=0.0, generator=torch.Generator().manual_seed(0))
    assert len(log0) == 0 and torch.equal(same.data, q.data)
    allf, _ = flip_random(q, rate=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(allf.codes, q.codes ^ 0xFF)
    some, log = flip_random(q, rate=0.01, generator=torch.Generator().manual_seed(0))
    assert abs(len(log) - 0.01 * 64 * 64 * 8) < 4 * math.sqrt(0.01 * 64 * 64 * 8)
    assert _storage_diff(q, some) == len(log)


def test_inject_equals_decode_of_flip():
    x = _data(seed=6)
    y = inject(x, "hif8", bits=6, index=[3, 4])
    q = floatlab.encode(x, "hif8")
    assert torch.equal(y, floatlab.decode(flip_bits(q, 6, index=[3, 4])))
    z = inject(x, "mxfp4", n=5, generator=torch.Generator().manual_seed(1))
    z2 = inject(x, "mxfp4", n=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z.nan_to_num(123.0), z2.nan_to_num(123.0))


def _census(fmt, bit):
    """Independent count from the spec's code_value: flips of finite codes that give NaN / Inf."""
    spec = floatlab.get_format(fmt)
    nan = inf = total = 0
    for c in range(2 ** spec.bits):
        v = spec.code_value(c)
        if isinstance(v, float):        # NaN or Inf: not a finite starting value
            continue
        total += 1
        w = spec.code_value(c ^ (1 << bit))
        if isinstance(w, float):
            nan += math.isnan(w)
            inf += math.isinf(w)
    return nan / total, inf / total


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "hif8"])
def test_bit_sensitivity_census_matches_the_spec(fmt):
    rows = bit_sensitivity(fmt)
    assert [r["bit"] for r in rows] == list(range(8))
    for r in rows:
        nan, inf = _census(fmt, r["bit"])
        assert r["nan"] == pytest.approx(nan, abs=1e-12) and r["inf"] == pytest.approx(inf, abs=1e-12)
    sign = rows[7]
    assert sign["large"] > 0.9           # a sign flip moves every nonzero value by 2|v|


def test_bit_sensitivity_on_data_and_table():
    rows = bit_sensitivity("mxfp4", data="normal", samples=4096, generator=torch.Generator().manual_seed(0))
    targets = {r["target"] for r in rows}
    assert targets == {"codes", "scale"}
    scale_msb = [r for r in rows if r["target"] == "scale" and r["bit"] == 7][0]
    # a flipped E8M0 top bit scales its block by 2^+-128 or makes it NaN: every nonzero value is
    # hit, and the zeros of the blocks whose scale became NaN
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    nonzero = float((floatlab.quantize(x, "mxfp4") != 0).double().mean())
    assert 1 >= scale_msb["harmful"] >= nonzero > 0.8
    table = bit_table(rows)
    assert table.splitlines()[0].startswith("| bit | mxfp4 NaN/Inf/large %")


def test_bad_input():
    q = floatlab.encode(_data(seed=7), "e4m3")
    with pytest.raises(ValueError, match="bits must be ints in 0..7"):
        flip_bits(q, 8)
    with pytest.raises(ValueError, match="index out of range"):
        flip_bits(q, 0, index=[10 ** 6])
    with pytest.raises(ValueError, match="unknown target"):
        flip_bits(q, 0, target="scale")
    with pytest.raises(TypeError, match="QTensor"):
        flip_bits(torch.ones(3), 0)
    with pytest.raises(ValueError, match="exactly one"):
        flip_random(q)
    with pytest.raises(ValueError, match="rate"):
        flip_random(q, rate=1.5)
    with pytest.raises(ValueError, match="data='normal'"):
        bit_sensitivity("mxfp4")
