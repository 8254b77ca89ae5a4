"""The table-lookup rounding loop (floatlab.kernels.lookup) gives the bits of the path it replaces
in the training layers: fake_quantize, alone and between a power-of-two scale and unscale."""

from __future__ import annotations

import math

import pytest
import torch

from floatlab.kernels import lookup
from floatlab.nn import QuantState, TensorSpec, get_recipe
from floatlab.nn.functional import quantize_operand
from floatlab.nn.quantizer import fake_quantize
from floatlab.nn.recipe import Gemm, Scaling

pytestmark = pytest.mark.skipif(not lookup.available(), reason="no C++ compiler for the native loop")
TABLE_CASES = [("e4m3", None, True), ("e5m2", None, True), ("hif8", None, True), ("hif8", "rna", True),
               ("int4", None, True), ("e4m3", "rtz", True), ("e5m2", None, False)]


def _path(fmt, rounding, saturate):
    return lambda v: fake_quantize(v, fmt, rounding, saturate, -1, None, grad="none")


def _bits(t):
    return t.contiguous().view(torch.int32)


def _probe() -> torch.Tensor:
    """Every key's value, both ends of its sticky interval and a point inside; specials; random."""
    reps = lookup.representatives()
    mid = (reps[0].view(torch.int32) + (1 << (lookup.SHIFT - 1)) + 5).view(torch.float32)
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(1 << 15, generator=g) * 2.0 ** torch.randint(-30, 30, (1 << 15,), generator=g)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"),
                            1e-45, -1e-45, 3.4028235e38, -3.4028235e38])
    return torch.cat([reps.reshape(-1), mid, rnd, special])


@pytest.mark.parametrize("fmt,rounding,saturate", TABLE_CASES)
def test_lookup_equals_the_replaced_path_bit_for_bit(fmt, rounding, saturate):
    fn = _path(fmt, rounding, saturate)
    lut = lookup.build_table(fn)
    assert lut is not None and lut.shape == (lookup.SIZE,)
    x = _probe()
    assert torch.equal(_bits(lookup.round_scaled(x, lut)), _bits(fn(x)))
    for k in (-20, -3, 0, 5, 40):      # the fused scale: lookup(x * s) / s
        s = 2.0 ** k
        assert torch.equal(_bits(lookup.round_scaled(x, lut, s)), _bits(fn(x * s) / s))


@pytest.mark.parametrize("fmt", ["int8", "bf16", "fp16"])
def test_no_table_where_the_rounding_needs_more_than_three_mantissa_bits(fmt):
    assert lookup.build_table(_path(fmt, None, True)) is None


def test_non_contiguous_and_empty_inputs():
    lut = lookup.build_table(_path("e4m3", None, True))
    x = torch.randn(7, 33).t()
    assert torch.equal(lookup.round_scaled(x, lut), _path("e4m3", None, True)(x))
    assert lookup.round_scaled(torch.empty(0, 3), lut).shape == (0, 3)


@pytest.mark.parametrize("fmt,scaling", [("e4m3", Scaling.DELAYED), ("e5m2", Scaling.CURRENT),
                                         ("hif8", Scaling.NONE), ("int4", Scaling.CURRENT)])
def test_quantize_operand_same_with_and_without_the_loop(fmt, scaling, monkeypatch):
    ts = TensorSpec(fmt, None, True, "contraction", scaling)
    t = torch.randn(64, 50) * 7
    t[3, 4] = float("inf")
    out = {}
    for native in ("1", "0"):
        monkeypatch.setenv("FLOATLAB_NATIVE", native)
        st = QuantState(get_recipe("fp8").default, amax_history=torch.zeros(6, 4))
        st.amax_history[0, 1] = 3.0
        out[native] = (quantize_operand(t, ts, 0, st, Gemm.FPROP), st.amax_history.clone())
    assert torch.equal(_bits(out["1"][0]), _bits(out["0"][0]))
    assert torch.equal(out["1"][1], out["0"][1])


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("rounding", [None, "sr"])
@pytest.mark.parametrize("n", [7, 640, 5000])       # the eager, plain-sized and compiled paths
def test_integer_loop_equals_fake_quantize_and_takes_the_same_draws(fmt, rounding, n):
    from floatlab.formats.registry import get_format
    spec = get_format(fmt)
    assert lookup.int_format_fits(spec)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 2.0 ** torch.randint(-12, 12, (n,), generator=g)
    x[:6] = torch.tensor([0.0, -0.0, float("inf"), -float("nan"), 2.5, -3.5])[:min(6, n)]
    if n > 100:
        x[10:90] = torch.arange(-40, 40) * 0.5                       # ties
        x[90:96] = torch.tensor([127.5, -128.5, 1e30, -1e30, 8388607.5, 1e-40])
    for s in (None, 2.0 ** -3, 2.0 ** 6):
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        xs = x * s if s else x
        want = fake_quantize(xs, fmt, rounding, True, -1, g1, grad="none")
        want = want / s if s else want
        draws = torch.rand(x.shape, dtype=torch.float64, generator=g2) if rounding else None
        got = lookup.int_round(x, spec, draws, s)
        assert torch.equal(_bits(got), _bits(want))
        assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("shape", [(33, 70), (301, 250)])     # the second: 2.3 draw slices
