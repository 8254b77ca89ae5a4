"""The fast encode/decode path (:mod:`floatlab.kernels.codes`) equals the plain one bit for bit.

Packed data, scales and meta of ``encode`` and the values of ``decode`` on the fast path
(eager: the kernels op by op; compiled on a few cases) against ``backend="plain"``: every scalar
format with exhaustive codes and midpoints (``stress_float32``), every rounding mode encode
accepts (stochastic ones with a generator), saturation, sr_bits, the four input dtypes; block
formats with padding, odd lengths, other axes, 2-D tiles and poisoned blocks; every output dtype
of decode; save/load round trips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab
from floatlab.kernels import codes as fast_codes
from floatlab.rounding import RoundingMode as M
from conftest import SCALAR_FORMATS, stress_float32

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
FAST_BLOCKS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4", "mxint8", "nvfp4", "nvfp4_2d", "hif4"]
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor, what: str, nan_bits: bool = True) -> None:
    """Equal dtype, shape and bit patterns. ``nan_bits=False``: any NaN matches any NaN (torch's
    own float64 -> bfloat16 cast gives NaN as 0x7FC0 or 0xFFFF depending on the position in its
    vector loop, so the plain path's bf16 NaN bits are not a property of the value)."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    if a.is_floating_point() and not nan_bits:
        an, bn = torch.isnan(a), torch.isnan(b)
        assert torch.equal(an, bn), f"{what}: NaN positions differ"
        a, b = a.masked_fill(an, 0), b.masked_fill(bn, 0)
    ia, ib = a.view(_INT[a.element_size()]), b.view(_INT[b.element_size()])
    bad = (ia != ib).nonzero().flatten()[:4].tolist()
    assert not bad, f"{what}: {int((ia != ib).sum())} differ at {bad}"


def same_qtensor(fast, plain, what: str) -> None:
    same_bits(fast.data, plain.data, f"{what} data")
    assert fast.shape == plain.shape and fast.dtype == plain.dtype and fast.meta == plain.meta, what
    assert fast.scales.keys() == plain.scales.keys(), what
    for k in plain.scales:
        same_bits(fast.scales[k], plain.scales[k], f"{what} scale {k}")


def both(x, fmt, backend="eager", seed=None, **kw):
    gens = [torch.Generator().manual_seed(seed) if seed is not None else None for _ in range(2)]
    fast = floatlab.encode(x, fmt, generator=gens[0], backend=backend, **kw)
    plain = floatlab.encode(x, fmt, generator=gens[1], backend="plain", **kw)
    return fast, plain


def check_decode(q, what: str, backend="eager") -> None:
    for dtype in (None, *DTYPES):
        fast = floatlab.decode(q, dtype=dtype, backend=backend)
        plain = floatlab.decode(q, dtype=dtype, backend="plain")
        bf16 = (dtype or q.dtype) is torch.bfloat16
        same_bits(fast, plain, f"{what} decode {dtype}", nan_bits=not bf16)


def inputs(name: str, dtype: torch.dtype, n: int = 800, seed: int = 0, nan: bool = True):
    with np.errstate(all="ignore"):
        x = stress_float32(name, n, seed)
    if x.size > 2 * n:   # 16-bit formats: a sample of the 65536 values and midpoints
        keep = np.random.default_rng(seed).permutation(x.size - 14)[:2 * n]
        x = np.concatenate([x[np.sort(keep)], x[-14:]])
    x = torch.from_numpy(x)
    if dtype is torch.float64:   # bits below float32's precision
        g = torch.Generator().manual_seed(seed)
        x = x.double() * (1 + (torch.rand(x.shape, dtype=torch.float64, generator=g) - 0.5) * 2 ** -30)
    x = x.to(dtype)
    if not nan:
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    return x[: x.numel() // 2 * 2]


def _modes(name):
    return [m for m in M if m is not M.HYBRID or name == "hif8"]


@pytest.mark.parametrize("name", SCALAR_FORMATS)
def test_scalar_encode_eager_equals_plain_every_mode_dtype_saturation(name):
    fmt = floatlab.get_format(name)
    for dtype in DTYPES:
        x = inputs(name, dtype, nan=fmt.has_nan)
        for mode in _modes(name):
            wide = dtype in (torch.float32, torch.float64)
            if not (wide or mode in (M.RNE, M.RUP, M.SR, M.HYBRID)):
                continue
            for saturate in ([False, True] if dtype is torch.float32 else [False]):
                seed = 7 if mode.is_stochastic else None
                what = f"{name} {dtype} {mode.value} saturate={saturate}"
                try:
                    plain = floatlab.encode(x, name, mode, saturate, backend="plain",
                                            generator=torch.Generator().manual_seed(7) if seed else None)
                except ValueError:   # e.g. NaN produced by a signed input to an unsigned format
                    with pytest.raises(ValueError):
                        floatlab.encode(x, name, mode, saturate, backend="eager",
                                        generator=torch.Generator().manual_seed(7) if seed else None)
                    continue
                fast = floatlab.encode(x, name, mode, saturate, backend="eager",
                                       generator=torch.Generator().manual_seed(7) if seed else None)
                same_qtensor(fast, plain, what)
                if mode is M.RNE and not saturate:
                    check_decode(plain, what)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "hif8", "e2m1", "int8", "fp16", "bf16"])
