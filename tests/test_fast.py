"""The fused fast path equals the plain reference path bit for bit.

Eager (the kernel op by op) on every scalar format, mode, saturation, sr_bits and input dtype,
and on every fast block format; compiled (torch.compile) on a representative set; strided
inputs; ``out=``; the in-kernel RNG used without a generator; no recompilation per shape; the
fallback when no compiler works.
"""

from __future__ import annotations

import subprocess
import warnings

import numpy as np
import pytest
import torch

import floatlab
from floatlab.kernels import compiler as fast_compile
from floatlab.kernels import dispatch as fast
from floatlab.rounding import RoundingMode as M
from conftest import SCALAR_FORMATS, stress_float32

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
FAST_BLOCKS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8",
               "nvfp4", "nvfp4_2d", "hif4"]
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Equal bit patterns everywhere, except that any NaN matches any NaN."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    an, bn = torch.isnan(a), torch.isnan(b)
    assert torch.equal(an, bn), f"{what}: NaN positions differ"
    ia = a.masked_fill(an, 0).view(_INT[a.element_size()])
    ib = b.masked_fill(bn, 0).view(_INT[b.element_size()])
    bad = (ia != ib).nonzero().flatten()[:4].tolist()
    assert not bad, f"{what}: {int((ia != ib).sum())} differ, e.g. " + \
        ", ".join(f"fast {a.flatten()[i].item()!r} plain {b.flatten()[i].item()!r}" for i in bad)


def _inputs(name: str, dtype: torch.dtype, n: int = 1200, seed: int = 0) -> torch.Tensor:
    with np.errstate(all="ignore"):
        x = stress_float32(name, n, seed)
    if x.size > 2 * n:   # 16-bit formats: every midpoint of 65536 values; keep a sample
        keep = np.random.default_rng(seed).permutation(x.size - 14)[:2 * n]
        x = np.concatenate([x[np.sort(keep)], x[-14:]])      # the specials stay
    x = torch.from_numpy(x)
    if dtype is torch.float64:   # bits below float32's precision
        g = torch.Generator().manual_seed(seed)
        return x.double() * (1 + (torch.rand(x.shape, dtype=torch.float64, generator=g) - 0.5) * 2 ** -30)
    return x.to(dtype)


def _both(x, fmt, backend="eager", **kw):
    gen = kw.pop("seed", None)
    g1 = torch.Generator().manual_seed(gen) if gen is not None else None
    g2 = torch.Generator().manual_seed(gen) if gen is not None else None
    fast_y = floatlab.quantize(x, fmt, generator=g1, backend=backend, **kw)
    plain_y = floatlab.quantize(x, fmt, generator=g2, backend="plain", **kw)
    return fast_y, plain_y


def _modes(name):
    return [m for m in M if m is not M.HYBRID or name == "hif8"]


def _scalar_cases(name):
    """Every mode for float32 and float64 inputs; the half types and saturation on a subset."""
    for dtype in DTYPES:
        for mode in _modes(name):
            wide = dtype in (torch.float32, torch.float64)
            if wide or mode in (M.RNE, M.RUP, M.SR, M.HYBRID):
                yield dtype, mode, False
            if dtype is torch.float32 and mode in (M.RNE, M.RTZ, M.RDN, M.SR):
                yield dtype, mode, True


@pytest.mark.parametrize("name", SCALAR_FORMATS)
def test_scalar_eager_equals_plain_every_mode_dtype_saturation(name):
    inputs = {dtype: _inputs(name, dtype, n=800) for dtype in DTYPES}
    for dtype, mode, saturate in _scalar_cases(name):
        seed = 11 if mode.is_stochastic else None
        a, b = _both(inputs[dtype], name, rounding=mode, saturate=saturate, seed=seed)
        assert_same_bits(a, b, f"{name} {dtype} {mode.value} saturate={saturate}")


