"""floatlab.emulate: every floating result rounded, checked against exact rational arithmetic."""

from __future__ import annotations

import bisect
import os
import math

import numpy as np
from fractions import Fraction
from functools import lru_cache

import pytest
import torch

import floatlab
from floatlab.emulation import Emulation, EmulationError, Rounder, emulate
from floatlab.emulation.accumulate import accumulated_matmul
from floatlab.emulation.ops import Kind, classify
from floatlab.emulation.rounding import _NATIVE, round_to_odd_float32, two_product, two_sum
from floatlab.gemm import Accumulator, blocked_matmul

DETERMINISTIC = ["rne", "rna", "rnz", "rtz", "rup", "rdn", "rto"]


# ---- an exact reference: rational results rounded by their textbook definition ----------------
@lru_cache(maxsize=None)
def _table(name: str) -> tuple[Fraction, ...]:
    """Every finite value of the format, sorted (from its decoded codes)."""
    spec = floatlab.get_format(name)
    v = spec.decode(torch.arange(2 ** spec.bits))
    return tuple(Fraction(x) for x in sorted(set(v[torch.isfinite(v)].tolist())))


def exact_round(X: Fraction, name: str, mode: str) -> float:
    """Round the rational ``X`` into ``name`` (in range) by the definition of each mode."""
    table = _table(name)
    i = bisect.bisect_left(table, X)
    if i < len(table) and table[i] == X:
        return float(X)
    assert 0 < i < len(table), "test values must stay inside the format's range"
    lo, hi = table[i - 1], table[i]
    negative = X < 0
    tz, aw = (hi, lo) if negative else (lo, hi)
    gap = hi - lo
    d = abs(X - tz) / gap
    tz_even = (abs(tz) / gap) % 2 == 0   # parity counted in units of the gap (IEEE 754)
    up = {"rtz": False, "rna": d >= Fraction(1, 2), "rnz": d > Fraction(1, 2),
          "rne": d > Fraction(1, 2) or (d == Fraction(1, 2) and not tz_even),
          "rup": not negative, "rdn": negative, "rto": tz_even}[mode]
    r = aw if up else tz
    return -0.0 if r == 0 and negative else float(r)


