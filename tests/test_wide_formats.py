"""Formats at the edges of float64, and codes wider than 32 bits (issue 12, faults 1-3).

* Fault 1: a power-of-two scaling that over- or underflows float64 near the extremes of a
  format's range (``2^1074`` for e11m52's subnormals, ``2^-1100``, ``|x| / 2^qe`` underflowing to
  0 far below a coarse grid). Every scalar format whose range reaches float64's ends is rounded
  on the plain path against the Fraction oracle (:mod:`floatlab.reference.scalar`), on the fused
  path against the plain path for every input dtype, and through encode/decode; e11m52 against
  the identity (it is IEEE binary64) and e8m23 against numpy's float32 cast.
* Fault 2: codes of 33..64 bits survive encode -> QTensor -> dequantize and save/load.
* Fault 3: decode of every code width, 64-bit codes with the top bit set included.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import floatlab
from floatlab.formats.floating import FloatFormat
from floatlab.formats.integer import IntFormat
from floatlab.kernels.dispatch import FastPathUnsupported
from floatlab.reference.scalar import _bisect_neighbours, _neighbours, reference_round
from floatlab.rounding import RoundingMode as M

DETERMINISTIC = [M.RNE, M.RNA, M.RNZ, M.RTZ, M.RUP, M.RDN, M.RTO]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
F64_TINY, F64_MAX = 2.0 ** -1074, 1.7976931348623157e308

# formats whose grid reaches the ends of float64 (or far beyond float32), each kind of special
# values: IEEE binary64 itself, fewer mantissa bits, large and negative biases, fn/fnone/fnuz,
# no subnormals, no zero, unsigned, P3109 (Inf on the top code), fixed point scaled far out
EXTREME = ["e11m52", "e11m10", "e11m2", "e10m30", "e8m24", "fp32", "e11m2_b1073", "e11m2fn_b1024",
           "e11m0fn_b1024", "e10m3_b1000", "e9m3_b-200", "e5m2_b-900", "e11m52_nosub",
           "ue11m52", "ue11m3fn_b1030_nosub", "ue11m3fn_b1071_nozero", "ue8m0fn_b-700_nozero",
           "e11m2fnuz_b1024", "e11m1fnone_b1024", "e11m2fnuz_b1024_inf", "p3109_p3", "p3109_p1ue"]
EXTREME_INT = [IntFormat(8, frac_bits=1070), IntFormat(12, frac_bits=-1000),
               IntFormat(4, signed=False, frac_bits=1074)]


def _fmt(f):
    return floatlab.get_format(f)


def _ids(f):
    return f if isinstance(f, str) else f.name


def _inputs(fmt, n: int = 160, seed: int = 0) -> torch.Tensor:
    """float64 inputs: log-uniform over the format's range and beyond, random bit patterns,
    values on the grid and the midpoints between grid neighbours (and their float64 neighbours),
    and float64's own extremes."""
    with np.errstate(all="ignore"):
        return _inputs_np(fmt, n, np.random.default_rng(seed))