@pytest.mark.parametrize("name", ["e4m3", "bf16", "hif8", "int8", "e2m1", "fp16"])
def test_sr_bits_eager_equals_plain(name):
    for dtype in DTYPES:
        x = _inputs(name, dtype, n=600)
        for sr_bits in (1, 3, 8, 23, 40, 52):
            a, b = _both(x, name, rounding="sr", sr_bits=sr_bits, seed=5)
            assert_same_bits(a, b, f"{name} {dtype} sr_bits={sr_bits}")


@pytest.mark.parametrize("name", FAST_BLOCKS)
def test_block_eager_equals_plain(name):
    fmt = floatlab.get_format(name)
    b = fmt.block_numel
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3 * b, generator=g) * torch.exp2(torch.randint(-40, 40, (24, 1), generator=g).float())
    x[1, 2], x[2, 0], x[3, 1] = float("nan"), float("inf"), -float("inf")
    x[4] = 0.0
    x[5, :b] = 1e-41
    x[6, 0] = 3.0e38
    x[7] = torch.randn(3 * b, generator=g) * 1e-40
    x[8] = torch.randn(3 * b, generator=g) * 1e-30          # tiny beside a huge block maximum:
    x[8, ::b] = 3.0e38                                      # x / scale underflows float32
    for dtype in DTYPES:
        modes = _modes(name) if dtype is torch.float32 else [M.RNE, M.SR]
        for mode in modes:
            for sr_bits in ([None, 4] if mode is M.SR else [None]):
                seed = 2 if mode.is_stochastic else None
                fa, pa = _both(x.to(dtype), name, rounding=mode, sr_bits=sr_bits, seed=seed)
                assert_same_bits(fa, pa, f"{name} {dtype} {mode.value} sr_bits={sr_bits}")


COMPILED_SCALAR = [("e4m3", torch.float32, "rne", False), ("hif8", torch.bfloat16, "rna", False),
                   ("e5m2", torch.float64, "sr", False), ("hif8", torch.float32, "hybrid", False),
                   ("e8m0", torch.float16, "rup", True), ("int4", torch.float32, "rto", False)]


@pytest.mark.parametrize("name,dtype,mode,saturate", COMPILED_SCALAR)
def test_scalar_compiled_equals_plain(name, dtype, mode, saturate):
    x = _inputs(name, dtype, n=3000, seed=3)
    seed = 4 if mode == "sr" else None
    a, b = _both(x, name, backend="compiled", rounding=mode, saturate=saturate, seed=seed)
    assert_same_bits(a, b, f"compiled {name} {dtype} {mode}")


@pytest.mark.parametrize("name,mode", [("mxfp4", "rne"), ("nvfp4", "rne"), ("hif4", "rna")])
def test_block_compiled_equals_plain(name, mode):
    b = floatlab.get_format(name).block_numel
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4 * b, generator=g) * torch.exp2(torch.randint(-30, 30, (40, 1), generator=g).float())
    x[3, 3] = float("nan")
    x[5, 7], x[9, 1] = float("inf"), -float("inf")
    a, p = _both(x, name, backend="compiled", rounding=mode)
    assert_same_bits(a, p, f"compiled {name}")


