"""Native encode/decode (``native_scalar.encode_into`` / ``decode_*_into``, reached through
``floatlab.encode``/``decode`` with the default backend) equals the plain path bit for bit.

Every scalar format the native kernel codes x every mode it has (rne, rna, rnz, sr exact and
with sr_bits, sr_half: stochastic ones with a generator, so the plain path's draws) x saturation
x the input dtypes it takes (float32, bfloat16, float16), on the stress inputs (random bit
patterns, every midpoint and its neighbours, subnormals, overflow, +-Inf, NaN, -0); an
exhaustive sweep over the kept bits of the 8-bit goal formats; odd lengths of packed 4/6-bit
codes, strided and 0-d inputs, two threads with slices meeting mid-tensor; NaN refused by a
format without NaN; the cases it leaves to the other paths (float64, other modes, no
generator); the mapping check that guards a format; decode of every code into every dtype;
FLOATLAB_NATIVE=0 (the compiled path, same bits). Each equality test also checks that the
native kernel ran, so a silent fallback cannot pass for it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import floatlab
from floatlab.kernels import native, native_scalar
from floatlab.rounding import RoundingMode as M
from conftest import SCALAR_FORMATS, stress_float32
from test_codes import FAST_BLOCKS, _block_input, same_bits, same_qtensor

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")

MODES = [(M.RNE, None), (M.RNA, None), (M.RNZ, None), (M.SR, None), (M.SR, 3), (M.SR, 40),
         (M.SR_HALF, None)]
INPUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CODED = [n for n in SCALAR_FORMATS if native_scalar.code_spec(floatlab.get_format(n)) is not None]
GOAL_FORMATS = ["e4m3", "e5m2", "fp16", "bf16", "hif8", "e2m1"]


@pytest.fixture
def calls(monkeypatch):
    """Counts the native encode/decode calls."""
    seen = {"encode": 0, "decode": 0, "rows": 0}
    enc, tab, half, rows = (native_scalar.encode_into, native_scalar.decode_table_into,
                            native_scalar.decode_half_into, native_scalar.decode_rows_into)

    def count(key, fn):
        def wrapped(*a, **k):
            seen[key] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(native_scalar, "encode_into", count("encode", enc))
    monkeypatch.setattr(native_scalar, "decode_table_into", count("decode", tab))
    monkeypatch.setattr(native_scalar, "decode_half_into", count("decode", half))
    monkeypatch.setattr(native_scalar, "decode_rows_into", count("rows", rows))
    return seen


def _stress(name: str, n: int = 2000, seed: int = 0, nan: bool = True) -> torch.Tensor:
    with np.errstate(all="ignore"):
        x = torch.from_numpy(stress_float32(name, n, seed))
    if not nan:
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    return x


def _gen(seed):
    return None if seed is None else torch.Generator().manual_seed(seed)


def _encode_both(x, name, mode, bits=None, saturate=False, seed=None):
    kw = dict(rounding=mode, saturate=saturate, sr_bits=bits)
    got = floatlab.encode(x, name, generator=_gen(seed), **kw)
    want = floatlab.encode(x, name, generator=_gen(seed), backend="plain", **kw)
    return got, want


def _decode_check(q, what):
    for dtype in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
        got = floatlab.decode(q, dtype=dtype)
        want = floatlab.decode(q, dtype=dtype, backend="plain")
        bf16 = (dtype or q.dtype) is torch.bfloat16
        same_bits(got, want, f"{what} decode {dtype}", nan_bits=not bf16)


def test_the_goal_formats_are_coded_natively():
    assert set(GOAL_FORMATS) <= set(CODED)
    assert {"e3m2", "e2m3", "e1m2"} <= set(CODED)           # 6 and 4 bits, packed in the pass
    for name in ["int8", "e8m0", "ue4m3", "tf32"]:           # left to the compiled kernels
        assert name not in CODED


@pytest.mark.parametrize("name", CODED)
def test_every_mode_dtype_and_saturation_equals_plain(name, calls):
    fmt = floatlab.get_format(name)
    for dtype in INPUT_DTYPES:
        x = _stress(name, nan=fmt.has_nan).to(dtype)
        x = x[: x.numel() // 2 * 2 - 1]                   # odd: 4-bit codes end in a half byte
        for mode, bits in MODES:
            for saturate in (False, True):
                seed = 7 if mode.is_stochastic else None
                before = calls["encode"]
                got, want = _encode_both(x, name, mode, bits, saturate, seed)
                what = f"{name} {dtype} {mode.value} sr_bits={bits} saturate={saturate}"
                same_qtensor(got, want, what)
                assert calls["encode"] == before + 1, f"{what}: the native kernel did not run"
        _decode_check(want, f"{name} {dtype}")


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "hif8", "e4m3fnuz", "e2m1"])
def test_exhaustive_patterns_over_the_kept_bits(name, calls):
    """Every float32 pattern of sign, exponent, the format's widest mantissa and the rounding
    bit, with the low bits 0 (values and exact midpoints), 1 and all ones (their neighbours)."""
    fmt = floatlab.get_format(name)
    m = {"e4m3": 3, "e5m2": 2, "hif8": 3, "e4m3fnuz": 3, "e2m1": 1}[name]
    s = 22 - m
    hi = torch.arange(1 << (32 - s), dtype=torch.int64) << s
    low = torch.tensor([0, 1, (1 << s) - 1], dtype=torch.int64)
    x = (hi[:, None] | low[None, :]).reshape(-1).to(torch.int32).view(torch.float32)
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
    for mode in (M.RNE, M.RNA, M.RNZ):
        for saturate in (False, True):
            got, want = _encode_both(x, name, mode, saturate=saturate)
            same_qtensor(got, want, f"{name} {mode.value} saturate={saturate}")
    assert calls["encode"] == 6


def test_threads_odd_lengths_and_strided_inputs(calls):
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = _stress("e4m3", 600_000, 5)[:600_003]          # two slices, an odd total
        for name, mode in (("e4m3", M.RNE), ("hif8", M.RNA), ("fp16", M.RNE), ("e2m1", M.RNE),
                           ("e2m3", M.RNE)):
            xs = x if floatlab.get_format(name).has_nan else torch.nan_to_num(x)
            got, want = _encode_both(xs, name, mode)
            same_qtensor(got, want, f"{name} threads")
            _decode_check(want, f"{name} threads")
        got, want = _encode_both(x.to(torch.bfloat16), "hif8", M.SR, seed=4)
        same_qtensor(got, want, "hif8 sr bf16 threads")
        xt = torch.nan_to_num(x[:600_003]).reshape(-1, 3).t()   # strided, odd
        for name in ("e2m1", "e3m2"):
            got, want = _encode_both(xt, name, M.RNE)
            same_qtensor(got, want, f"strided {name}")
    finally:
        torch.set_num_threads(old)
    for shape in [(), (1,), (3,), (2, 1, 3)]:
        t = torch.full(shape, -1.0625)
        for name in ("e2m1", "e3m2", "hif8", "bf16"):
            got, want = _encode_both(t, name, M.RNE)
            same_qtensor(got, want, f"{name} {shape}")
            _decode_check(want, f"{name} {shape}")


def test_nan_into_a_format_without_nan_is_refused():
    for n in (5, 600_000):
        x = torch.ones(n)
        x[-2] = float("nan")                               # in the last thread's slice
        with pytest.raises(ValueError, match="no NaN code"):
            floatlab.encode(x, "e2m1")
        with pytest.raises(ValueError, match="no NaN code"):
            floatlab.encode(x.to(torch.float16), "e1m2", "sr", generator=_gen(1))


def test_cases_left_to_the_other_paths_still_equal_plain(calls):
    x = _stress("e4m3", 1500, 3)
    for dtype, name, mode in ((torch.float64, "e4m3", M.RNE), (torch.float32, "e4m3", M.RUP),
                              (torch.float32, "hif8", M.HYBRID), (torch.float32, "int8", M.RNE),
                              (torch.float32, "e8m0", M.RNE)):
        xs = x.to(dtype) if floatlab.get_format(name).has_nan else torch.nan_to_num(x).to(dtype)
        got, want = _encode_both(xs, name, mode)
        same_qtensor(got, want, f"{name} {dtype} {mode.value}")
    torch.manual_seed(3)
    a = floatlab.encode(x, "e4m3", "sr")                   # no generator: torch.rand's draws
    torch.manual_seed(3)
    same_qtensor(a, floatlab.encode(x, "e4m3", "sr", backend="plain"), "sr without generator")
    assert calls["encode"] == 0


def test_a_wrong_mapping_is_refused_by_the_check():
    fmt = floatlab.get_format("e4m3")
    cs = native_scalar.code_spec(fmt)
    assert native_scalar._mapping_matches(fmt, cs)
    assert not native_scalar._mapping_matches(fmt, dataclasses.replace(cs, offset=cs.offset + 8))
    assert not native_scalar._mapping_matches(fmt, dataclasses.replace(cs, nan_code=0x7E))
    e5m2 = floatlab.get_format("e5m2")
    assert not native_scalar._mapping_matches(
        e5m2, dataclasses.replace(native_scalar.code_spec(e5m2), inf_code=0x7B))


@pytest.mark.parametrize("name", CODED)
def test_decode_every_code_every_dtype(name, calls):
    fmt = floatlab.get_format(name)
    codes = torch.arange(2 ** fmt.bits, dtype=torch.int64)
    if fmt.bits < 8:
        codes = torch.cat([codes, codes.flip(0), codes[:3]])   # a last partial byte (group)
    for dtype in INPUT_DTYPES + [torch.float64]:
        q = floatlab.QTensor.from_codes(codes, fmt, dtype=dtype)
        _decode_check(q, name)
    assert calls["decode"] > 0


def test_disabled_by_env_gives_the_same_bits(monkeypatch, calls):
    x = _stress("hif8", 3000, 8)
    native_codes = {n: floatlab.encode(x, n, "rna" if n == "hif8" else "rne") for n in ("hif8", "e4m3")}
    used = calls["encode"]
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    for n, q in native_codes.items():
        same_qtensor(q, floatlab.encode(x, n, "rna" if n == "hif8" else "rne"), f"{n} without native")
        same_bits(floatlab.decode(q), floatlab.decode(q, backend="plain"), f"{n} decode")
    assert calls["encode"] == used == 2


@pytest.mark.parametrize("name", FAST_BLOCKS)
def test_block_decode_gathers_the_plain_values(name, calls):
    """Block formats decode natively from the plain decoder's (scale, element) table: padded,
    other axes, poisoned blocks, every output dtype, two threads."""
    b = floatlab.get_format(name).block_numel
    x = _block_input(name, rows=12, mult=3)
    poisoned = x.clone()
    poisoned[1, 2], poisoned[2, 0], poisoned[3, 1] = float("nan"), float("inf"), -float("inf")
    g = torch.Generator().manual_seed(4)
    odd = torch.randn(3, b + 1, 4, generator=g) * 30
    cases = [(x, {}), (poisoned, {}), (x.to(torch.bfloat16), {})]
    if name != "nvfp4":            # 1-D blocks of 16 on the last axis only
        cases.append((odd, {} if name == "nvfp4_2d" else {"axis": 1}))
    for t, kw in cases:
        q = floatlab.encode(t, name, backend="plain", **kw)
        _decode_check(q, f"{name} {t.dtype} {tuple(t.shape)}")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        big = torch.randn(1024, 1024, generator=g) * torch.exp2(torch.randint(-20, 20, (1024, 1), generator=g).float())
        q = floatlab.encode(big, name)
        same_bits(floatlab.decode(q), floatlab.decode(q, backend="plain"), f"{name} threads")
    finally:
        torch.set_num_threads(old)
    assert calls["rows"] == 5 * len(cases) + 1