@pytest.mark.parametrize("rounding", [None, "sr"])
def test_int8_operand_same_with_and_without_the_loop(rounding, shape, monkeypatch):
    ts = TensorSpec("int8", rounding, True, "contraction", Scaling.CURRENT)
    t = torch.randn(shape) * 3
    out = {}
    for native in ("1", "0"):
        monkeypatch.setenv("FLOATLAB_NATIVE", native)
        st = QuantState(get_recipe("int8").default, seed=3)
        out[native] = (quantize_operand(t, ts, 0, st, Gemm.DGRAD), st.gen(t.device).get_state())
    assert torch.equal(_bits(out["1"][0]), _bits(out["0"][0]))
    assert torch.equal(out["1"][1], out["0"][1])


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,groups", [
    ((2, 8, 11, 10), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 8, 11, 10), (3, 3), (2, 2), (1, 1), (1, 1), 2),
    ((3, 8, 11, 10), (3, 3), (1, 1), (2, 2), (2, 2), 1),
    ((3, 8, 11, 10), (3, 3), (3, 3), (0, 0), (1, 1), 4),     # stride > kernel: uncovered pixels
    ((4, 6, 1, 40), (1, 5), (1, 2), (0, 2), (1, 1), 3),      # a Conv1d
    ((1, 2, 3, 3), (5, 5), (1, 1), (2, 2), (1, 1), 1),       # windows mostly padding
    ((2, 4, 9, 13), (3, 3), (2, 1), (0, 2), (1, 2), 1),       # kw 3 dilated, border columns
    ((2, 3, 7, 7), (1, 1), (2, 2), (1, 1), (1, 1), 1),        # kw 1, rows of padding only
    ((2, 4, 5, 6), (3, 4), (1, 3), (3, 3), (1, 1), 2)])       # padding wider than the kernel
def test_unfold_rows_is_unfold_laid_out_as_rows(shape, kernel, stride, padding, dilation, groups):
    from torch.nn import functional as F

    from floatlab.nn.functional import _rows
    x = torch.randn(shape)
    x.view(-1)[::7] = -0.0
    want = _rows(F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride), groups)
    got = lookup.unfold_rows(x, kernel, stride, padding, dilation, groups)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.equal(_bits(got), _bits(want))
    for layout in (x.contiguous(memory_format=torch.channels_last), x[:, :, :, :-1] if x.shape[3] > 1 else x):
        want = _rows(F.unfold(layout, kernel, dilation=dilation, padding=padding, stride=stride), groups)
        got = lookup.unfold_rows(layout, kernel, stride, padding, dilation, groups)
        assert got.shape == want.shape and torch.equal(_bits(got), _bits(want))
    assert lookup.unfold_rows(x.double(), kernel, stride, padding, dilation, groups) is None


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,groups", [
    ((2, 8, 11, 10), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 8, 11, 10), (3, 3), (2, 2), (1, 1), (1, 1), 2),
    ((3, 8, 11, 10), (3, 3), (1, 1), (2, 2), (2, 2), 1),
    ((3, 8, 11, 10), (3, 3), (3, 3), (0, 0), (1, 1), 4),
    ((4, 6, 1, 40), (1, 5), (1, 2), (0, 2), (1, 1), 3),
    ((1, 2, 3, 3), (5, 5), (1, 1), (2, 2), (1, 1), 1),       # windows mostly padding
    ((2, 4, 9, 13), (3, 3), (2, 1), (0, 2), (1, 2), 1),       # kw 3 dilated, border columns
    ((2, 3, 7, 7), (1, 1), (2, 2), (1, 1), (1, 1), 1),        # kw 1, rows of padding only
    ((2, 4, 5, 6), (3, 4), (1, 3), (3, 3), (1, 1), 2)])       # padding wider than the kernel