def _inputs_np(fmt, n: int, rng) -> torch.Tensor:
    lo = max(math.log2(fmt.smallest_positive) - 4, -1074.0)
    hi = min(math.log2(fmt.max_value) + 3, 1023.99)
    mags = np.exp2(rng.uniform(lo, hi, n)) * rng.choice([-1.0, 1.0], n)
    bits = rng.integers(0, 2 ** 63, n, dtype=np.int64).view(np.float64) * rng.choice([-1.0, 1.0], n)
    # midpoints of grid neighbours: rounding mags onto the grid toward zero / away
    q_lo = floatlab.quantize(torch.from_numpy(mags), fmt, rounding="rtz", saturate=True,
                             backend="plain").numpy()
    q_hi = floatlab.quantize(torch.from_numpy(mags), fmt, rounding="rup", saturate=True,
                             backend="plain").numpy()
    mids = np.where(np.isfinite(q_lo + q_hi), q_lo / 2 + q_hi / 2, 0.0)
    specials = [F64_TINY, 3 * F64_TINY, 1e-310, 2.0 ** -1022, 1e-300, 1e-307, F64_MAX, 2.0 ** 1023,
                0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -2.5, fmt.max_value,
                fmt.smallest_positive, 0.75 * fmt.smallest_positive, 0.5 * fmt.smallest_positive,
                1.5 * fmt.smallest_positive, fmt.smallest_normal]
    specials = np.array(specials + [-v for v in specials])
    x = np.concatenate([mags, bits, q_lo, mids, np.nextafter(mids, np.inf),
                        np.nextafter(mids, -np.inf), specials])
    return torch.from_numpy(x)


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equal with equal signs, or both NaN."""
    return (torch.isnan(a) & torch.isnan(b)) | ((a == b) & (torch.signbit(a) == torch.signbit(b)))


# ---- fault 1: the right values of the issue ------------------------------------------------

@pytest.mark.parametrize("backend", ["plain", "eager", "auto"])
def test_issue_values_e11m52_is_the_identity_at_the_bottom_of_float64(backend):
    x = torch.tensor([5e-324, 1e-310, 2.0 ** -1022, 1e-300], dtype=torch.float64)
    assert torch.equal(floatlab.quantize(x, "e11m52", backend=backend), x)   # was [0, 0, 1e-323, 1.49e-308]
    q = floatlab.encode(x, "e11m52")
    assert torch.equal(q.codes, x.view(torch.int64))                      # IEEE binary64 bit patterns
    assert torch.equal(q.dequantize(torch.float64), x)


@pytest.mark.parametrize("backend", ["plain", "eager"])
def test_issue_values_e11m2_and_e11m10(backend):
    one = torch.tensor([2.0 ** -1022], dtype=torch.float64)
    assert floatlab.quantize(one, "e11m2", backend=backend).item() == 2.0 ** -1022   # was 2^-1023
    x = torch.tensor([1e-307], dtype=torch.float64)
    # 1e-307 lies in the binade [2^-1020, 2^-1019): e11m10's spacing there is 2^-1030
    right = float(round(Fraction(1e-307) / Fraction(2) ** -1030) * Fraction(2) ** -1030)
    y = floatlab.quantize(x, "e11m10", backend=backend).item()
    assert y == right and abs(y / 1.0004e-307 - 1) < 1e-4                 # was 7.8e-310
    assert floatlab.decode(floatlab.encode(x, "e11m10"), dtype=torch.float64).item() == right


def test_scaling_far_below_a_coarse_grid_does_not_underflow():
    """|x| / 2^qe underflowed to 0 for 5e-324 in a format spaced by 8: rup gave 0, not 8."""
    x = torch.tensor([F64_TINY, -F64_TINY], dtype=torch.float64)
    for backend in ("plain", "eager"):
        assert floatlab.quantize(x, "e2m1_b-3", rounding="rup", backend=backend).tolist() == [8.0, -0.0]
        assert floatlab.quantize(x, "e2m1_b-3", rounding="rto", backend=backend).tolist() == [8.0, -8.0]
        assert floatlab.quantize(x, "int8", rounding="rdn", backend=backend).tolist() == [0.0, -1.0]


# ---- fault 1: sweeps against the independent references ------------------------------------

def _check_oracle(name, n: int, cases) -> None:
    fmt = _fmt(name)
    x = _inputs(fmt, n=n, seed=1)
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
    for mode, sat in cases:
        g = torch.Generator().manual_seed(5)
        ours = floatlab.quantize(x, fmt, rounding=mode, saturate=sat, generator=g,
                                 sr_bits=7 if mode is M.SR else None, backend="plain")
        draws = torch.randint(0, 2 ** 7, x.shape, generator=torch.Generator().manual_seed(5))
        for xi, oi, ri in zip(x.tolist(), ours.tolist(), draws.tolist()):
            kw = {"rint": ri, "sr_bits": 7} if mode is M.SR else {}
            ref = reference_round(xi, fmt, mode, sat, **kw)
            same = (math.isnan(oi) and math.isnan(ref)) or \
                (oi == ref and math.copysign(1, oi) == math.copysign(1, ref))
            assert same, f"{fmt.name} {mode.value} sat={sat}: x={xi!r} ours={oi!r} oracle={ref!r}"


ALL_CASES = [(m, s) for m in DETERMINISTIC + [M.SR] for s in (False, True)]
# formats too wide to tabulate make the oracle bisect over up to 2^64 codes: fewer cases by default
WIDE_CASES = [(M.RNE, False), (M.RUP, False), (M.RTO, False), (M.SR, False), (M.RNE, True)]


@pytest.mark.parametrize("name", EXTREME + EXTREME_INT, ids=_ids)
def test_plain_path_matches_the_fraction_oracle(name):
    _check_oracle(name, 20, ALL_CASES if _fmt(name).bits <= 20 else WIDE_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTREME + EXTREME_INT, ids=_ids)
def test_plain_path_matches_the_fraction_oracle_full(name):
    _check_oracle(name, 400, ALL_CASES)


def _check_fused(name, n: int) -> None:
    fmt = _fmt(name)
    x64 = _inputs(fmt, n=n, seed=2)
    for dtype in DTYPES:
        x = x64.to(dtype)
        for mode in DETERMINISTIC + [M.SR, M.SR_HALF]:
            for sat in (False, True):
                kw = dict(rounding=mode, saturate=sat)
                if mode.is_stochastic:
                    kw["sr_bits"] = 9 if (mode is M.SR and sat) else None
                try:
                    fast = floatlab.quantize(x, fmt, generator=torch.Generator().manual_seed(3),
                                             backend="eager", **kw)
                except FastPathUnsupported:
                    # constants not exact in float32 (a largest value below 2^-149): only the
                    # plain path serves, and "auto" takes it
                    consts = [fmt.max_value] + ([] if fmt.has_zero else [fmt.smallest_positive])
                    assert dtype is not torch.float64 and any(
                        c < 2.0 ** 128 and float(torch.tensor(c).float()) != c for c in consts)
                    fast = floatlab.quantize(x, fmt, generator=torch.Generator().manual_seed(3),
                                             backend="auto", **kw)
                plain = floatlab.quantize(x, fmt, generator=torch.Generator().manual_seed(3),
                                          backend="plain", **kw)
                bad = ~_same(fast, plain)
                assert not bad.any(), (f"{fmt.name} {dtype} {mode.value} sat={sat}: x={x[bad][:3]} "
                                       f"fast={fast[bad][:3]} plain={plain[bad][:3]}")


@pytest.mark.parametrize("name", EXTREME + EXTREME_INT, ids=_ids)
def test_fused_path_equals_plain_for_every_input_dtype(name):
    _check_fused(name, 100)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXTREME + EXTREME_INT, ids=_ids)
def test_fused_path_equals_plain_for_every_input_dtype_full(name):
    _check_fused(name, 4000)


@pytest.mark.parametrize("name", EXTREME + EXTREME_INT, ids=_ids)
def test_encode_decode_equals_quantize_at_the_extremes(name):
    fmt = _fmt(name)
    x = _inputs(fmt, seed=3)
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
    for mode in ("rne", "rup", "rdn"):
        q = floatlab.encode(x, fmt, rounding=mode)
        y = floatlab.quantize(x, fmt, rounding=mode, backend="plain")
        assert _same(q.dequantize(torch.float64), y).all()
        assert _same(floatlab.decode(q.codes, fmt, dtype=torch.float64), y).all()
        assert torch.equal(floatlab.encode(y, fmt).codes, q.codes)   # the values encode to the same codes


def test_e11m52_is_the_identity_on_every_float64():
    rng = np.random.default_rng(11)
    bits = torch.from_numpy(rng.integers(-2 ** 63, 2 ** 63 - 1, 20_000, dtype=np.int64))
    sub = torch.from_numpy(rng.integers(0, 2 ** 52, 5_000, dtype=np.int64))     # subnormals
    x = torch.cat([bits, sub, -sub - 1]).view(torch.float64)
    x = torch.cat([x, torch.tensor([F64_TINY, -F64_TINY, F64_MAX, -F64_MAX, math.inf, -math.inf, 0.0, -0.0],
                                   dtype=torch.float64)])
    for backend in ("plain", "eager"):
        for mode in ("rne", "rtz", "rup", "rdn", "rto", "sr"):
            assert _same(floatlab.quantize(x, "e11m52", rounding=mode, backend=backend), x).all()
    q = floatlab.encode(x, "e11m52")
    finite = ~torch.isnan(x)
    assert torch.equal(q.codes[finite], x.view(torch.int64)[finite])        # binary64's own codes
    assert _same(q.dequantize(torch.float64), x).all()


def test_e8m23_is_numpys_float32_cast_of_float64():
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.integers(0, 2 ** 63, 100_000, dtype=np.int64).view(np.float64),
                        np.exp2(rng.uniform(-160, 130, 100_000)) * rng.choice([-1.0, 1.0], 100_000)])
    f32 = np.float32(np.exp2(rng.integers(-149, 128, 20_000)).astype(np.float32))
    mids = f32.astype(np.float64) * (1 + 2.0 ** -24)                       # exact ties
    x = np.concatenate([x, mids, np.nextafter(mids, 0), -mids])
    with np.errstate(over="ignore", invalid="ignore"):
        theirs = torch.from_numpy(x.astype(np.float32).astype(np.float64))
    for backend in ("plain", "eager"):
        ours = floatlab.quantize(torch.from_numpy(x), FloatFormat(8, 23), backend=backend)
        assert _same(ours, theirs).all()


def test_the_bisection_reference_equals_the_table_reference():
    """The oracle's path for formats too wide to tabulate, checked where the table exists."""
    rng = np.random.default_rng(13)
    for name in ["e4m3", "e5m2", "e2m1", "e8m0", "ue4m3", "e3m2fnone_b-3", "ue5m3fn_b40_nozero",
                 "p3109_p1", "p3109_p5ue", "e4m2_nosub"]:
        fmt = _fmt(name)
        lo, hi = math.log2(fmt.smallest_positive) - 3, math.log2(fmt.overflow_boundary)
        xs = np.exp2(rng.uniform(lo, hi, 300)) * (rng.choice([-1.0, 1.0], 300) if fmt.signed else 1)
        for xi in list(xs) + [0.0, fmt.max_value, fmt.smallest_positive]:
            if xi == 0 and not fmt.has_zero:
                continue
            X = Fraction(float(xi))
            assert _bisect_neighbours(fmt, X) == _neighbours(fmt, X), (name, xi)