def test_sr_bits_encode_eager_equals_plain(name):
    for dtype in (torch.float32, torch.float64):
        x = inputs(name, dtype, n=400, nan=floatlab.get_format(name).has_nan)
        for sr_bits in (1, 3, 8, 23, 40):
            fast, plain = both(x, name, seed=3, rounding="sr", sr_bits=sr_bits)
            same_qtensor(fast, plain, f"{name} {dtype} sr_bits={sr_bits}")


@pytest.mark.parametrize("name", ["e4m3", "hif8", "e2m1", "int4", "e8m0", "fp16", "bf16", "ue4m3"])
def test_decode_every_code_every_dtype(name):
    fmt = floatlab.get_format(name)
    codes = torch.arange(2 ** fmt.bits, dtype=torch.int64)
    if fmt.bits == 4:
        codes = torch.cat([codes, codes.flip(0)])
    q = floatlab.QTensor.from_codes(codes, fmt)
    check_decode(q, name)


def test_nan_into_a_format_without_nan_is_refused_on_both_paths():
    x = torch.tensor([1.0, float("nan")])
    for backend in ("eager", "plain"):
        with pytest.raises(ValueError, match="no NaN code"):
            floatlab.encode(x, "e2m1", backend=backend)


def test_odd_length_4bit_and_0d_and_empty():
    x = torch.randn(7) * 3
    fast, plain = both(x, "e2m1")
    same_qtensor(fast, plain, "odd e2m1")
    for t in (torch.tensor(1.3), torch.empty(0), torch.empty(3, 0)):
        fast, plain = both(t, "e4m3")
        same_qtensor(fast, plain, f"shape {tuple(t.shape)}")
        check_decode(plain, f"shape {tuple(t.shape)}")


def _block_input(name, rows=12, mult=3, seed=1):
    b = floatlab.get_format(name).block_numel
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, mult * b, generator=g) * torch.exp2(torch.randint(-40, 40, (rows, 1), generator=g).float())
    x[4] = 0.0
    x[5, :b] = 1e-41
    x[6, 0] = 3.0e38
    x[7] = torch.randn(mult * b, generator=g) * 1e-40
    x[8] = torch.randn(mult * b, generator=g) * 1e-30
    x[8, ::b] = 3.0e38
    return x


