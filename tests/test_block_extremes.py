"""Block scales at the extremes of every input dtype (issue 12, faults 6 and 1's kind).

Every block scale rule (FLOOR/CEIL/EVEN/RCEIL power-of-two scales, AMAX and Four Over Six with
the FP32 tensor scale, HiF4) sees blocks at the largest and smallest magnitudes float16,
bfloat16, float32 and float64 hold: the dtype's max, its smallest subnormal, all-subnormal
blocks, blocks mixing 3e38 with tiny values, and float64 values beyond float32's range. Checked:

* the plain pipeline and the fused kernels return the same bits (every mode, with a generator);
* both equal an independent computation: exact ``Fraction`` arithmetic for the power-of-two
  rules (scale from the rule's definition, elements rounded on the element's value table), the
  slow references of :mod:`floatlab.reference.block` for NVFP4 and HiF4;
* the regressions found here, each with its right value.
"""

from __future__ import annotations

import bisect
import functools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import floatlab
from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.formats.integer import IntFormat
from floatlab.kernels.dispatch import FastPathUnsupported
from floatlab.reference.block import F32_MAX, hif4_reference, nvfp4_reference
from floatlab.reference.scalar import value_table
from floatlab.rounding import RoundingMode as M
from test_fast import assert_same_bits

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
E8M0 = floatlab.get_format("e8m0")
MXINT8_ELEM = IntFormat(8, frac_bits=6, symmetric=True)
_bf = floatlab.block_format

POW2 = {name: floatlab.get_format(name) for name in
        ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8")}
for _rule in ("ceil", "even", "rceil"):
    for _elem in ("e2m1", "e4m3", "e5m2", "int8"):
        POW2[f"{_elem}/{_rule}"] = _bf(elem=_elem, scale="e8m0", rule=_rule)
    POW2[f"mxint8/{_rule}"] = BlockFormat(MXINT8_ELEM, E8M0, 32, _rule)
AMAX = {"e2m1/ue5m3": _bf(elem="e2m1", scale="ue5m3", block=32),
        "e2m1/e4m3": _bf(elem="e2m1", scale="e4m3", block=16),
        "e2m1/ue4m3+t": _bf(elem="e2m1", scale="ue4m3", block=16, tensor_scale=True),
        "e4m3/ue5m3+t": _bf(elem="e4m3", scale="ue5m3", block=32, tensor_scale=True),
        "e2m1/e8m0 amax": _bf(elem="e2m1", scale="e8m0", rule="amax", block=32),
        "e2m1/e8m0 amax+t": _bf(elem="e2m1", scale="e8m0", rule="amax", block=32, tensor_scale=True)}
FUSED = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
         "nvfp4_2d", "hif4"] + list(AMAX)


def _fmt(name):
    return POW2.get(name) or AMAX.get(name) or floatlab.get_format(name)


def extreme_rows(dtype: torch.dtype, width: int, seed: int = 0) -> torch.Tensor:
    """Rows of ``width`` values (several blocks each) at the ends of ``dtype``'s range."""
    fi = torch.finfo(dtype)
    big, normal = fi.max, fi.smallest_normal
    sub = {torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -133,
           torch.float32: 2.0 ** -149, torch.float64: 5e-324}[dtype]
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(width, generator=g, dtype=torch.float64)
    k = torch.arange(width, dtype=torch.float64)
    f64 = torch.float64
    rows = [torch.full((width,), big, dtype=f64), torch.full((width,), -big, dtype=f64), r.clone(),
            torch.full((width,), sub, dtype=f64), (k % 7 - 3) * sub, normal * (1 + (k % 4) / 4),
            r * normal, torch.where(k % 16 == 0, big, sub * (k % 5)),
            torch.where(k % 16 == 3, -min(big, 3e38), r * 1e-30)]
    rows[2][::5] = big
    if dtype is torch.float64:
        rows += [r * 1e39, r * 1e300, r * 1e-300, r * 1e-310,
                 torch.where(k % 8 == 0, 1e39, r),                   # one huge value per block
                 torch.where(k % 32 == 1, 1.5 * 2.0 ** 126, r * 1e-300),
                 torch.where(k % 16 == 2, -1.7e308, r * 5e-324 * 7)]
    x = torch.stack(rows)
    return x.to(dtype)