# ---- formats beyond float64 are refused clearly ----------------------------------------------

@pytest.mark.parametrize("name,what", [("e11m2fn", "beyond float64"), ("e11m52fn", "beyond float64"),
                                       ("e11m52fnuz", "finer than float64"),
                                       ("e11m2_b2000", "finer than float64"),
                                       ("e11m2_b-5", "beyond float64")])
def test_formats_beyond_float64_are_refused_with_the_reason(name, what):
    with pytest.raises(ValueError, match=what):
        floatlab.get_format(name)


def test_fixed_point_beyond_float64_is_refused():
    with pytest.raises(ValueError, match="finer than float64"):
        IntFormat(8, frac_bits=1075)
    with pytest.raises(ValueError, match="beyond float64"):
        IntFormat(16, frac_bits=-1010)


# ---- fault 2: codes wider than 32 bits in QTensor storage and files ------------------------

def _wide_family():
    """One signed and one unsigned format per width 9..64 (every container boundary)."""
    out = []
    for n in range(9, 65):
        e = 11 if n >= 14 else 5
        out.append(FloatFormat(e, n - 1 - e))
        if n <= 63:
            out.append(FloatFormat(e, n - e, signed=False))
    return out


@pytest.mark.parametrize("fmt", _wide_family(), ids=lambda f: f"{f.name}:{f.bits}")
def test_every_width_round_trips_through_qtensor_and_a_file(fmt, tmp_path):
    x = _inputs(fmt, n=40, seed=fmt.bits)
    x = x[~torch.isnan(x)] if not fmt.has_nan else x
    if not fmt.signed:
        x = x.abs()
    y = floatlab.quantize(x, fmt, backend="plain")
    q = floatlab.encode(x, fmt)
    assert q.data.dtype == {16: torch.int16, 32: torch.int32, 64: torch.int64}[
        16 if fmt.bits <= 16 else 32 if fmt.bits <= 32 else 64]
    assert q.nbytes == x.numel() * q.data.element_size()
    assert _same(q.dequantize(torch.float64), y).all()
    assert torch.equal(q.codes, fmt.encode(y))
    floatlab.save(tmp_path / "w.safetensors", {"w": q})
    back = floatlab.load(tmp_path / "w.safetensors")["w"]
    assert back.format == fmt and torch.equal(back.data, q.data)
    assert _same(back.dequantize(torch.float64), y).all()