@pytest.mark.parametrize("name", FAST_BLOCKS)
def test_block_encode_eager_equals_plain(name):
    x = _block_input(name)
    poisoned = x.clone()
    poisoned[1, 2], poisoned[2, 0], poisoned[3, 1] = float("nan"), float("inf"), -float("inf")
    for dtype in DTYPES:
        modes = _modes(name) if dtype is torch.float32 else [M.RNE, M.SR]
        for mode in modes:
            for sr_bits in ([None, 4] if mode is M.SR else [None]):
                seed = 2 if mode.is_stochastic else None
                what = f"{name} {dtype} {mode.value} sr_bits={sr_bits}"
                fast, plain = both(x.to(dtype), name, seed=seed, rounding=mode, sr_bits=sr_bits)
                same_qtensor(fast, plain, what)
                if mode is M.RNE:
                    check_decode(plain, what)
        fast, plain = both(poisoned.to(dtype), name)
        same_qtensor(fast, plain, f"{name} {dtype} poisoned")
        check_decode(plain, f"{name} {dtype} poisoned")


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "hif4", "mxfp8_e4m3"])
def test_block_padding_axes_odd_sizes(name):
    b = floatlab.get_format(name).block_numel
    g = torch.Generator().manual_seed(4)
    cases = [(torch.randn(5, 3 * b + 7, generator=g), -1), (torch.randn(2 * b + 3, 6, generator=g), 0),
             (torch.randn(3, b + 1, 4, generator=g), 1), (torch.randn(b * 2 + 1, generator=g), 0)]
    if name == "nvfp4":
        cases = cases[:1]   # 1-D blocks of 16 on the last axis; nvfp4_2d below
    for x, axis in cases:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            kw = {} if name == "nvfp4" else {"axis": axis}
            fast, plain = both((x * 20).to(dtype), name, **kw)
            same_qtensor(fast, plain, f"{name} {tuple(x.shape)} axis {axis} {dtype}")
            check_decode(plain, f"{name} {tuple(x.shape)} axis {axis}")
    x = torch.randn(33, 40, generator=g)
    fast, plain = both(x, "nvfp4_2d")
    same_qtensor(fast, plain, "nvfp4_2d padded tiles")
    check_decode(plain, "nvfp4_2d padded tiles")


def test_stochastic_without_generator_keeps_the_plain_draws():
    x = torch.randn(3000) * 10
    for fmt in ("e4m3", "mxfp4"):
        torch.manual_seed(5)
        a = floatlab.encode(x, fmt, "sr")
        torch.manual_seed(5)
        b = floatlab.encode(x, fmt, "sr", backend="plain")
        same_qtensor(a, b, f"{fmt} sr without generator")


@pytest.mark.parametrize("name,dtype", [("e4m3", torch.float32), ("hif8", torch.bfloat16),
                                        ("mxfp4", torch.float32), ("nvfp4", torch.float32),
                                        ("hif4", torch.float32)])
def test_compiled_equals_plain(name, dtype):
    fmt = floatlab.get_format(name)
    if hasattr(fmt, "block_numel"):
        x = _block_input(name, rows=40, mult=4, seed=6).to(dtype)
    else:
        x = inputs(name, dtype, n=3000, seed=6)
    fast, plain = both(x, name, backend="compiled")
    same_qtensor(fast, plain, f"compiled {name}")
    same_bits(floatlab.decode(plain, backend="compiled"), floatlab.decode(plain, backend="plain"),
              f"compiled decode {name}", nan_bits=dtype is not torch.bfloat16)


def test_save_load_round_trip(tmp_path):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(64, 128, generator=g) * 4
    tensors = {f: floatlab.encode(x, f) for f in ("e4m3", "hif8", "mxfp4", "nvfp4", "hif4", "bf16")}
    floatlab.save(tmp_path / "q.safetensors", tensors)
    loaded = floatlab.load(tmp_path / "q.safetensors")
    for f, q in tensors.items():
        same_qtensor(loaded[f], floatlab.encode(x, f, backend="plain"), f"reloaded {f}")
        same_bits(floatlab.decode(loaded[f]), floatlab.quantize(x, f, backend="plain"), f"values {f}")