# ---- plain pipeline == fused kernels ----------------------------------------------------------
@pytest.mark.parametrize("name", FUSED)
def test_fused_equals_plain_at_the_extremes(name):
    fmt = _fmt(name)
    width = 4 * fmt.block_numel if len(fmt.block) == 1 else 32
    for dtype in DTYPES:
        x = extreme_rows(dtype, width)
        if len(fmt.block) == 2:                      # 16x16 tiles: rows become tiles of the rows
            x = x.repeat_interleave(16, dim=0)
        for mode in (M.RNE, M.RNA, M.RUP, M.RDN, M.RTZ, M.RTO, M.SR):
            gens = [torch.Generator().manual_seed(3) if mode is M.SR else None for _ in range(2)]
            try:
                a = floatlab.quantize(x, fmt, rounding=mode, generator=gens[0], backend="eager")
            except FastPathUnsupported:
                continue
            b = floatlab.quantize(x, fmt, rounding=mode, generator=gens[1], backend="plain")
            assert_same_bits(a, b, f"{name} {dtype} {mode.value}")


@pytest.mark.parametrize("name", ["nvfp4", "hif4", "mxfp4"])
def test_compiled_equals_plain_for_float64_beyond_float32(name):
    x = extreme_rows(torch.float64, 2 * floatlab.get_format(name).block_numel)
    a = floatlab.quantize(x, name, backend="compiled")
    assert_same_bits(a, floatlab.quantize(x, name, backend="plain"), f"compiled {name}")


# ---- the power-of-two rules against exact arithmetic -------------------------------------------
def _floor_log2(q: Fraction) -> int:
    k = q.numerator.bit_length() - q.denominator.bit_length()
    return k - 1 if q < Fraction(2) ** k else k


def _round_half_even(q: Fraction) -> int:
    fl = math.floor(q)
    d = q - fl
    return fl + 1 if d > Fraction(1, 2) or (d == Fraction(1, 2) and fl % 2) else fl


def oracle_scale_exponent(amax: Fraction, elem, rule: str) -> int:
    """The rule's definition on the exact amax (FORMATS.md 0 and 3; torchao/NVIDIA for the
    variants), clamped to E8M0's exponents [-127, 127]."""
    if amax == 0:
        return -127
    top = Fraction(elem.max_value)
    emax = _floor_log2(top)
    f = _floor_log2(amax)
    if rule == "floor":
        e = f - emax
    elif rule == "ceil":
        e = f - emax + (amax != Fraction(2) ** f)
    elif rule == "even":       # amax rounded to the element's mantissa width, then floor
        p = emax - int(elem.quantum_exponent(torch.tensor([emax])).item())
        ulp = Fraction(2) ** (f - p)
        e = _floor_log2(_round_half_even(amax / ulp) * ulp) - emax
    else:                      # rceil: the smallest e with elem_max * 2^e >= amax
        e = _floor_log2(amax / top)
        e += top * Fraction(2) ** e < amax
    return max(-127, min(127, e))


@functools.lru_cache(maxsize=None)
def _clamped_table(elem) -> list[Fraction]:
    lo_end, hi_end = -Fraction(elem.max_negative), Fraction(elem.max_value)
    return [v for v in value_table(elem) if lo_end <= v <= hi_end]   # symmetric ints: no -128


def oracle_element(P: Fraction, elem, mode: M) -> Fraction:
    """``P`` rounded onto the element's value table, clamped to its range (exact)."""
    table = _clamped_table(elem)
    if P >= table[-1]:
        return table[-1]
    if P <= table[0]:
        return table[0]
    i = bisect.bisect_right(table, P) - 1
    if table[i] == P:
        return P
    lo, hi = table[i], table[i + 1]
    tz, aw = (hi, lo) if P < 0 else (lo, hi)           # toward zero, away from zero
    d = abs(P - tz) / (hi - lo)
    tz_even = (abs(tz) / (hi - lo)) % 2 == 0           # parity in units of the gap (IEEE 754)
    up = {M.RNE: d > Fraction(1, 2) or (d == Fraction(1, 2) and not tz_even),
          M.RNA: d >= Fraction(1, 2), M.RTZ: False, M.RUP: P > 0, M.RDN: P < 0,
          M.RTO: tz_even}[mode]
    return aw if up else tz