@pytest.mark.parametrize("name,x,right", [
    ("e8m24", -2.5, -2.5),                          # was +2.5 (the sign bit, bit 32, was cut)
    ("e10m30", 1.0, 1.0),                           # was 1.2e-153
    ("e11m52", 1.0, 1.0),                           # was 0.0
    ("e11m52", -1.0, -1.0),
    ("ue11m52", 3.0, 3.0),
])
def test_issue_values_wide_codes_round_trip(name, x, right, tmp_path):
    q = floatlab.encode(torch.tensor([x], dtype=torch.float64), name)
    assert q.dequantize().item() == right
    floatlab.save(tmp_path / "q.safetensors", {"q": q})
    assert floatlab.load(tmp_path / "q.safetensors")["q"].dequantize().item() == right


def test_a_file_with_truncated_wide_codes_is_refused(tmp_path):
    """Files written before the fix stored e8m24 codes in int32: loading says so."""
    from safetensors.torch import save_file
    import json
    q = floatlab.encode(torch.tensor([-2.5]), "e8m24")
    floatlab.save(tmp_path / "new.safetensors", {"w": q})
    from safetensors import safe_open
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file({"w/data": q.data.to(torch.int32)}, str(tmp_path / "old.safetensors"), metadata=meta)
    assert json.loads(meta["floatlab.qtensors"])["w"]["format"] == {"name": "e8m24"}
    with pytest.raises(ValueError, match="int32, not torch.int64"):
        floatlab.load(tmp_path / "old.safetensors")


