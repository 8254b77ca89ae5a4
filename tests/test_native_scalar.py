"""The native scalar kernel (kernels/native_scalar.py) equals the plain path bit for bit.

Every scalar format it takes x every mode it has (rne, rna, rnz, sr with and without sr_bits,
sr_half) x saturation, with and without ``out=``, on the stress inputs (random bit patterns,
every midpoint of the format and its float32 neighbours, subnormals, overflow, Inf, NaN); an
exhaustive sweep of float32 bit patterns over every kept mantissa bit plus the rounding bit for
the goal formats; the stochastic modes with a generator (the plain path's own draws) and without
(the in-kernel hash, equal to the eager kernel's); threads; the dtypes and layouts it leaves to
the other backends; FLOATLAB_NATIVE=0 and a failed build (the other paths, same bits).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import floatlab
from floatlab.kernels import dispatch, native, native_scalar
from floatlab.rounding import RoundingMode as M
from conftest import SCALAR_FORMATS, stress_float32
from test_fast import assert_same_bits

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")

MODES = [(M.RNE, None), (M.RNA, None), (M.RNZ, None), (M.SR, None), (M.SR, 3), (M.SR, 20),
         (M.SR_HALF, None)]
NATIVE_FORMATS = [n for n in SCALAR_FORMATS
                  if native_scalar.plan(floatlab.get_format(n), M.RNE, False, None, "none")]
GOAL_FORMATS = ["e4m3", "e5m2", "fp16", "bf16", "hif8"]


def _stress(name: str, n: int = 3000, seed: int = 0) -> torch.Tensor:
    with np.errstate(all="ignore"):
        return torch.from_numpy(stress_float32(name, n, seed))


def _gen(seed):
    return None if seed is None else torch.Generator().manual_seed(seed)


def test_native_covers_the_goal_formats():
    assert set(GOAL_FORMATS) <= set(NATIVE_FORMATS)
    for name in ["int8", "ue4m3", "e8m0"]:       # what it leaves to the compiled kernel
        assert name not in NATIVE_FORMATS


@pytest.mark.parametrize("name", NATIVE_FORMATS)
def test_every_mode_and_saturation_equals_plain(name):
    x = _stress(name)
    for mode, bits in MODES:
        for saturate in (False, True):
            seed = 7 if mode in (M.SR, M.SR_HALF) else None
            kw = dict(rounding=mode, saturate=saturate, sr_bits=bits)
            want = floatlab.quantize(x, name, generator=_gen(seed), backend="plain", **kw)
            got = floatlab.quantize(x, name, generator=_gen(seed), backend="native", **kw)
            assert_same_bits(got, want, f"{name} {mode.value} sr_bits={bits} sat={saturate}")
            dst = torch.full_like(x, 5.0)
            res = floatlab.quantize(x, name, generator=_gen(seed), backend="native", out=dst, **kw)
            assert res is dst
            assert_same_bits(dst, want, f"{name} {mode.value} out=")


@pytest.mark.parametrize("name", GOAL_FORMATS)
def test_exhaustive_patterns_over_the_kept_bits_and_the_rounding_bit(name):
    """Every float32 pattern of sign, exponent, the format's widest mantissa and the rounding
    bit, each with the low bits 0 (the values and exact midpoints), 1 and all ones (their
    neighbours): every rounding decision of the format, with both modes of its default."""
    m = {"e4m3": 3, "e5m2": 2, "fp16": 10, "bf16": 7, "hif8": 3}[name]
    s = 22 - m
    hi = torch.arange(1 << (32 - s), dtype=torch.int64) << s
    low = torch.tensor([0, 1, (1 << s) - 1], dtype=torch.int64)
    x = (hi[:, None] | low[None, :]).reshape(-1).to(torch.int32).view(torch.float32)
    for mode in (M.RNE, M.RNA):
        want = floatlab.quantize(x, name, rounding=mode, backend="plain")
        got = floatlab.quantize(x, name, rounding=mode, backend="native")
        assert_same_bits(got, want, f"{name} {mode.value}")


@pytest.mark.parametrize("name", ["e4m3", "bf16", "hif8", "e2m1"])
@pytest.mark.parametrize("bits", [None, 5, 32])
def test_hash_draws_equal_the_eager_kernel(name, bits):
    """Without a generator the fast path hashes (seed, index): the native kernel gives the
    compiled/eager kernel's very bits for the same torch.manual_seed (2 threads: the second
    slice starts mid-tensor, so its indices are offset)."""
    x = _stress(name, 200_000, 3)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for mode in (M.SR, M.SR_HALF):
            if mode is M.SR_HALF and bits is not None:
                continue
            torch.manual_seed(11)
            want = floatlab.quantize(x, name, rounding=mode, sr_bits=bits, backend="eager")
            torch.manual_seed(11)
            got = floatlab.quantize(x, name, rounding=mode, sr_bits=bits, backend="native")
            assert_same_bits(got, want, f"{name} {mode.value} {bits}")
            assert not torch.equal(got, floatlab.quantize(x, name, rounding=mode, sr_bits=bits,
                                                          backend="native"))   # fresh seed
    finally:
        torch.set_num_threads(old)


def test_threads_and_large_tensors_equal_plain():
    x = _stress("e4m3", 400_000, 5)[:400_000].reshape(8, -1)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name, mode in (("e4m3", M.RNE), ("hif8", M.RNA), ("fp16", M.RNE)):
            want = floatlab.quantize(x, name, rounding=mode, backend="plain")
            dst = torch.empty_like(x)
            assert_same_bits(floatlab.quantize(x, name, rounding=mode, out=dst), want, name)
            assert_same_bits(floatlab.quantize(x, name, rounding=mode), want, name)
        g1, g2 = _gen(1), _gen(1)
        assert_same_bits(floatlab.quantize(x, "bf16", "sr", generator=g1, backend="native"),
                         floatlab.quantize(x, "bf16", "sr", generator=g2, backend="plain"), "sr")
    finally:
        torch.set_num_threads(old)


def test_layouts_shapes_and_out():
    x = _stress("e5m2", 2000, 2)[:1800].reshape(30, 60)
    want = floatlab.quantize(x, "e5m2", backend="plain")
    assert_same_bits(floatlab.quantize(x.t(), "e5m2", backend="native"), want.t(), "strided x")
    dst = torch.empty(60, 30).t()                         # non-contiguous out
    assert floatlab.quantize(x, "e5m2", backend="native", out=dst) is dst
    assert_same_bits(dst, want, "strided out")
    for shape in [(), (0,), (3, 0)]:
        t = torch.full(shape, 1.0625)
        assert_same_bits(floatlab.quantize(t, "hif8", backend="native"),
                         floatlab.quantize(t, "hif8", backend="plain"), str(shape))


def test_in_place_out_equals_plain():
    x = _stress("hif8", 200_000, 12)
    want = floatlab.quantize(x, "hif8", backend="plain")
    y = x.clone()
    assert floatlab.quantize(y, "hif8", out=y, backend="native") is y
    assert_same_bits(y, want, "out=x")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_refused_by_native_and_served_by_auto(dtype):
    x = _stress("e4m3", 2000, 4).to(dtype)
    with pytest.raises(dispatch.FastPathUnsupported, match="float32 CPU"):
        floatlab.quantize(x, "e4m3", backend="native")
    dst = torch.empty_like(x)
    floatlab.quantize(x, "e4m3", out=dst)
    assert_same_bits(dst, floatlab.quantize(x, "e4m3", backend="plain"), str(dtype))


def test_unsupported_cases_are_refused_and_auto_still_serves_them():
    x = _stress("int8", 1000, 1)
    for name, mode in (("int8", M.RNE), ("e4m3", M.RUP), ("hif8", M.HYBRID), ("e4m3", M.RTZ)):
        with pytest.raises(dispatch.FastPathUnsupported):
            floatlab.quantize(x, name, rounding=mode, backend="native")
        assert_same_bits(floatlab.quantize(x, name, rounding=mode),
                         floatlab.quantize(x, name, rounding=mode, backend="plain"), name)
    with pytest.raises(dispatch.FastPathUnsupported, match="native block kernel"):
        floatlab.quantize(torch.ones(64), "nvfp4_46", backend="native")   # mxfp4: test_native_block


def test_auto_runs_the_native_kernel(monkeypatch):
    calls = []
    real = native_scalar.round_into
    monkeypatch.setattr(native_scalar, "round_into", lambda *a: calls.append(1) or real(*a))
    x = _stress("hif8", 1000, 6)
    dst = torch.empty_like(x)
    floatlab.quantize(x, "hif8", out=dst)
    floatlab.quantize(x, "bf16", "sr")
    assert len(calls) == 2


def test_disabled_by_env_falls_back_with_the_same_bits(monkeypatch):
    x = _stress("e4m3", 2000, 8)
    want = floatlab.quantize(x, "e4m3", backend="native")
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert not native_scalar.available()
    with pytest.raises(dispatch.FastPathUnsupported):
        floatlab.quantize(x, "e4m3", backend="native")
    dst = torch.empty_like(x)
    assert_same_bits(floatlab.quantize(x, "e4m3", out=dst), want, "auto without native")


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOATLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(native_scalar, "_state", {})
    monkeypatch.setattr(native, "compiler", lambda: "/bin/false")
    x = _stress("hif8", 1000, 9)
    want = floatlab.quantize(x, "hif8", backend="plain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = floatlab.quantize(x, "hif8")
        b = floatlab.quantize(x, "hif8")
    assert sum("native scalar kernel could not be built" in str(w.message) for w in caught) == 1
    assert_same_bits(a, want, "first")
    assert_same_bits(b, want, "second")