def oracle_pow2(x: torch.Tensor, fmt: BlockFormat, mode: M) -> torch.Tensor:
    """Fake-quantized rows of ``x`` (blocks along the last axis), exact, cast to ``x.dtype``."""
    b = fmt.block[0]
    out = []
    for v in x.double().reshape(-1, b).tolist():
        xs = [Fraction(t) for t in v]
        e = oracle_scale_exponent(max(abs(t) for t in xs), fmt.element, fmt.rule.value)
        X = Fraction(2) ** e
        for t, raw in zip(xs, v):
            q = oracle_element(t / X, fmt.element, mode) * X
            neg_zero = q == 0 and math.copysign(1, raw) < 0 and fmt.element.neg_zero
            out.append(-0.0 if neg_zero else float(q))
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("name", list(POW2))
def test_power_of_two_rules_equal_exact_arithmetic(name):
    fmt = POW2[name]
    for dtype in DTYPES:
        x = extreme_rows(dtype, 2 * fmt.block[0], seed=len(name))
        for mode in ((M.RNE, M.RUP, M.RDN, M.RTO) if dtype is torch.float64 else (M.RNE,)):
            want = oracle_pow2(x, fmt, mode)
            assert_same_bits(floatlab.quantize(x, fmt, rounding=mode), want, f"{name} {dtype} {mode.value}")


# ---- NVFP4 and HiF4 against the slow references --------------------------------------------------
def _reference_values(x: torch.Tensor, name: str) -> torch.Tensor:
    flat = x.double().reshape(-1).tolist()
    if name == "hif4":
        vals = [v for i in range(0, len(flat), 64) for v in hif4_reference(flat[i:i + 64])["values"]]
    else:
        vals = nvfp4_reference(flat, four_over_six=name == "nvfp4_46")["values"]
    return torch.tensor(vals, dtype=torch.float64).reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("name", ["nvfp4", "nvfp4_46", "hif4"])
def test_float32_pipelines_equal_the_references_at_the_extremes(name):
    b = floatlab.get_format(name).block_numel
    for dtype in DTYPES:
        for row in extreme_rows(dtype, 2 * b, seed=7):   # one tensor per row: its own tensor scale
            x = row.reshape(2, b)
            assert_same_bits(floatlab.quantize(x, name), _reference_values(x, name), f"{name} {dtype}")


# ---- the regressions, each with its right value ----------------------------------------------
def test_float64_beyond_float32_saturates_in_the_float32_pipelines():
    """Fault 6: 1e39 gave a NaN block in nvfp4 and hif4; it saturates to float32's max first."""
    x = torch.tensor([[1e39, 1.0, -2.0, 0.5] * 16], dtype=torch.float64)
    x32 = x.clamp(-F32_MAX, F32_MAX)          # what the float32 pipelines see
    for name in ("nvfp4", "nvfp4_46", "nvfp4_2d", "hif4"):
        xx = x.reshape(4, 16).repeat(4, 1) if name == "nvfp4_2d" else x
        yy = x32.reshape(4, 16).repeat(4, 1) if name == "nvfp4_2d" else x32
        y = floatlab.quantize(xx, name)
        assert torch.isfinite(y).all(), name
        assert torch.equal(y, floatlab.quantize(yy.float(), name).double()), name
        assert torch.equal(floatlab.encode(xx, name).dequantize(), y), name
    assert floatlab.quantize(x, "hif4")[0, 0].item() == 344064.0           # HiF4's largest value
    assert floatlab.quantize(x, "nvfp4")[0, 0].item() == pytest.approx(F32_MAX, rel=2 ** -23)
    assert floatlab.quantize(torch.tensor([-math.inf] + [1.0] * 63, dtype=torch.float64),
                             "hif4").isnan().all()                          # Inf still poisons