def _operands(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    table = torch.tensor([float(v) for v in _table(name)], dtype=torch.float64)
    i = torch.randint(0, len(table), (2, n), generator=g)
    return table[i[0]].float(), table[i[1]].float()


def _in_range(X: Fraction, name: str) -> bool:
    t = _table(name)
    return t[0] < X < t[-1]


EXACT_OPS = {
    "add": (lambda a, b: a + b, lambda A, B: A + B),
    "sub": (lambda a, b: a - b, lambda A, B: A - B),
    "mul": (lambda a, b: a * b, lambda A, B: A * B),
    "div": (lambda a, b: a / b, lambda A, B: A / B if B != 0 else None),
}


def _check_basic_arithmetic(name, mode, working, n):
    a, b = _operands(name, n, seed=sum(map(ord, name + mode)))
    for op, (torch_op, exact) in EXACT_OPS.items():
        with emulate(name, rounding=mode, working=working):
            got = torch_op(a, b)
        for x, y, z in zip(a.tolist(), b.tolist(), got.tolist()):
            X = exact(Fraction(x), Fraction(y))
            if X is None or not _in_range(X, name):
                continue
            want = exact_round(X, name, mode)
            assert z == want, f"{name} {mode} {op}({x!r}, {y!r}) = {z!r}, exact rounding {want!r}"


FORMATS = ["fp16", "bf16", "e4m3", "e5m2", "hif8"]


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("name", FORMATS)
def test_basic_arithmetic_is_correctly_rounded(name, mode):
    # working="auto" computes in float32 for round-to-nearest here, float64 otherwise
    _check_basic_arithmetic(name, mode, "auto", 150)


@pytest.mark.parametrize("name", FORMATS)
def test_basic_arithmetic_float64_working(name):
    _check_basic_arithmetic(name, "rne", "float64", 150)


@pytest.mark.slow
@pytest.mark.parametrize("working", ["auto", "float64", "input"])
@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("name", FORMATS)
def test_basic_arithmetic_is_correctly_rounded_long(name, mode, working):
    if working == "input" and (mode not in ("rne", "rna", "rnz") or name == "bf16"):
        pytest.skip("'input' is exact only where 'auto' computes in float32 too")
    _check_basic_arithmetic(name, mode, working, 5000)


@pytest.mark.parametrize("mode", ["rtz", "rup", "rdn", "rto", "rne"])
def test_sums_beyond_float64_round_exactly(mode):
    # 1 + 2^-100 is 1.0 in float64; directed modes still see the tiny term (TwoSum residual)
    a = torch.tensor([1.0, 1.0, -1.0, 3.0])
    b = torch.tensor([2.0 ** -100, -2.0 ** -100, 2.0 ** -100, -2.0 ** -90])
    with emulate("bf16", rounding=mode):
        got = (a + b).tolist()
        prod = (a * b).tolist()
    want = [exact_round(Fraction(x) + Fraction(y), "bf16", mode) for x, y in zip(a.tolist(), b.tolist())]
    assert got == want
    assert prod == [exact_round(Fraction(x) * Fraction(y), "bf16", mode) for x, y in zip(a.tolist(), b.tolist())]


def test_unrounded_float32_inputs_round_once():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(500, generator=g), torch.randn(500, generator=g)
    for mode in ("rne", "rtz", "rup"):
        with emulate("fp16", rounding=mode):
            got = (a * b + 0).tolist(), (a / b).tolist()
        for x, y, m, q in zip(a.tolist(), b.tolist(), got[0], got[1]):
            P = exact_round(Fraction(x) * Fraction(y), "fp16", mode)
            assert m == P
            assert q == exact_round(Fraction(x) / Fraction(y), "fp16", mode)


def test_auto_working_precision_equals_float64():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x = torch.randn(16, 32)
    for fmt in ("fp16", "e4m3", "hif8", "bf16"):
        with emulate(fmt, working="auto"):
            y1 = torch.softmax(mlp(x), -1)
        with emulate(fmt, working="float64"):
            y2 = torch.softmax(mlp(x), -1)
        assert torch.equal(y1, y2), fmt


def test_every_result_is_a_value_of_the_format():
    torch.manual_seed(1)
    x = torch.randn(8, 16, requires_grad=True)
    lin = torch.nn.Linear(16, 16)
    ln = torch.nn.LayerNorm(16)
    for fmt, mode in [("fp16", "rne"), ("e4m3", "rtz"), ("hif8", "rna"), ("e5m2", "sr")]:
        with emulate(fmt, rounding=mode, generator=torch.Generator().manual_seed(0)) as em:
            y = torch.nn.functional.gelu(ln(lin(x))).sum(-1).mean()
            y.backward()
        for t in (y, x.grad, lin.weight.grad, lin.bias.grad):
            assert torch.equal(floatlab.quantize(t.detach(), fmt, saturate=True if fmt == "e4m3" else None), t), fmt
        assert em.report()["rounded"] > 10
        x.grad = lin.weight.grad = lin.bias.grad = None


def test_softmax_decomposes_into_rounded_primitives():
    x = torch.randn(4, 10, dtype=torch.float32, generator=torch.Generator().manual_seed(2)) * 4
    with emulate("bf16") as em:
        y = torch.softmax(x, -1)
    q = lambda t: floatlab.quantize(t.double(), "bf16")  # noqa: E731
    m = x.amax(-1, keepdim=True)
    e = q(torch.exp(q(x.double() - m.double())))
    want = q(e / q(e.sum(-1, keepdim=True)))
    assert torch.equal(y, want.float())
    assert "aten._softmax.default/decomposed" in em.counts
    with emulate("bf16", fused="result") as em2:
        y2 = torch.softmax(x, -1)
    assert torch.equal(y2, floatlab.quantize(torch.softmax(x.double(), -1), "bf16").float())
    assert em2.report() == {"rounded": 1}


def test_moves_and_sources_pass_through_unrounded():
    x = torch.tensor([0.1, 0.2, 0.3])
    with emulate("e4m3") as em:
        v = x.view(3, 1).t().reshape(-1)
        c = torch.cat([x, x])
        w = torch.where(x > 0.15, x, torch.zeros_like(x))
        s = torch.full((2,), 0.1)
        m = x.max()
        r = x * 1
    assert torch.equal(v, x) and torch.equal(c[:3], x) and w[1] == x[1] and s[0] == torch.tensor(0.1)
    assert m == x[2]
    assert torch.equal(r, floatlab.quantize(x, "e4m3"))
    assert em.report() == {"rounded": 1}


def test_round_inputs():
    x = torch.tensor([1.0 + 2.0 ** -8])   # a tie between the bf16 values 1 and 1 + 2^-7
    y = torch.tensor([2.0 ** -8])
    with emulate("bf16"):
        a = x + y
    with emulate("bf16", round_inputs=True):
        b = x + y
    assert a.item() == exact_round(Fraction(x.item()) + Fraction(y.item()), "bf16", "rne")
    xr = floatlab.quantize(x, "bf16").item()
    yr = floatlab.quantize(y, "bf16").item()
    assert b.item() == exact_round(Fraction(xr) + Fraction(yr), "bf16", "rne")
    assert a.item() != b.item()


def test_in_place_and_out_variants_are_rounded():
    x = torch.linspace(-3, 3, 13)
    with emulate("e5m2", rounding="rtz"):
        y = x.clone()
        y.mul_(1.3)
        y += 0.01
        out = torch.empty(13)
        torch.add(x, 0.77, out=out)
    ref = floatlab.quantize(floatlab.quantize(x.double() * 1.3, "e5m2", "rtz") + 0.01, "e5m2", "rtz").float()
    assert torch.equal(y, ref)
    assert torch.equal(out, floatlab.quantize(x.double() + 0.77, "e5m2", "rtz").float())


def test_matmul_with_accumulator_equals_gemm_blocked_matmul():
    g = torch.Generator().manual_seed(5)
    a = floatlab.quantize(torch.randn(12, 40, generator=g), "fp16")
    b = floatlab.quantize(torch.randn(40, 9, generator=g), "fp16")
    for spec in ("fp32:rne:16", "fp32:rtz:8", "bf16:rne:4", "fp16:rup:1"):
        acc = Accumulator.parse(spec)
        with emulate("fp32", accumulator=acc) as em:
            c = a @ b
        assert torch.equal(c, blocked_matmul(a, b, acc)), spec
        assert em.report() == {"accumulated": 1}


def test_accumulator_orders_and_batched_products():
    x = torch.tensor([[2.0 ** -12] * 16 + [1.0]])          # 16 * 2^-12 + 1
    y = torch.ones(17, 1)
    with emulate("fp16", accumulator="fp16:rne:1"):
        fwd = x @ y                                       # tiny terms summed first: exact
    with emulate("fp16", accumulator="fp16:rne:1", order="reverse"):
        rev = x @ y                                       # every tiny term lost against 1
    with emulate("fp16", accumulator="fp16:rne:1", order="pairwise"):
        pw = x @ y                                        # tiny pairs exact, 1 added last
    assert rev.item() == 1.0
    assert fwd.item() == 1.0 + 2.0 ** -8 == pw.item()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 20, generator=g), torch.randn(3, 20, 4, generator=g)
    with emulate("bf16", accumulator="fp32:rtz:4"):
        c = torch.bmm(a, b)
    acc = Rounder("fp32", "rtz")
    want = floatlab.quantize(accumulated_matmul(a, b, acc, 4), "bf16").float()
    assert torch.equal(c, want)
    for i in range(3):
        assert torch.equal(c[i], floatlab.quantize(blocked_matmul(a[i], b[i], Accumulator("fp32", "rtz", 4)), "bf16"))


def test_linear_layer_with_accumulator_adds_bias_once():
    g = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(24, 5)
    x = torch.randn(6, 24, generator=g)
    with emulate("fp16", accumulator="fp32:rtz:8") as em:
        y = lin(x)
    prod = floatlab.quantize(blocked_matmul(x, lin.weight.detach().t().contiguous(), Accumulator("fp32", "rtz", 8)).double(), "fp16")
    want = floatlab.quantize(prod + lin.bias.detach().double(), "fp16").float()
    assert torch.equal(y, want)
    assert "aten.addmm.default/accumulated" in em.counts