def test_plans_refuse_what_they_cannot_spell():
    f32 = fast_codes.F32
    assert fast_codes.code_plan(floatlab.get_format("fp32"), f32) is None
    assert fast_codes.code_plan(floatlab.get_format("e4m3"), f32).kind == "float"
    assert fast_codes.code_plan(floatlab.get_format("bf16"), f32).kind == "half"


@pytest.mark.parametrize("name", FAST_BLOCKS)
def test_block_formats_take_the_fast_path(name):
    """The equality tests above would pass on a silent fallback: the plans must exist."""
    fmt = floatlab.get_format(name)
    for dtype in DTYPES:
        for mode in (M.RNE, M.RTZ):
            assert fast_codes.covers(fmt, mode, dtype), (name, dtype, mode)
        assert fast_codes.covers(fmt, M.SR, dtype, generator=torch.Generator())
        assert not fast_codes.covers(fmt, M.SR, dtype)   # no generator: the plain draws


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "hif8", "fp16", "bf16", "e2m1", "int8", "int4",
                                  "e4m3fnuz"])
def test_scalar_formats_take_the_fast_path(name, monkeypatch):
    from floatlab.plain import scalar as plain_scalar
    from floatlab.ops import api

    def refuse(*a, **k):
        raise AssertionError("the plain path ran")
    monkeypatch.setattr(api, "quantize_to_float64", refuse)
    x = inputs(name, torch.float32, n=200, nan=floatlab.get_format(name).has_nan)
    floatlab.encode(x, name, backend="eager")
    assert plain_scalar.quantize_to_float64 is not refuse


@pytest.mark.parametrize("name", ["mxfp4", "hif4", "nvfp4", "nvfp4_2d"])
def test_fp4_blocks_decode_by_arithmetic(name):
    """The decode tests above compare the arithmetic path (not the table fallback) for these."""
    fmt = floatlab.get_format(name)
    q = floatlab.encode(torch.randn(4, 256) * 3, name)
    s = q.scales["scale"].to(torch.int64)
    for dtype in DTYPES:
        assert fast_codes._block_arith(fmt, q, dtype, s, s.device) is not None, (name, dtype)


@pytest.mark.parametrize("name", ["e4m3", "hif8", "e2m1", "int8", "ue4m3", "e8m0"])
def test_raw_integer_codes_decode_like_plain(name):
    fmt = floatlab.get_format(name)
    codes = torch.arange(2 ** fmt.bits, dtype=torch.int64).reshape(-1, 2 ** (fmt.bits // 2))
    for dtype in (None, *DTYPES):
        fast = floatlab.decode(codes, name, dtype=dtype)
        plain = floatlab.decode(codes, name, dtype=dtype, backend="plain")
        same_bits(fast, plain, f"{name} raw codes {dtype}", nan_bits=dtype is not torch.bfloat16)
    with pytest.raises(ValueError, match="out of range"):
        floatlab.decode(torch.tensor([2 ** fmt.bits]), name)


@pytest.mark.parametrize("fmt,rounding", [("mxfp4", "sr"), ("nvfp4", "sr"), ("e2m1", "sr"), ("e4m3", "sr")])
def test_a_compile_that_fails_mid_call_leaves_the_same_codes(monkeypatch, fmt, rounding):
    """The compiler fails after the stochastic draws were taken (first use on a machine without
    one): the op-by-op retry must draw the same numbers, so the codes equal the plain path's,
    and a format without NaN still encodes instead of raising CompileUnavailable."""
    from floatlab.kernels import compiler

    def fail(*args, **kwargs):
        raise compiler.CompileUnavailable("simulated")
    monkeypatch.setattr(compiler, "run", fail)
    x = torch.randn(64, 1 << 12, generator=torch.Generator().manual_seed(1))
    got = floatlab.encode(x, fmt, rounding=rounding, generator=torch.Generator().manual_seed(2))
    want = floatlab.encode(x, fmt, rounding=rounding, generator=torch.Generator().manual_seed(2), backend="plain")
    assert torch.equal(floatlab.decode(got), floatlab.decode(want))