@pytest.mark.parametrize("name", ["e4m3", "mxfp4"])
def test_large_outputs_in_huge_page_buffers_equal_plain(name):
    """Outputs of >= 8 MB are written straight into a huge-page backed buffer (kernels/memory.py)."""
    from floatlab.kernels import memory
    g = torch.Generator().manual_seed(12)
    x = torch.randn(memory.HUGE_MIN_BYTES // 4 // 32 + 3, 32, generator=g) * 100
    a, p = _both(x, name, backend="compiled")
    assert a.is_contiguous()
    assert_same_bits(a, p, f"large {name}")
    y = memory.empty_output(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_strided_inputs(backend):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(96, 130, generator=g) * 50
    for x in (base.t(), base[::3, 1:129], base[:, ::2]):
        assert not x.is_contiguous()
        a, b = _both(x, "e4m3", backend=backend)
        assert_same_bits(a, b, "strided scalar")
    xb = base[:, :128].t()          # blocks along a strided last axis
    a, b = _both(xb, "mxfp4", backend=backend)
    assert_same_bits(a, b, "strided block")


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_out_is_written_and_returned(backend):
    x = torch.randn(1000) * 30
    out = torch.full_like(x, 7.0)
    y = floatlab.quantize(x, "e4m3", out=out, backend=backend)
    assert y is out
    assert_same_bits(out, floatlab.quantize(x, "e4m3", backend="plain"), "out=")
    strided = torch.zeros(2000)[::2]
    floatlab.quantize(x, "hif8", out=strided, backend=backend)
    assert_same_bits(strided, floatlab.quantize(x, "hif8", backend="plain"), "strided out=")
    xb = torch.randn(8, 64)
    ob = torch.empty_like(xb)
    assert floatlab.quantize(xb, "hif4", out=ob, backend=backend) is ob
    assert_same_bits(ob, floatlab.quantize(xb, "hif4", backend="plain"), "block out=")
    with pytest.raises(ValueError, match="out must match"):
        floatlab.quantize(x, "e4m3", out=torch.empty(10))


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_hash_rng_is_reproducible_unbiased_and_exact_on_grid(backend):
    x = torch.full((100_000,), 1.0 + 0.3 * 0.125)        # e4m3: frac 0.3 between 1 and 1.125
    torch.manual_seed(0)
    a = floatlab.quantize(x, "e4m3", rounding="sr", backend=backend)
    torch.manual_seed(0)
    b = floatlab.quantize(x, "e4m3", rounding="sr", backend=backend)
    c = floatlab.quantize(x, "e4m3", rounding="sr", backend=backend)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {1.0, 1.125}
    p = (a == 1.125).double().mean().item()
    assert abs(p - 0.3) < 4 * (0.21 / x.numel()) ** 0.5
    half = floatlab.quantize(x, "e4m3", rounding="sr_half", backend=backend)
    assert abs((half == 1.125).double().mean().item() - 0.5) < 0.01
    k3 = floatlab.quantize(x, "e4m3", rounding="sr", sr_bits=1, backend=backend)
    assert torch.equal(k3, torch.ones_like(x))            # 0.3 truncated to 1 bit is 0
    grid = floatlab.decode(torch.arange(256), "e4m3")
    grid = grid[torch.isfinite(grid)].repeat(50)
    assert torch.equal(floatlab.quantize(grid, "e4m3", rounding="sr", backend=backend), grid)


def test_hash_rng_float64_long_probabilities():
    """float64 inputs: 62 random bits, so a probability of 2^-40 is not rounded to 0 or 1."""
    x = torch.full((100_000,), 1.0 + 0.75 * 2 ** -7, dtype=torch.float64)
    y = floatlab.quantize(x, "bf16", rounding="sr", backend="eager")
    p = (y > 1).double().mean().item()
    assert abs(p - 0.75) < 4 * (0.1875 / x.numel()) ** 0.5


def test_env_selects_plain(monkeypatch):
    monkeypatch.setenv("FLOATLAB_FAST", "0")
    assert fast.resolve_backend(None) == "plain"
    monkeypatch.setenv("FLOATLAB_FAST", "eager")
    assert fast.resolve_backend(None) == "eager"
    monkeypatch.delenv("FLOATLAB_FAST")
    assert fast.resolve_backend(None) == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        fast.resolve_backend("turbo")


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "hif4", "nvfp4_2d"])
@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_block_any_axis_and_padding_equals_plain(name, backend):
    """Blocks along a leading axis, lengths that need padding, 3-D inputs, SR draws in order."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(70, 3, 100, generator=g) * torch.exp2(torch.randint(-20, 20, (70, 1, 1), generator=g).float())
    x[5, 1, 7] = float("nan")
    for axis in (0, 1, -1):
        for mode, seed in (("rne", None), ("sr", 3)):
            a, p = _both(x, name, backend=backend, rounding=mode, seed=seed, axis=axis)
            assert_same_bits(a, p, f"{name} axis={axis} {mode}")
    with pytest.raises(ValueError, match="pad"):
        floatlab.quantize(x, name, backend=backend, axis=-1, pad=False)


def test_unsupported_cases_fall_back_or_raise():
    x = torch.randn(4, 40)
    with pytest.raises(ValueError, match="saturate=False"):
        floatlab.quantize(x, "mxfp4", saturate=False)
    for fmt, kw in (("nvfp4_46", {}),):          # Four Over Six: plain pipeline only
        with pytest.raises(fast.FastPathUnsupported):
            floatlab.quantize(x, fmt, backend="eager", **kw)
        assert_same_bits(floatlab.quantize(x, fmt, backend="auto", **kw),
                         floatlab.quantize(x, fmt, backend="plain", **kw), f"{fmt} fallback")


def test_quantize_inside_a_compiled_function():
    """A caller's torch.compile traces the kernel into its own graph (no nested compile)."""
    x = torch.randn(8, 64) * 30
    f = torch.compile(lambda t: floatlab.quantize(t, "e4m3") * 2)
    assert_same_bits(f(x), floatlab.quantize(x, "e4m3", backend="plain") * 2, "e4m3 in compile")
    g = torch.compile(lambda t: floatlab.quantize(t, "hif4"))
    assert_same_bits(g(x), floatlab.quantize(x, "hif4", backend="plain"), "hif4 in compile")