def test_nvfp4_tiny_tensor_keeps_its_values():
    """s_enc = 2688 / amax overflowed float32 for amax < 7.9e-36 and fell back to 1, so every
    block scale underflowed to 0; it saturates at float32's max (TransformerEngine)."""
    x = torch.tensor([1e-37, -3e-38, 5e-38, 2e-39] * 4)
    y = floatlab.quantize(x, "nvfp4")
    ref = nvfp4_reference(x.tolist())
    assert ref["tensor_scale"] == pytest.approx(1 / F32_MAX, rel=1e-6)
    assert torch.equal(y, torch.tensor(ref["values"], dtype=torch.float32))
    assert (y[:3] != 0).all() and (y[:3].sign() == x[:3].sign()).all()
    assert y[0].item() == pytest.approx(1e-37, rel=0.01)
    assert floatlab.encode(x, "nvfp4").scales["tensor_scale"].item() == ref["tensor_scale"]


def test_directed_modes_see_a_float64_value_far_below_its_block_scale():
    """rup of 1e-300 beside 1.5 * 2^126 gave 0 on the plain path (x / 2^124 underflowed
    float64); the exact quotient is positive, so it rounds up to the smallest step 0.5 * 2^124."""
    x = torch.zeros(32, dtype=torch.float64)
    x[:4] = torch.tensor([1.5 * 2.0 ** 126, 1e-300, -1e-300, 5e-324], dtype=torch.float64)
    step = 0.5 * 2.0 ** 124                   # X = 2^(126 - 2): E2M1's smallest step times X
    want = {"rup": [step, -0.0, step], "rdn": [0.0, -step, 0.0], "rto": [step, -step, step],
            "rtz": [0.0, -0.0, 0.0], "rne": [0.0, -0.0, 0.0]}
    for mode, vals in want.items():
        for backend in ("plain", "eager"):
            y = floatlab.quantize(x, "mxfp4", rounding=mode, backend=backend)[1:4]
            assert_same_bits(y, torch.tensor(vals, dtype=torch.float64), f"{mode} {backend}")


def test_even_rule_at_float64_max_and_with_integer_elements():
    """EVEN rounded amax through an 11-bit-exponent float that overflowed to Inf at 1.8e308
    (scale 2^-127, output 0.75), and crashed for integer elements (no mantissa field)."""
    x = torch.full((32,), torch.finfo(torch.float64).max, dtype=torch.float64)
    q = floatlab.encode(x, POW2["e2m1/even"])
    assert q.scales["scale"][0].item() == 254                     # 2^127, the largest scale
    assert floatlab.quantize(x, POW2["e2m1/even"])[0].item() == 6 * 2.0 ** 127
    # int8 elements: 7 significant bits; amax 127.5 * 2^k rounds (ties to even) to 128 * 2^k
    y = torch.zeros(32)
    y[0] = 127.5
    assert floatlab.encode(y, POW2["int8/even"]).scales["scale"][0].item() == 127 + 1
    y[0] = 127.25
    assert floatlab.encode(y, POW2["int8/even"]).scales["scale"][0].item() == 127 + 0


def test_amax_rule_with_a_zero_less_scale_format():
    """A zero block under an AMAX rule with E8M0 scales gave a NaN block (0 has no E8M0 code);
    with a tensor scale the fused kernel crashed (6 * 2^127 overflows float32) and q * s_b
    overflowed float32 to -Inf for finite input."""
    x = torch.zeros(2, 32)
    x[1] = torch.linspace(-3, 2, 32)
    for name in ("e2m1/e8m0 amax", "e2m1/e8m0 amax+t"):
        for backend in ("plain", "eager"):
            y = floatlab.quantize(x, AMAX[name], backend=backend)
            assert torch.equal(y[0], torch.zeros(32)), (name, backend)
            assert torch.isfinite(y).all(), (name, backend)
            assert y[1, 0].item() == pytest.approx(-3.0, rel=1e-6), (name, backend)