# ---- fault 3: decode of every code width ---------------------------------------------------

def test_issue_values_decode_64_bit_codes():
    codes = torch.tensor([0x3FF0000000000000, 0x4059000000000000, 1])
    assert floatlab.decode(codes, "e11m52", dtype=torch.float64).tolist() == [1.0, 100.0, 5e-324]
    # -1.0 is 0xBFF0000000000000: an int64 bit pattern (two's complement) or a uint64
    minus_one = torch.tensor([0xBFF0000000000000 - 2 ** 64])
    assert floatlab.decode(minus_one, "e11m52", dtype=torch.float64).item() == -1.0
    u = torch.tensor([0xBFF0000000000000, 0x8000000000000000], dtype=torch.uint64)
    y = floatlab.decode(u, "e11m52", dtype=torch.float64)
    assert y[0].item() == -1.0 and y[1].item() == 0.0 and math.copysign(1, y[1].item()) == -1


def test_decode_e11m52_of_random_bit_patterns_is_the_float64_view():
    rng = np.random.default_rng(14)
    bits = torch.from_numpy(rng.integers(-2 ** 63, 2 ** 63 - 1, 100_000, dtype=np.int64))
    assert _same(floatlab.decode(bits, "e11m52", dtype=torch.float64), bits.view(torch.float64)).all()
    b32 = torch.from_numpy(rng.integers(-2 ** 31, 2 ** 31 - 1, 100_000, dtype=np.int64)).to(torch.int32)
    assert _same(floatlab.decode(b32, "fp32"), b32.view(torch.float32)).all()


