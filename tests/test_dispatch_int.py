"""Integer formats on ``backend="auto"`` run by a few ATen operations (no torch.compile), bit for
bit the plain path: every integer/fixed-point shape it serves, every mode it serves, float32 and
float64, ``out=`` (contiguous and strided), strided inputs, the special values; the cases it
does not serve still reach the other paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab
from floatlab.formats.integer import IntFormat
from floatlab.kernels import compiler
from floatlab.kernels import dispatch
from conftest import stress_float32
from test_fast import assert_same_bits

INT_FORMATS = [IntFormat(8), IntFormat(4), IntFormat(2), IntFormat(16), IntFormat(8, signed=False),
               IntFormat(8, symmetric=True), IntFormat(8, frac_bits=6, symmetric=True),
               IntFormat(12, frac_bits=11), IntFormat(16, signed=False, frac_bits=16),
               IntFormat(16, frac_bits=64)]
MODES = ["rne", "rtz", "rup", "rdn"]


def _inputs(fmt: IntFormat, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """stress_float32's probes for int8, rescaled to ``fmt``'s grid (ties, their neighbours,
    overflow), plus random bit patterns, subnormals and the specials."""
    with np.errstate(all="ignore"):
        base = torch.from_numpy(stress_float32("int8", 4000, seed)).double()
    step = 2.0 ** -fmt.frac_bits
    grid = torch.arange(-2 ** (fmt.nbits - 1) - 2, 2 ** fmt.nbits + 2, dtype=torch.float64) * step
    ties = grid + step / 2
    x = torch.cat([base, base * step, grid, ties, torch.nextafter(ties, torch.tensor(np.inf, dtype=torch.float64)),
                   torch.nextafter(ties, torch.tensor(-np.inf, dtype=torch.float64)), -ties,
                   torch.tensor([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 5e-324, -5e-324,
                                 step / 4, -step / 4, 1e300, -1e300])])
    if dtype is torch.float32:
        return x.to(torch.float32)
    g = torch.Generator().manual_seed(seed)
    return x * (1 + (torch.rand(x.shape, dtype=torch.float64, generator=g) - 0.5) * 2 ** -30)


@pytest.fixture
def no_compiler(monkeypatch):
    """Fail the test if anything reaches torch.compile."""
    def refuse(*args, **kwargs):
        raise AssertionError("the integer path compiled a kernel")
    monkeypatch.setattr(compiler, "run", refuse)


@pytest.mark.parametrize("fmt", INT_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_int_aten_equals_plain(fmt, dtype, mode, no_compiler):
    x = _inputs(fmt, dtype)
    a = floatlab.quantize(x, fmt, rounding=mode, backend="auto")
    p = floatlab.quantize(x, fmt, rounding=mode, backend="plain")
    assert_same_bits(a, p, f"{fmt.name} {mode} {dtype}")
    assert dispatch.quantize_int_aten(x, fmt, floatlab.RoundingMode(mode), None) is not None


@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(8, frac_bits=6, symmetric=True)], ids=lambda f: f.name)
def test_int_aten_out_strides_and_large_tensors(fmt, no_compiler):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 260, generator=g) * 90
    x[3, 4], x[5, 6], x[7, 8] = float("nan"), float("inf"), -0.0
    want = floatlab.quantize(x, fmt, backend="plain")
    out = torch.full_like(x, 7.0)
    assert floatlab.quantize(x, fmt, out=out) is out
    assert_same_bits(out, want, "out=")
    strided = torch.zeros(300, 520)[:, ::2]
    assert floatlab.quantize(x, fmt, out=strided) is strided
    assert_same_bits(strided, want, "strided out=")
    xt = x.t()                                                  # a strided input
    assert_same_bits(floatlab.quantize(xt, fmt), floatlab.quantize(xt, fmt, backend="plain"), "strided x")
    inplace = x.clone()
    floatlab.quantize(inplace, fmt, out=inplace)
    assert_same_bits(inplace, want, "out=x")
    big = torch.randn(dispatch.COMPILE_MIN_NUMEL + 17, generator=g) * 40   # above the compile threshold
    assert_same_bits(floatlab.quantize(big, fmt), floatlab.quantize(big, fmt, backend="plain"), "large")


def test_int_aten_declines_what_it_does_not_serve():
    x = torch.randn(64) * 10
    rne = floatlab.RoundingMode.RNE
    assert dispatch.quantize_int_aten(x, IntFormat(8), floatlab.RoundingMode.SR, None) is None
    assert dispatch.quantize_int_aten(x, IntFormat(8), floatlab.RoundingMode.RNA, None) is None
    assert dispatch.quantize_int_aten(x.bfloat16(), IntFormat(8), rne, None) is None
    assert dispatch.quantize_int_aten(x, IntFormat(8, frac_bits=-3), rne, None) is None
    assert dispatch.quantize_int_aten(x, floatlab.get_format("e4m3"), rne, None) is None
    cases = [(x, IntFormat(8), {"rounding": "rna"}), (x, IntFormat(8, frac_bits=-3), {}),
             (x.bfloat16(), IntFormat(8), {}), (x, IntFormat(8), {"rounding": "sr", "seed": 1})]
    for v, fmt, kw in cases:                 # the other paths serve them, with the same bits
        seed = kw.pop("seed", None)
        gen = (lambda: torch.Generator().manual_seed(seed)) if seed is not None else (lambda: None)
        assert_same_bits(floatlab.quantize(v, fmt, generator=gen(), **kw),
                         floatlab.quantize(v, fmt, generator=gen(), backend="plain", **kw), f"{fmt.name} {kw}")