def test_elements_wider_than_float32_in_float32_kernels():
    """An element whose max exceeds float32 (e11m2) crashed the fused kernels on float32 input."""
    x = torch.zeros(2, 32)
    x[0, :3] = torch.tensor([3e38, 1e-44, -2.5])
    x[1] = 1e-45
    fmt = _bf(elem="e11m2", scale="e8m0")
    assert_same_bits(floatlab.quantize(x, fmt, backend="eager"), floatlab.quantize(x, fmt, backend="plain"))
    for name in ("e11m2", "e9m3", "e11m52"):
        s = torch.tensor([1.3, 3e38, -1e-40, math.inf, 65504.0])
        for sat in (False, True):
            assert_same_bits(floatlab.quantize(s, name, saturate=sat, backend="eager"),
                             floatlab.quantize(s, name, saturate=sat, backend="plain"), name)


def test_elements_finer_than_float64_below_the_scale_are_refused():
    """An element with steps below 2^-969 (11 exponent bits) cannot be rounded exactly in
    float64 when a value lies below 2^-1022 times its block scale: a clear error."""
    fmt = _bf(elem="e11m2", scale="e8m0")
    x = torch.zeros(32, dtype=torch.float64)
    x[0], x[1] = 1e300, 5e-324                   # scale 2^-27: 5e-324 / 2^-27 underflows float64
    with pytest.raises(ValueError, match="steps below 2\\^-969"):
        floatlab.quantize(x, fmt)
    with pytest.raises(FastPathUnsupported, match="steps below 2\\^-969"):
        floatlab.quantize(x, fmt, backend="eager")
    x[1] = 1.0                                   # nothing below 2^-1022 * scale: rounds fine
    assert floatlab.quantize(x, fmt)[1].item() == 1.0


# ---- fault 9: the documented values, computed ----------------------------------------------
DOC_ELEMS = {"E2M1": floatlab.get_format("e2m1"), "E3M2": floatlab.get_format("e3m2"),
             "E2M3": floatlab.get_format("e2m3"), "E4M3": floatlab.get_format("e4m3"),
             "E5M2": floatlab.get_format("e5m2"), "MXINT8": MXINT8_ELEM}


def _doc_text() -> str:
    """README.md and the ScaleRule docstring, where the values are documented."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    return readme.read_text() + ScaleRule.__doc__


def _g9(v: float) -> str:
    return f"{v:.9g}".replace("e+", "e")


def _nvidia_rceil(amax32: np.ndarray, elem_max: float) -> np.ndarray:
    """NVIDIA's scale exponent: amax / elem_max in float32, rounded up to a power of two,
    saturated to E8M0's [2^-127, 2^127] (``cvt.rp.satfinite.ue8m0x2.f32``)."""
    q = (amax32 / np.float32(elem_max)).astype(np.float64)
    m, ex = np.frexp(q)
    e = np.where(m == 0.5, ex - 1, ex)
    return np.clip(np.where(q == 0, -127, e), -127, 127)    # 0 (underflow) rounds up to 2^-127


def test_rceil_differs_from_nvidia_float32_at_exactly_one_amax_per_element():
    """Every float32 amax within 64 ulps of elem_max * 2^k, for every k that reaches E8M0 and
    below: elsewhere the float32 quotient lies more than half an ulp from any power of two (or,
    subnormal, more than half of 2^-149), so both round up to the same power."""
    text = _doc_text()
    for label, elem in DOC_ELEMS.items():
        top = float(elem.max_value)
        centers = np.array([top * 2.0 ** k for k in range(-152, 128) if top * 2.0 ** k < F32_MAX],
                           dtype=np.float32).view(np.int32).astype(np.int64)
        a = np.unique((centers[:, None] + np.arange(-64, 65)).reshape(-1))
        amax = a[(a > 0) & (a < 0x7F800000)].astype(np.int32).view(np.float32)
        x = torch.from_numpy(amax)[:, None]            # one block per amax (blocks of 1)
        ours = BlockFormat(elem, E8M0, 1, "rceil")
        e_ours = floatlab.encode(x, ours).scales["scale"].numpy().astype(np.int64) - 127
        differ = amax[e_ours != _nvidia_rceil(amax, top)]
        if label == "MXINT8":
            assert differ.size == 0
            continue
        one_ulp_above = np.nextafter(np.float32(top * 2.0 ** -127), np.float32(np.inf))
        assert differ.tolist() == [float(one_ulp_above)], label
        assert e_ours[amax == one_ulp_above].tolist() == [-126]
        assert _g9(float(one_ulp_above)) in text, (label, _g9(float(one_ulp_above)))