def test_fold_rows_is_fold_bit_for_bit(shape, kernel, stride, padding, dilation, groups):
    """Sums of values 2^40 apart and -0.0: only the same addition order gives the same bits."""
    from torch.nn import functional as F

    from floatlab.nn.functional import _unrows
    n, c, h, w = shape
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    g = torch.Generator().manual_seed(0)
    shp = (groups, n * oh * ow, c // groups * kernel[0] * kernel[1])
    rows = torch.randn(shp, generator=g) * 2.0 ** torch.randint(-20, 20, shp, generator=g)
    rows.view(-1)[::5] = -0.0
    want = F.fold(_unrows(rows, n), (h, w), kernel_size=kernel, dilation=dilation, padding=padding,
                  stride=stride)
    got = lookup.fold_rows(rows, n, (h, w), kernel, stride, padding, dilation, groups)
    assert torch.equal(_bits(got), _bits(want))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100, 4099])
def test_amax_is_scaling_amax(n):
    from floatlab.nn import scaling
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 2.0 ** torch.randint(-140, 120, (n,), generator=g)
    cases = [x, -x.abs(), torch.zeros(n), -torch.zeros(n), torch.full((n,), float("inf")),
             torch.full((n,), float("nan"))]
    if n > 3:
        y = x.clone()
        y[1], y[2], y[-1] = float("inf"), float("nan"), -float("inf")
        cases.append(y)
        z = x.clone()
        z[n // 2] = -torch.finfo(torch.float32).max
        cases.append(z)
    for t in cases:
        want = float(scaling.amax(t))
        got = lookup.amax(t)
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want), (got, want)


def test_amax_reads_dense_layouts_and_refuses_others():
    from floatlab.nn import scaling
    x = torch.randn(4, 6, 5, 7) * 10
    x[1, 2, 3, 4] = -1e30
    cl = x.contiguous(memory_format=torch.channels_last)
    for t in (cl, x.transpose(0, 3), x.reshape(24, 35).t(), x[1:3], cl[2:]):
        assert lookup.amax(t) == float(scaling.amax(t))
    assert lookup.amax(x[:, :, :, :3]) is None        # not dense: the caller's path takes it
    assert lookup.amax(x[::2]) is None and lookup.amax(x[:, :1]) is None
    assert lookup.amax(x.double()) is None
    assert lookup.amax(torch.randn(3).expand(4, 3)) is None


@pytest.mark.parametrize("n,chunk", [(lookup.DRAW_CHUNK * 2 + 5, lookup.DRAW_CHUNK), (1000, 7), (64, 64)])
def test_uniform_draws_slice_by_slice_are_the_draws_of_one_call(n, chunk):
    """What int_round_drawn relies on: torch's CPU uniform_ continues one stream across calls."""
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    whole = torch.empty(n, dtype=torch.float64).uniform_(0, 1, generator=g1)
    parts = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, chunk):
        parts[s:s + chunk].uniform_(0, 1, generator=g2)
    assert torch.equal(whole, parts) and torch.equal(g1.get_state(), g2.get_state())


def test_int_round_drawn_is_int_round_with_all_draws():
    from floatlab.formats.registry import get_format
    spec = get_format("int8")
    t = torch.randn(5000) * 100
    t[::97] = float("inf")
    t[1::89] = float("nan")
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    want = lookup.int_round(t, spec, torch.empty(5000, dtype=torch.float64).uniform_(0, 1, generator=g1), 0.5)
    got = lookup.int_round_drawn(t, spec, lambda d: d.uniform_(0, 1, generator=g2),
                                 torch.empty(333, dtype=torch.float64), 0.5)
    assert torch.equal(_bits(got), _bits(want)) and torch.equal(g1.get_state(), g2.get_state())