def test_reductions_result_vs_accumulator():
    x = torch.tensor([1.0] + [2.0 ** -12] * 1000)
    with emulate("fp16"):
        once = x.sum()
    with emulate("fp16", reductions="accumulator"):
        rec = x.sum()                       # recursive fp16 summation: stagnates at 1
        mean = x.mean()
        cs = x.cumsum(0)
    assert once.item() == exact_round(1 + Fraction(1000, 4096), "fp16", "rne")
    assert rec.item() == 1.0
    assert mean.item() == exact_round(Fraction(1, 1001), "fp16", "rne")
    assert torch.all(cs == 1.0)
    with emulate("fp16", reductions="accumulator", accumulator="fp32:rne:1"):
        wide = x.sum(0, keepdim=True)
    assert wide.shape == (1,) and wide.item() == once.item()


def test_stochastic_rounding_is_reproducible_and_unbiased():
    x = torch.full((20000,), 1.0 + 2.0 ** -9)   # one quarter of a bf16 ulp above 1
    def run(seed):
        with emulate("bf16", rounding="sr", generator=torch.Generator().manual_seed(seed)):
            return x * 1 + 0
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    up = (a > 1).double().mean().item()
    assert abs(up - 0.25) < 0.02


def test_round_exact_stochastic_probability():
    r = Rounder("bf16", "sr", generator=torch.Generator().manual_seed(0))
    s = torch.ones(40000, dtype=torch.float64)
    e = torch.full_like(s, 2.0 ** -9)          # a quarter of the gap 2^-7 above 1
    y = r.round_exact(s, e)
    assert set(y.unique().tolist()) == {1.0, 1.0 + 2.0 ** -7}
    assert abs((y > 1).double().mean().item() - 0.25) < 0.01


def test_two_sum_and_two_product_are_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, dtype=torch.float64, generator=g) * 2.0 ** torch.randint(-60, 60, (1000,), generator=g)
    b = torch.randn(1000, dtype=torch.float64, generator=g)
    s, e = two_sum(a, b)
    p, f = two_product(a, b)
    for x, y, s1, e1, p1, f1 in zip(a.tolist(), b.tolist(), s.tolist(), e.tolist(), p.tolist(), f.tolist()):
        assert Fraction(s1) + Fraction(e1) == Fraction(x) + Fraction(y)
        assert Fraction(p1) + Fraction(f1) == Fraction(x) * Fraction(y)


@pytest.mark.parametrize("key", sorted(_NATIVE, key=str))
def test_native_shortcut_equals_quantize(key):
    spelled, saturate = key
    spec = floatlab.get_format(spelled)
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (40_000,), generator=g, dtype=torch.int64).to(torch.int32)
    x32 = torch.cat([bits.view(torch.float32), torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])])
    bits64 = torch.randint(-2 ** 62, 2 ** 62, (20_000,), generator=g, dtype=torch.int64)
    x64 = torch.cat([bits64.view(torch.float64), torch.randn(20_000, dtype=torch.float64, generator=g) * spec.max_value])
    if spec.bits <= 16:   # ties and their float64 neighbours
        v = spec.decode(torch.arange(2 ** spec.bits))
        v = v[torch.isfinite(v)].unique()
        mid = (v[:-1] + v[1:]) / 2
        x64 = torch.cat([x64, mid, torch.nextafter(mid, torch.full_like(mid, math.inf)),
                         torch.nextafter(mid, torch.full_like(mid, -math.inf))])
    r = Rounder(spec, "rne", saturate=saturate or None)
    assert r.native is not None
    for x in (x32, x64, x32.to(torch.bfloat16), x32.to(torch.float16)):
        want = floatlab.quantize(x, spec, "rne", saturate=saturate or None, backend="plain")
        got = r(x)
        same = (got == want) | (got.isnan() & want.isnan())
        assert bool(same.all()), (spelled, x.dtype, x[~same][:4], got[~same][:4], want[~same][:4])


def test_round_to_odd_float32():
    x = torch.tensor([1.0 + 2.0 ** -30, 1.0 - 2.0 ** -40, 3.0, -(1 + 2.0 ** -25 + 2.0 ** -40)], dtype=torch.float64)
    y = round_to_odd_float32(x).double().tolist()
    assert y == [1.0 + 2.0 ** -23, 1.0 - 2.0 ** -24, 3.0, -(1 + 2.0 ** -23)]


def test_round_to_odd_native_numpy_and_torch_versions_agree(monkeypatch):
    # the native loop (scan.round_to_odd), the NumPy version and the torch version (tensors above
    # _NUMPY_MAX_NUMEL without the loop) give the same bits: random bit patterns, ties, values
    # just inside and beyond float32's range, subnormals, zeros, infinities
    from floatlab.emulation import rounding as R
    from floatlab.emulation import scan
    g = torch.Generator().manual_seed(11)
    pats = torch.randint(-2 ** 62, 2 ** 62, (50000,), generator=g, dtype=torch.int64).view(torch.float64)
    base = torch.randn(20000, generator=g, dtype=torch.float64) * 2.0 ** torch.randint(-160, 140, (20000,), generator=g)
    f32 = base.float().double()
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, 3.4028235677973366e38, 3.4028235677973366e38 * (1 + 2 ** -30),
                            3.5e38, -3.5e38, 1e-46, -1e-46, 2.0 ** -149, 2.0 ** -150, 2.0 ** -150 * 3, 1e300],
                           dtype=torch.float64)
    x = torch.cat([pats[pats.isfinite()], base, f32, f32 + f32 * 2.0 ** -24, f32 * (1 + 2.0 ** -40), special])
    native = scan.round_to_odd(x)
    assert native is not None and native.dtype is torch.float32
    numpy_version = R._round_to_odd_float32_numpy(x)
    assert scan.round_to_odd(x[::2]) is None       # a strided tensor: the others handle it
    monkeypatch.setattr(scan, "library", lambda: None)
    torch_version = R.round_to_odd_float32(x)      # above _NUMPY_MAX_NUMEL: the torch operations
    assert x.numel() > R._NUMPY_MAX_NUMEL
    for other in (numpy_version, torch_version):
        assert torch.equal(native.view(torch.int32), other.view(torch.int32))


def test_nested_contexts_innermost_wins():
    x = torch.tensor([1.0 + 2.0 ** -9 + 2.0 ** -12])
    with emulate("bf16") as outer:
        a = x * 1
        with emulate("fp16") as inner:
            b = x * 1
        c = x * 1
    assert a.item() == c.item() == floatlab.quantize(x, "bf16").item()
    assert b.item() == floatlab.quantize(x, "fp16").item()
    assert inner.report() == {"rounded": 1} and outer.report() == {"rounded": 2}