@pytest.mark.parametrize("rule", ["ceil", "even", "rceil"])
def test_finite_input_gives_inf_from_the_documented_amax(rule):
    """Scan the top of each input dtype: the block max is +Inf exactly from the documented amax
    2^k (1 - 2^-(p+2)) on (float elements), with the scale 2^(k - emax); never with FLOOR."""
    text = _doc_text()
    for label, elem in DOC_ELEMS.items():
        fmt = BlockFormat(elem, E8M0, 1, rule)          # blocks of 1: one block per amax
        floor = BlockFormat(elem, E8M0, 1, "floor")
        emax = math.floor(math.log2(elem.max_value))
        p = emax - int(elem.quantum_exponent(torch.tensor([emax])).item())
        for dtype, k in ((torch.float32, 128), (torch.bfloat16, 128), (torch.float16, 16)):
            fi = torch.finfo(dtype)
            if dtype is torch.float32:     # 2^11 values below and above the threshold, the max
                t = torch.tensor(2.0 ** k * (1 - 2.0 ** -(p + 2)), dtype=torch.float64).float()
                bits = t.view(torch.int32) + torch.arange(-1024, 1024, dtype=torch.int32)
                vals = torch.cat([bits.view(torch.float32), torch.tensor([fi.max])])
            else:                          # every value of the top two binades
                lo = torch.tensor(2.0 ** (k - 2), dtype=dtype).view(torch.int16)
                hi = torch.tensor(fi.max, dtype=dtype).view(torch.int16)
                vals = torch.arange(int(lo), int(hi) + 1, dtype=torch.int16).view(dtype)
            x = vals[:, None]
            inf = torch.isinf(floatlab.quantize(x, fmt)[:, 0])
            assert not torch.isinf(floatlab.quantize(x, floor)).any()
            if not inf.any():
                assert label == "MXINT8" and dtype is not torch.float16
                continue
            first = vals[inf].min()
            assert inf.equal(vals >= first), (label, dtype)        # Inf exactly from there on
            code = floatlab.encode(x[inf][:1], fmt).scales["scale"][0].item()
            if label == "MXINT8":                                  # int8 * 2^-6: steps 2^-6
                # ceil: e = k from amax > 2^(k-1); even: amax rounds to 2^k from 2^k (1 - 2^-8);
                # rceil: e = k only above 127/64 * 2^(k-1) = 2^k (1 - 2^-7): the next value
                want = {"ceil": 2.0 ** k * (1 - 2.0 ** -7), "even": 2.0 ** k * (1 - 2.0 ** -8),
                        "rceil": float(torch.nextafter(torch.tensor(2.0 ** k * (1 - 2.0 ** -7), dtype=dtype),
                                                       torch.tensor(math.inf, dtype=dtype)))}[rule]
                assert first.item() == want and code - 127 == k, (rule, dtype)
            else:
                want = 2.0 ** k * (1 - 2.0 ** -(p + 2))
                assert first.item() == want and code - 127 == k - emax, (label, rule, dtype)
            assert _g9(want) in text, (label, dtype, _g9(want))
            q = floatlab.encode(x[inf][:1], fmt)
            assert floatlab.decode(q, dtype=torch.float64)[0, 0].item() == 2.0 ** k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "hif4", "e2m1"])
def test_cuda_compiled_keeps_negative_zero_and_equals_plain(name):
    """Triton negates as 0 - y, so a negative value rounding to zero came back +0.0 from the
    compiled CUDA kernels (the kernels now apply the sign with copysign)."""
    b = getattr(floatlab.get_format(name), "block_numel", 64)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = extreme_rows(dtype, 2 * b).repeat(8, 1)
        x[0, :4] = torch.tensor([-1e-30, -0.0, -0.3, -1e-45], dtype=torch.float64).to(dtype)
        y = floatlab.quantize(x.cuda(), name, backend="compiled")
        assert_same_bits(y.cpu(), floatlab.quantize(x, name, backend="plain"), f"cuda {name} {dtype}")