def test_no_recompilation_per_shape():
    from torch._dynamo.utils import counters
    floatlab.quantize(torch.randn(100), "e5m2", rounding="rtz", backend="compiled")
    before = counters["stats"]["unique_graphs"]
    for shape in [(7,), (3, 1000), (2, 5, 9), (123457,)]:
        x = torch.randn(shape)
        assert_same_bits(floatlab.quantize(x, "e5m2", rounding="rtz", backend="compiled"),
                         floatlab.quantize(x, "e5m2", rounding="rtz", backend="plain"), str(shape))
    assert counters["stats"]["unique_graphs"] == before


def test_compiler_failure_falls_back_once_with_a_warning(monkeypatch):
    def broken(key, make):
        def fn(*args):
            raise subprocess.CalledProcessError(1, ["cc"])
        return fn
    monkeypatch.setattr(fast_compile, "compiled", broken)
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")   # float32 e4m3 would take the native kernel
    fast_compile.reset()
    try:
        x = torch.randn(fast.COMPILE_MIN_NUMEL) * 10   # large enough for "auto" to compile
        with pytest.warns(RuntimeWarning, match="torch.compile is unavailable"):
            y = floatlab.quantize(x, "e4m3")
        assert_same_bits(y, floatlab.quantize(x, "e4m3", backend="plain"), "fallback")
        assert not fast_compile.compile_available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            floatlab.quantize(x, "e4m3")              # plain from now on, silently
    finally:
        fast_compile.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,mode", [("e4m3", "rne"), ("hif8", "rna"), ("bf16", "sr"),
                                       ("mxfp4", "rne"), ("nvfp4", "rne"), ("hif4", "rna")])
def test_cuda_matches_cpu_plain(name, mode):
    x = torch.randn(64, 256) * 20
    g = torch.Generator(device="cuda").manual_seed(0) if mode == "sr" else None
    y = floatlab.quantize(x.cuda(), name, rounding=mode, generator=g)
    assert y.device.type == "cuda"
    if mode != "sr":
        assert_same_bits(y.cpu(), floatlab.quantize(x, name, rounding=mode, backend="plain"), name)
    else:
        g2 = torch.Generator(device="cuda").manual_seed(0)
        ref = floatlab.quantize(x.cuda(), name, rounding=mode, generator=g2, backend="plain")
        assert_same_bits(y.cpu(), ref.cpu(), name)