def test_other_dispatch_modes_see_the_program_not_the_rounding():
    from torch.utils.flop_counter import FlopCounterMode
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with FlopCounterMode(display=False) as fc:
        with emulate("fp16", accumulator="fp32:rne:4"):
            a @ b
    assert fc.get_total_flops() == 2 * 8 * 16 * 4


def test_linalg_result_and_refuse():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g) + 6 * torch.eye(6)
    b = torch.randn(6, 1, generator=g)
    with emulate("fp16") as em:
        x = torch.linalg.solve(A, b)
    assert torch.equal(x, floatlab.quantize(torch.linalg.solve(A.double(), b.double()), "fp16").float())
    assert any(k.endswith("/linalg-result") for k in em.counts)
    with pytest.raises(EmulationError, match="linalg='refuse'"):
        with emulate("fp16", linalg="refuse"):
            torch.linalg.solve(A, b)


def test_fp64_emulation_is_plain_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64, generator=g)
    w = torch.randn(7, 3, dtype=torch.float64, generator=g)
    with emulate("fp64"):
        y = torch.tanh(x @ w).sum(0)
    assert torch.equal(y, torch.tanh(x @ w).sum(0))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown format"):
        emulate("fp17")
    with pytest.raises(TypeError, match="block format"):
        emulate("mxfp4")
    with pytest.raises(ValueError, match="unknown rounding"):
        emulate("fp16", rounding="nearest-ish")
    with pytest.raises(ValueError, match="order"):
        emulate("fp16", order="random")
    with pytest.raises(ValueError, match="working"):
        emulate("fp16", working="fp128")
    with pytest.raises(ValueError, match="hybrid"):
        emulate("fp16", rounding="hybrid")
    with pytest.raises(EmulationError, match="cannot hold every value"):
        with emulate("bf16"):
            torch.ones(3, dtype=torch.float16) * 3
    with pytest.raises(EmulationError, match="complex"):
        with emulate("fp16"):
            torch.ones(3, dtype=torch.complex64) * torch.ones(3)


def test_classification_table():
    aten = torch.ops.aten
    assert classify(aten.add.Tensor) is Kind.ELEMENTWISE
    assert classify(aten.add_.Tensor) is Kind.ELEMENTWISE
    assert classify(aten.view.default) is Kind.MOVE
    assert classify(aten.mm.default) is Kind.CONTRACTION
    assert classify(aten._softmax.default) is Kind.FUSED
    assert classify(aten._linalg_solve_ex.default) is Kind.LINALG
    assert classify(aten.linalg_vector_norm.default) is Kind.FUSED
    assert classify(aten.convolution.default) is Kind.CONVOLUTION
    assert classify(aten.scatter.src) is Kind.MOVE and classify(aten.scatter.reduce) is Kind.ELEMENTWISE
    assert isinstance(emulate("fp16"), Emulation)


F = torch.nn.functional
WHITELIST_OPS = {
    "exp": torch.exp, "exp2": torch.exp2, "expm1": torch.expm1, "log": lambda t: torch.log(t.abs()),
    "log2": lambda t: torch.log2(t.abs()), "log10": lambda t: torch.log10(t.abs()),
    "log1p": lambda t: torch.log1p(t.abs()), "sin": torch.sin, "cos": torch.cos, "tan": torch.tan,
    "asin": lambda t: torch.asin(torch.tanh(t)), "acos": lambda t: torch.acos(torch.tanh(t)),
    "atan": torch.atan, "atan2": lambda t: torch.atan2(t, t.flip(0)), "sinh": torch.sinh,
    "cosh": torch.cosh, "tanh": torch.tanh, "asinh": torch.asinh, "acosh": lambda t: torch.acosh(t.abs() + 1),
    "atanh": lambda t: torch.atanh(torch.tanh(t)), "sigmoid": torch.sigmoid, "erf": torch.erf,
    "erfc": torch.erfc, "erfinv": lambda t: torch.erfinv(torch.tanh(t)), "silu": F.silu,
    "softplus": F.softplus, "elu": F.elu, "selu": F.selu, "celu": F.celu, "rsqrt": lambda t: torch.rsqrt(t.abs()),
    "pow": lambda t: torch.pow(t.abs(), 1.7), "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
    "leaky_relu": F.leaky_relu, "xlogy": lambda t: torch.xlogy(t, t.abs()),
}


def test_whitelist_is_tested():
    from floatlab.emulation.ops import TRANSCENDENTAL
    assert set(WHITELIST_OPS) == TRANSCENDENTAL


@pytest.mark.parametrize("mode", ["rne", "rtz", "rup"])
@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "hif8"])
def test_verified_float32_transcendentals_equal_the_float64_path(name, mode):
    # auto computes these in float32 and keeps an element only when it is far from every
    # rounding boundary, redoing the rest in float64: the answers must equal the float64 path's
    g = torch.Generator().manual_seed(11)
    x = torch.cat([torch.randn(6000, generator=g) * 3, torch.randn(2000, generator=g) * 1e-3,
                   torch.randn(2000, generator=g) * 30, torch.linspace(-20, 20, 4001)])
    for op_name, op in WHITELIST_OPS.items():
        with emulate(name, rounding=mode, working="auto"):
            a = op(x)
        with emulate(name, rounding=mode, working="float64"):
            b = op(x)
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), (name, mode, op_name)


def test_float32_subnormal_results_are_redone_for_wide_formats():
    # bf16 reaches below float32's normal range: a product there is not exact in float32
    a = torch.tensor([2.0 ** -70 * 1.0078125, -(2.0 ** -64) * 1.5, 3.0])
    b = torch.tensor([2.0 ** -62 * 1.0078125, 2.0 ** -70 * 1.0078125, 5.0])
    with emulate("bf16"):
        p = a * b
    want = [exact_round(Fraction(x) * Fraction(y), "bf16", "rne") for x, y in zip(a.tolist(), b.tolist())]
    assert p.tolist() == want


def _bits(t: torch.Tensor) -> torch.Tensor:
    """float32 bits with every NaN made one canonical NaN (NaN payloads are not specified)."""
    return torch.where(t.isnan(), torch.full_like(t, math.nan), t).view(torch.int32)