@pytest.mark.parametrize("fmt", _wide_family() + [_fmt("e4m3"), _fmt("p3109_p3"), _fmt("e2m1"),
                                                   _fmt("int8"), _fmt("bf16")],
                         ids=lambda f: f"{f.name}:{f.bits}")
def test_decode_every_width_against_the_spec(fmt):
    """Codes from both ends and the middle of the code space, top bit set included, in every
    container that holds them, against :meth:`code_value` (Python Fractions)."""
    n = fmt.bits
    rng = np.random.default_rng(n)
    picks = {0, 1, 2 ** n - 1, 2 ** n - 2, 2 ** (n - 1), 2 ** (n - 1) - 1, 2 ** (n - 1) + 1}
    picks |= {int(v) for v in rng.integers(0, 2 ** min(n, 62), 200)}
    picks |= {int(v) + 2 ** (n - 1) for v in rng.integers(0, 2 ** min(n - 1, 62), 200)}
    codes = sorted(c for c in picks if 0 <= c < 2 ** n)
    # code_value is a Fraction: a zero's sign is the sign bit of a format with negative zero
    right = [-0.0 if v == 0 and fmt.neg_zero and c >> (n - 1) else float(v)
             for c, v in zip(codes, map(fmt.code_value, codes))]
    as_int64 = torch.tensor([c - 2 ** 64 if c >= 2 ** 63 else c for c in codes])
    got = floatlab.decode(as_int64, fmt, dtype=torch.float64).tolist()
    assert all((math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
               for a, b in zip(got, right))
    container = {8: torch.int8, 16: torch.int16, 32: torch.int32, 64: torch.int64}.get(n)
    if container is not None:      # a signed container as wide as the format: bit patterns
        wrapped = torch.tensor([c - 2 ** n if c >= 2 ** (n - 1) else c for c in codes], dtype=container)
        assert _same(floatlab.decode(wrapped, fmt, dtype=torch.float64),
                     torch.tensor(right, dtype=torch.float64)).all()


@pytest.mark.parametrize("name,codes,dtype", [
    ("e8m24", [-1], torch.int64), ("e8m24", [2 ** 33], torch.int64), ("e4m3", [256], torch.int64),
    ("e4m3", [-1], torch.int16), ("e11m52", [-1], torch.int32), ("ue11m52", [2 ** 63], torch.uint64),
    ("fp16", [-1], torch.int32)])
def test_decode_refuses_codes_out_of_range(name, codes, dtype):
    with pytest.raises(ValueError, match="codes out of range"):
        floatlab.decode(torch.tensor(codes, dtype=dtype), name)


@pytest.mark.parametrize("scale, rule", [("ue10m0fn_nozero", "floor"), ("e8m23", "amax"), ("e11m52", "amax")])
def test_block_scales_wider_than_a_byte_are_stored_whole(scale, rule, tmp_path):
    """Block scale codes were cut to uint8 (power-of-two rules) or int32 (amax rules): a 10-bit
    E8M0-like scale or a 64-bit one decoded to garbage. They are stored in the scale format's own
    code dtype, equal the fused path's values, and survive save/load."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, generator=g) * 1e10
    fmt = floatlab.block_format(elem="e2m1", scale=scale, block=32, rule=rule)
    q = floatlab.encode(x, fmt)
    assert q.scales["scale"].dtype == fmt.scale.code_dtype
    y = q.dequantize()
    assert float((y - x).abs().max() / x.abs().max()) < 0.25      # e2m1 elements: within a step
    backend = "eager" if rule == "floor" else "plain"              # the fused kernel computes its own scales
    assert torch.equal(y, floatlab.quantize(x, fmt, backend=backend))
    floatlab.save(tmp_path / "w.safetensors", {"w": q})
    assert torch.equal(floatlab.load(tmp_path / "w.safetensors")["w"].dequantize(), y)