def _hard_float32_operands(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrounded float32 operands: random bit patterns (subnormals, huge, NaN, Inf), the format's
    rounding midpoints plus or minus tiny terms (double rounding traps), ties, -0, overflow."""
    g = torch.Generator().manual_seed(seed)
    spec = floatlab.get_format(name)
    m = spec.mbits
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    mid = ((bits & ~((1 << (23 - m)) - 1)) | (1 << (22 - m))).view(torch.float32)   # midpoints
    tiny = torch.randn(n, generator=g) * 2.0 ** torch.randint(-60, -20, (n,), generator=g)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 3.4e38, -3.4e38, 1e-45, -1e-45,
                            1.1754942e-38, 465.0, 2.0 ** -133, 3 * 2.0 ** -134])
    a = torch.cat([bits.view(torch.float32), mid, mid, torch.randn(n, generator=g), special, special])
    b = torch.cat([torch.randn(n, generator=g), tiny, -tiny, mid, special.flip(0), special])
    return a, b


@pytest.mark.parametrize("name", ["bf16", "tf32"])
def test_float32_lane_of_float32_layout_formats_equals_the_float64_path(name):
    # bf16 and tf32 reach past float32's range, and inputs are not rounded at entry: "auto"
    # computes + - * / sqrt in float32 and redoes the results that land on a rounding midpoint;
    # the answers must equal the float64 path's bit for bit
    a, b = _hard_float32_operands(name, 800, seed=5)
    ops = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
           "div": lambda x, y: x / y, "sqrt": lambda x, y: torch.sqrt(x), "relu": lambda x, y: torch.relu(x),
           "max": torch.maximum, "add_": lambda x, y: x.clone().add_(y), "mul2d": lambda x, y: x.view(-1, 1) * y[:7]}
    for rounding, saturate in [("rne", None), ("rna", None), ("rne", True)]:
        for op_name, op in ops.items():
            with emulate(name, rounding=rounding, saturate=saturate) as em:
                got = op(a, b)
            assert em._lane, name
            with emulate(name, rounding=rounding, saturate=saturate, working="float64"):
                want = op(a, b)
            assert torch.equal(_bits(got), _bits(want)), (name, rounding, saturate, op_name)
    # a float32 sum on a midpoint that the exact sum lies above: 465 + 2^-28.5 rounds up in bf16
    with emulate("bf16"):
        assert (torch.tensor([465.0]) + torch.tensor([2.7e-9])).item() == 466.0


@pytest.mark.parametrize("name", ["fp16", "e4m3", "e5m2", "hif8"])
def test_float32_lane_of_narrow_formats_equals_the_float64_path(name):
    # Inputs are not rounded at entry, so the double rounding theorem for p <= 11 does not
    # cover the first operation: float32 results on one of the format's midpoints must be
    # redone. Operands: the format's midpoints plus or minus tiny terms, random bits, specials
    g = torch.Generator().manual_seed(11)
    spec = floatlab.get_format(name)
    codes = torch.arange(2 ** spec.bits)
    vals = floatlab.decode(codes, name, dtype=torch.float64)
    vals = torch.unique(vals[vals.isfinite()])
    mid = ((vals[:-1] + vals[1:]) / 2).to(torch.float32)          # exact in float32
    n = mid.numel()
    tiny = torch.randn(n, generator=g) * 2.0 ** torch.randint(-60, -25, (n,), generator=g)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 3.4e38, 1e-45, -1e-45, 65520.0,
                            464.0, 480.0, 57344.0, 61440.0, 2.0 ** 15 * 1.25, 2.0 ** -25, 2.0 ** -10])
    a = torch.cat([mid, mid, mid, bits.view(torch.float32), special])
    b = torch.cat([tiny, -tiny, torch.zeros(n), torch.randn(n, generator=g), special.flip(0)])
    ops = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * (1 + y),
           "div": lambda x, y: x / (1 + y), "sqrt": lambda x, y: torch.sqrt(x * x + y)}
    for rounding, saturate in [("rne", None), ("rna", None), ("rne", True)]:
        for op_name, op in ops.items():
            with emulate(name, rounding=rounding, saturate=saturate) as em:
                got = op(a, b)
            assert em._lane, name
            with emulate(name, rounding=rounding, saturate=saturate, working="float64"):
                want = op(a, b)
            assert torch.equal(_bits(got), _bits(want)), (name, rounding, saturate, op_name)
    # the case that showed it: (1 + 2^-11) + 2^-40 is a fp16 midpoint in float32
    for working in ("auto", "float64"):
        with emulate("fp16", working=working):
            assert (torch.tensor([1 + 2.0 ** -11]) + torch.tensor([2.0 ** -40])).item() == 1 + 2.0 ** -10
    with emulate("fp16", working="input"):       # float32 arithmetic, then one rounding: by definition
        assert (torch.tensor([1 + 2.0 ** -11]) + torch.tensor([2.0 ** -40])).item() == 1.0


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "hif8"])
def test_sum_off_a_midpoint_by_less_than_float64_resolution_rounds_to_its_side(name):
    # M + t with M a rounding midpoint and |t| far below M's float64 ulp: the float64 sum is M
    # itself, and only the exact error (TwoSum) tells the side; oracle: the neighbour on t's side
    spec = floatlab.get_format(name)
    codes = torch.arange(2 ** min(spec.bits, 16))
    vals = floatlab.decode(codes, name, dtype=torch.float64)
    vals = torch.unique(vals[vals.isfinite() & (vals > 0)])
    lower, upper = vals[:-1][::7], vals[1:][::7]                 # adjacent values, every 7th pair
    mid = ((lower + upper) / 2).to(torch.float32)
    keep = mid.to(torch.float64) == (lower + upper) / 2          # float32 holds every midpoint here
    lower, upper, mid = lower[keep], upper[keep], mid[keep]
    t = (mid * 2.0 ** -70).clamp(min=2.0 ** -149)                # below float64's resolution of M
    neg_t = -t                    # outside the mode: a negation inside it rounds t to the format
    for working in ("auto", "float64"):
        for rounding in ("rne", "rna"):
            with emulate(name, rounding=rounding, working=working):
                up, down, down2 = mid + t, mid - t, mid + neg_t
            assert torch.equal(up.double(), upper), (name, working, rounding)
            assert torch.equal(down.double(), lower), (name, working, rounding)
            assert torch.equal(down2.double(), lower), (name, working, rounding)


def test_bits_equal_finds_what_torch_finds():
    from floatlab.emulation.mode import _bits_equal
    g = torch.Generator().manual_seed(2)
    for shape in [(), (1,), (5000,), (64, 300), (3, 4, 5)]:
        x = (torch.randint(0, 4, shape, generator=g) * 2.0 ** -8 + 1).float()
        for t in (x, x.t() if x.dim() == 2 else x):
            hit = (t.view(torch.int32) & 0xFFFF) == 0
            got = _bits_equal(t, 0xFFFF, 0)
            if not bool(hit.any()):
                assert got is None
            elif t.dim() == 0:
                assert got == ()
            else:
                assert all(torch.equal(u, v) for u, v in zip(got, hit.nonzero(as_tuple=True)))


@pytest.mark.parametrize("name,mode,saturate", [
    ("e4m3", "rne", None), ("e4m3", "rne", True), ("e4m3", "rtz", None), ("e4m3", "rup", None),
    ("e4m3", "rto", None), ("hif8", "rna", None), ("hif8", "rne", None), ("hif8", "rdn", True),
    ("e3m2", "rne", None), ("e2m1", "rna", None), ("e4m3fnuz", "rne", None)])
def test_table_lookup_rounding_equals_quantize(name, mode, saturate):
    # every (sign, exponent, 4 top mantissa bits) of float32 with its low 19 bits zero, one, all
    # ones and random (ties, midpoints +- 1 ulp, subnormals, -0, overflow, Inf, NaN), and random bits
    from floatlab.emulation import lut
    g = torch.Generator().manual_seed(4)
    base = torch.arange(1 << 13, dtype=torch.int64) << lut.SHIFT
    low = (1 << lut.SHIFT) - 1
    rand_low = torch.randint(0, low + 1, base.shape, generator=g)
    bits = torch.cat([base, base + 1, base + low, base + rand_low, base + (1 << (lut.SHIFT - 1)),
                      torch.randint(0, 1 << 32, (20000,), generator=g)])
    x = bits.to(torch.int32).view(torch.float32)
    r = Rounder(name, mode, saturate=saturate)
    assert r._lut_wanted and r._table() is not None
    want = floatlab.quantize(x, name, mode, saturate=saturate, backend="plain")
    for native in ("1", "0"):   # the C++ loop and the torch fallback
        lut._state.clear()
        old = os.environ.get("FLOATLAB_NATIVE")
        os.environ["FLOATLAB_NATIVE"] = native
        try:
            got = r(x)
            got2d = r(x[:40000].view(200, 200).t())   # non-contiguous
        finally:
            lut._state.clear()
            if old is None:
                del os.environ["FLOATLAB_NATIVE"]
            else:
                os.environ["FLOATLAB_NATIVE"] = old
        assert torch.equal(_bits(got), _bits(want)), (name, mode, native)
        assert torch.equal(_bits(got2d), _bits(want[:40000].view(200, 200).t())), (name, mode, native)


@pytest.mark.parametrize("name,mode", [("e4m3", "rne"), ("e4m3", "rtz"), ("e4m3", "rup"), ("hif8", "rna"),
                                       ("hif8", "rdn"), ("e2m1", "rto")])
def test_table_lookup_of_float64_through_round_to_odd_equals_quantize(name, mode):
    # float64 inputs go through round-to-odd float32 first: the values on and next to every
    # midpoint and grid point of the format, beyond float32's range and below its subnormals
    g = torch.Generator().manual_seed(6)
    spec = floatlab.get_format(name)
    v = spec.decode(torch.arange(2 ** spec.bits)).to(torch.float64)
    v = v[torch.isfinite(v)].unique()
    mid = torch.cat([v, (v[:-1] + v[1:]) / 2])
    up, down = torch.full_like(mid, math.inf), torch.full_like(mid, -math.inf)
    x = torch.cat([mid, torch.nextafter(mid, up), torch.nextafter(mid, down),
                   mid * (1 + 2.0 ** -40), mid * (1 - 2.0 ** -40),
                   torch.randint(-2 ** 62, 2 ** 62, (20000,), generator=g, dtype=torch.int64).view(torch.float64),
                   torch.tensor([1e300, -1e300, 1e-300, -1e-300, 1e-46, 0.0, -0.0, math.inf, -math.inf, math.nan],
                                dtype=torch.float64)])
    r = Rounder(name, mode)
    assert r._lut_wanted and r._table() is not None
    want = floatlab.quantize(x, name, mode, backend="plain")
    got = r(x)
    assert got.dtype is torch.float64
    same = (got == want) | (got.isnan() & want.isnan())
    assert bool(same.all()), (name, mode, x[~same][:4], got[~same][:4], want[~same][:4])
    assert torch.equal(torch.signbit(got[got == 0]), torch.signbit(want[got == 0]))


def test_signalling_nans_raise_no_numpy_warnings():
    # the NumPy views of the fast checks must not warn where torch's casts are silent
    import warnings
    snan = torch.tensor([0x7F800001, -0x00600000, 0x7FA00000], dtype=torch.int32).view(torch.float32)
    x = torch.cat([snan, torch.tensor([465.0, 1.0, -2.5])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("bf16", "fp16", "e4m3", "hif8"):
            with emulate(name):
                y = (x + x[[3]]) * 0.5 + torch.exp(x) + x[3:].double().sum().float()
            assert y[:3].isnan().all(), name


def test_sqrt_is_checked_like_a_library_function():
    # torch's float32 sqrt is not correctly rounded on CPU: sqrt(65504) gives 255.9375, an fp16
    # midpoint, where the exact root 255.93749237 lies below it (fp16: 255.875)
    x = torch.tensor([65504.0, 16376.0])
    for working in ("auto", "float64"):
        with emulate("fp16", working=working):
            assert torch.sqrt(x).tolist() == [255.875, 127.9375], working
    g = torch.Generator().manual_seed(5)
    v = floatlab.quantize(torch.rand(1 << 16, generator=g) * 1000, "fp16")
    for name in ("fp16", "e4m3", "bf16"):
        with emulate(name) as em:
            a = v + torch.zeros_like(v)      # a result of the mode: values of the format
            assert em._in_format(a)
            got = torch.sqrt(a)
        assert em._lane
        with emulate(name, working="float64"):
            want = torch.sqrt(v + torch.zeros_like(v))
        assert torch.equal(_bits(got), _bits(want)), name


def test_results_of_the_mode_lose_their_mark_when_changed():
    # operands that are results of the mode skip the midpoint check (double rounding theorem);
    # a write after that - in place, through a view, outside the mode - must bring it back
    for how in ("copy_", "view"):
        em = emulate("fp16")
        with em:
            a = torch.tensor([1.0, 2.0]) + torch.zeros(2)
            tiny = torch.tensor([2.0 ** -24]) + torch.zeros(1)   # fp16's smallest subnormal
        assert em._in_format(a) and em._in_format(tiny)
        mid = torch.tensor([1 + 2.0 ** -11, 2.0])            # an fp16 midpoint, not an fp16 value
        if how == "copy_":
            a.copy_(mid)
        else:
            a[:1].copy_(mid[:1])
        with em:
            s = a + tiny       # float32: 1 + 2^-11 (a tie, to even), the midpoint; exact: above it
        assert s[0].item() == 1 + 2.0 ** -10, how
        assert not em._in_format(a)


# ---- the float32 lane's scans and the nudged redo (floatlab.emulation.scan, Emulation._nudged) --
def _scan_fallback(monkeypatch, fn, *args):
    from floatlab.emulation import scan
    monkeypatch.setattr(scan, "library", lambda: None)
    try:
        return fn(*args)
    finally:
        monkeypatch.undo()


def test_scans_equal_their_numpy_fallback_and_definition(monkeypatch):
    from floatlab.emulation import scan
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (40000,), generator=g, dtype=torch.int64).to(torch.int32)
    bits[::5] &= ~0x1FFF                                       # many low-bits-zero candidates
    x = torch.cat([bits.view(torch.float32), torch.tensor([0.0, -0.0, math.inf, math.nan, 1e-45])])
    y = floatlab.quantize(x, "fp16")
    u = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    for yy, mask, value, tiny in [(y, 0x1FFF, 0, True), (y, 0x1FFF, 0, False), (None, 0xFFFF, 0x8000, False)]:
        want = ((u & mask) == value)
        if yy is not None:
            want &= ~(x == yy)
        if tiny:
            want |= ~(x.abs() >= 2.0 ** -126)
        want = want.nonzero().flatten().numpy()
        assert (scan.bits(x, yy, mask, value, tiny) == want).all()
        assert (_scan_fallback(monkeypatch, scan.bits, x, yy, mask, value, tiny) == want).all()
    for shift, t in [(12, 32), (19, 32), (15, 7)]:
        r = u & ((1 << shift) - 1)
        e = (u >> 23) & 0xFF
        want = ((r < t) | (r >= (1 << shift) - t) | (e == 0) | (e == 255)).nonzero().flatten().numpy()
        assert (scan.grid(x, shift, t) == want).all()
        assert (_scan_fallback(monkeypatch, scan.grid, x, shift, t) == want).all()


def test_grid_check_holds_for_float_formats_and_can_fail():
    from floatlab.emulation import scan
    for name, mode in [("fp16", "rne"), ("bf16", "rne"), ("e4m3", "rtz"), ("e5m2", "rup"), ("hif8", "rna"),
                       ("e3m2", "rne"), ("e4m3", "rne")]:
        r = Rounder(name, mode)
        assert scan.grid_bits(r) == r.p, (name, mode)
    # a grid one bit too coarse for fp16: fp16's midpoints fall inside its intervals
    fp16 = Rounder("fp16")
    fake = type("CoarseFp16", (), {"p": 10, "mode": fp16.mode, "spec": "coarse-fp16", "saturate": False,
                                   "backend": None, "__call__": lambda self, t: fp16(t)})()
    assert scan.grid_bits(fake) is None


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "e5m2", "hif8", "e3m2"])
def test_nudged_redo_equals_the_float64_path(name):
    # results of + - * / reciprocal square that land on a midpoint of the format in float32, with
    # tensor, broadcast and Python-number operands; rsub through `number - tensor`
    g = torch.Generator().manual_seed(17)
    spec = floatlab.get_format(name)
    vals = floatlab.decode(torch.arange(2 ** min(spec.bits, 16)), name, dtype=torch.float64)
    vals = torch.unique(vals[vals.isfinite()])
    mid = ((vals[:-1] + vals[1:]) / 2).to(torch.float32)
    n = mid.numel()
    tiny = torch.randn(n, generator=g) * 2.0 ** torch.randint(-60, -22, (n,), generator=g)
    a = torch.cat([mid, mid, mid - 0.75, torch.randn(n, generator=g)])
    b = torch.cat([tiny, -tiny, torch.full((n,), 0.75), torch.randn(n, generator=g)])
    row = torch.randn(1, 7, generator=g)
    ops = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "rsub": lambda x, y: 0.75 - x,
           "mul": lambda x, y: x * (1 + y), "mul_scalar": lambda x, y: x * 1.5, "div": lambda x, y: x / (1 + y),
           "div_scalar": lambda x, y: x / 3.0, "reciprocal": lambda x, y: torch.reciprocal(x),
           "square": lambda x, y: torch.square(x), "add_row": lambda x, y: x[: (x.numel() // 7) * 7].view(-1, 7) + row,
           "add_scalar": lambda x, y: x + 0.375}
    for rounding, saturate in [("rne", None), ("rna", None), ("rne", True)]:
        for op_name, op in ops.items():
            with emulate(name, rounding=rounding, saturate=saturate) as em:
                got = op(a, b)
            assert em._lane, name
            with emulate(name, rounding=rounding, saturate=saturate, working="float64"):
                want = op(a, b)
            assert torch.equal(_bits(got), _bits(want)), (name, rounding, saturate, op_name)


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3"])
def test_native_nudge_equals_its_numpy_version_on_every_operand_layout(monkeypatch, name):
    # Emulation._nudged decides the flagged elements in scan.nudge's C++ loop where the operands'
    # layouts allow and in NumPy otherwise: both must give the same bits, and the same refusal (None:
    # redo in float64) where an operand or result is not finite
    from floatlab.emulation import scan
    g = torch.Generator().manual_seed(5)
    spec = floatlab.get_format(name)
    vals = floatlab.decode(torch.arange(2 ** min(spec.bits, 16)), name, dtype=torch.float64)
    vals = torch.unique(vals[vals.isfinite()])
    mid = ((vals[:-1] + vals[1:]) / 2).to(torch.float32)
    mid = mid[(mid.abs() > 2.0 ** -60) & (mid.abs() < 2.0 ** 60)]   # squares, quotients stay finite (checked apart below)
    n = (mid.numel() // 8) * 8
    x = mid[:n].reshape(-1, 8).contiguous()
    tiny = (torch.randn(x.shape, generator=g) * 2.0 ** -30).contiguous()
    row, lead1, zero_dim = tiny[0].clone(), tiny[:1].clone(), torch.tensor(2.0 ** -28)
    cases = [("add", (x, tiny)), ("sub", (x, tiny)), ("rsub", (x, tiny)), ("add", (x, row)), ("sub", (lead1, x)),
             ("add", (x, zero_dim)), ("add", (x, 2.0 ** -27)), ("mul", (x, 1 + tiny)), ("mul", (x, 1.0 + 2 ** -20)),
             ("div", (x, 1 + row)), ("div", (1 + tiny, x)), ("square", (x,)), ("reciprocal", (x,))]
    ref = {"add": torch.add, "sub": torch.sub, "rsub": torch.rsub, "mul": torch.mul, "div": torch.div,
           "square": torch.square, "reciprocal": torch.reciprocal}
    native_used = 0
    for op_name, args in cases:
        func = getattr(torch.ops.aten, op_name).Tensor if op_name not in ("square", "reciprocal") \
            else getattr(torch.ops.aten, op_name).default
        if op_name in ("add", "sub", "mul", "div") and not isinstance(args[1], torch.Tensor):
            func = getattr(torch.ops.aten, op_name).Scalar
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        out = ref[op_name](*args)
        out = out.expand(torch.broadcast_shapes(*(t.shape for t in tensors))).contiguous()
        em = emulate(name)
        y = em.rounder(out)
        pos = np.arange(out.numel(), dtype=np.int64)[::3]
        native = em._nudged(func, args, out, y, pos)
        native_used += scan.nudge(op_name, out, [a if isinstance(a, torch.Tensor) else float(a) for a in args],
                                  pos) is not None
        monkeypatch.setattr(scan, "library", lambda: None)
        try:
            plain = em._nudged(func, args, out, y, pos)
        finally:
            monkeypatch.undo()
        assert native is not None and plain is not None, op_name
        assert torch.equal(_bits(native), _bits(plain)), (name, op_name)
    assert native_used == len(cases)
    # a non-finite operand or result: both refuse (the caller redoes the elements in float64)
    bad = x.clone()
    bad.view(-1)[3] = math.inf
    out = bad + tiny
    em = emulate(name)
    pos = np.arange(out.numel(), dtype=np.int64)
    assert em._nudged(torch.ops.aten.add.Tensor, (bad, tiny), out, em.rounder(out), pos) is None
    monkeypatch.setattr(scan, "library", lambda: None)
    assert em._nudged(torch.ops.aten.add.Tensor, (bad, tiny), out, em.rounder(out), pos) is None


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "hif8"])
def test_transcendentals_near_boundaries_equal_the_float64_path(name):
    # inputs whose exp / log / tanh land within a few float32 ulps of the format's boundaries
    spec = floatlab.get_format(name)
    vals = floatlab.decode(torch.arange(2 ** min(spec.bits, 16)), name, dtype=torch.float64)
    vals = torch.unique(vals[vals.isfinite() & (vals > 0)])
    mid = (vals[:-1] + vals[1:]) / 2
    pts = torch.cat([mid, vals])
    pts = pts[(pts > 1e-30) & (pts < 1e30)]
    wiggle = torch.tensor([-3e-7, -1e-7, 0.0, 1e-7, 3e-7], dtype=torch.float64)
    x_exp = (pts.log()[:, None] + wiggle).flatten().float()
    x_log = (pts.exp().clamp(max=3e38)[:, None] * (1 + wiggle)).flatten().float()
    cases = {"exp": (torch.exp, x_exp), "log": (torch.log, x_log), "tanh": (torch.tanh, x_exp / 10),
             "sigmoid": (torch.sigmoid, x_exp)}
    for mode in ("rne", "rna", "rtz", "rup"):
        for op_name, (op, x) in cases.items():
            with emulate(name, rounding=mode) as em:
                got = op(x)
            assert em._lane or (name == "bf16" and mode in ("rtz", "rup"))   # bf16: RTZ keeps 3.4e38
            with emulate(name, rounding=mode, working="float64"):
                want = op(x)
            assert torch.equal(_bits(got), _bits(want)), (name, mode, op_name)


def test_marks_follow_selections_and_views_only_from_values_of_the_format():
    # y is a float32 number just above a fp16 midpoint (not a fp16 value): y - 2^-24 is a tie in
    # float32 that lands on the midpoint 1 + 2^-11, while the exact difference lies above it and
    # rounds to 1 + 2^-10. A move of y that wrongly kept a "value of the format" mark would take
    # the double rounding shortcut and give 1.0.
    y = torch.tensor([[1 + 2.0 ** -11 + 2.0 ** -23]])
    moves = {"view": lambda t: t.view(-1), "reshape": lambda t: t.reshape(1, 1, 1), "clone": torch.clone,
             "t": lambda t: t.t(), "amax": lambda t: t.amax(-1), "max.dim": lambda t: t.max(-1).values,
             "expand": lambda t: t.expand(2, 1), "slice": lambda t: t[:, :1], "squeeze": torch.squeeze}
    with emulate("fp16") as em:
        x = y * 1.0                                     # a result of the mode: fp16 values
        for name, op in moves.items():
            assert float((op(y) - 2.0 ** -24).flatten()[0]) == 1 + 2.0 ** -10, name
            assert em._in_format(op(x)), name
        both = torch.ops.aten.max.other(x, y)           # an elementwise op: y's value, rounded
        assert float(both.flatten()[0]) == 1 + 2.0 ** -10
        assert float((both - 2.0 ** -24).flatten()[0]) == 1 + 2.0 ** -10


def test_selections_of_format_values_skip_rounding_but_neg_makes_no_negative_zero():
    # e4m3fnuz has no -0: neg of a +0 result must round to +0 (as the float64 path does), while
    # relu / abs / maximum of results of the mode are returned as they are
    a = torch.tensor([0.0, 1.5, -2.0, 0.3])
    for working in ("auto", "float64"):
        with emulate("e4m3fnuz", working=working):
            x = a * 1.0
            n = torch.neg(x)
            r = torch.relu(x)
            m = torch.maximum(x, n)
        assert n.tolist()[0] == 0.0 and math.copysign(1, n.tolist()[0]) == 1.0, working
        assert r.tolist() == [0.0, 1.5, 0.0, x.tolist()[3]] and m.tolist() == [0.0, 1.5, 2.0, x.tolist()[3]]
