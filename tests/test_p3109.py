"""IEEE P3109 binary8 formats against gfloat's definitions (the oracle).

Every format of the interim P3109 binary8 family (precision 1..7 signed, 1..8 unsigned,
extended and finite; gfloat 0.5.2 ``format_info_p3109``) is an ordinary :class:`FloatFormat`.
Exhaustive over all 256 codes in both directions (decode, encode), and the rounding of stress
inputs in every mode gfloat shares with floatlab (rne, rna, rtz, rup, rdn, saturating or not,
and ``sr`` with ``sr_bits`` = gfloat's ``StochasticFastest`` on the same random integers), on the
plain and the fused paths.

One documented difference: at precision 1 (no mantissa bits) a tie between two powers of two
goes to the larger one in floatlab (its rule for every format: "even" is the significand parity
counted in units of the gap, as ml_dtypes' E8M0), while gfloat picks the even code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import floatlab
from floatlab.formats.floating import FloatFormat, NanStyle
from conftest import stress_float32

gfloat = pytest.importorskip("gfloat")
from gfloat import RoundMode, decode_float, encode_float, round_float  # noqa: E402
from gfloat.formats import format_info_p3109  # noqa: E402
from gfloat.types import Domain, Signedness  # noqa: E402

CASES = [(p, s, e) for s in (True, False) for p in range(1, 8 if s else 9) for e in (True, False)]
MODES = {"rne": RoundMode.TiesToEven, "rna": RoundMode.TiesToAway, "rtz": RoundMode.TowardZero,
         "rup": RoundMode.TowardPositive, "rdn": RoundMode.TowardNegative}


def _name(p, signed, extended):
    return f"p3109_p{p}{'s' if signed else 'u'}{'e' if extended else 'f'}"


def _gfloat(p, signed, extended):
    return format_info_p3109(8, p, Signedness.Signed if signed else Signedness.Unsigned,
                             Domain.Extended if extended else Domain.Finite)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal values with equal signs (so 0 != -0), or both NaN."""
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def test_thirty_formats_and_their_spellings():
    assert len(CASES) == 30
    g = floatlab.get_format
    assert g("p3109_p3") == g("p3109_p3se") == g("P3109_K8P3SE") == g("binary8p3")
    assert g("p3109_p3").spelled() == "e5m2fnuz_inf"
    assert g("p3109_p4sf").spelled() == "e4m3fnuz"          # the finite signed ones are fnuz
    assert g("p3109_p4ue").spelled() == "ue5m3fn_b16_inf"
    assert g("p3109_p8uf").spelled() == "ue1m7fn_b1"
    for p, s, e in CASES:
        fmt = g(_name(p, s, e))
        assert isinstance(fmt, FloatFormat) and fmt.bits == 8 and fmt.name == _name(p, s, e)
        twin = g(fmt.spelled())                               # the same meaning by flags
        assert (twin.ebits, twin.mbits, twin.bias, twin.nan, twin.top_inf, twin.signed) == \
            (fmt.ebits, fmt.mbits, fmt.bias, fmt.nan, fmt.top_inf, fmt.signed)
        assert floatlab.formats.serialize.format_from_reference(
            floatlab.formats.serialize.format_reference(fmt)) == fmt


@pytest.mark.parametrize("bad", ["p3109_p8", "p3109_p8se", "p3109_p0u", "p3109_p9u"])
def test_precision_out_of_range_is_refused_clearly(bad):
    with pytest.raises(ValueError, match="precision 1..[78]"):
        floatlab.get_format(bad)


def test_top_inf_contradictions_are_refused():
    with pytest.raises(ValueError, match="top_inf"):
        FloatFormat(5, 2, top_inf=True)                       # IEEE already has its Inf
    with pytest.raises(ValueError, match="no positive finite value"):
        FloatFormat(1, 0, nan=NanStyle.FN, signed=False, top_inf=True)


@pytest.mark.parametrize("p,signed,extended", CASES)
def test_every_code_decodes_to_gfloats_value(p, signed, extended):
    fi, name = _gfloat(p, signed, extended), _name(p, signed, extended)
    ref = np.array([decode_float(fi, c).fval for c in range(256)])
    ours = floatlab.decode(torch.arange(256), name, dtype=torch.float64).numpy()
    assert _same(ours, ref).all(), np.nonzero(~_same(ours, ref))[0][:8]
    # the specials the interim report puts where gfloat has them
    fmt = floatlab.get_format(name)
    assert fmt.nan_code == fi.code_of_nan and fmt.max_code == fi.code_of_max
    assert fmt.max_value == fi.max and fmt.smallest_positive == fi.smallest_subnormal
    if extended:
        assert fmt.inf_code == fi.code_of_posinf and fmt.has_inf
    else:
        assert fmt.inf_code is None and not fmt.has_inf


@pytest.mark.parametrize("p,signed,extended", CASES)
def test_every_value_encodes_to_gfloats_code(p, signed, extended):
    fi, name = _gfloat(p, signed, extended), _name(p, signed, extended)
    values = [decode_float(fi, c).fval for c in range(256)]
    ours = floatlab.encode(torch.tensor(values, dtype=torch.float64), name).codes.tolist()
    ref = [encode_float(fi, v) for v in values]
    assert ours == ref
    assert ours == [c if not math.isnan(v) else fi.code_of_nan for c, v in enumerate(values)]


def _inputs(name: str, signed: bool) -> np.ndarray:
    x = stress_float32(name, 2000, seed=3109).astype(np.float64)
    rng = np.random.default_rng(0)
    x = np.concatenate([x, x * (1 + rng.uniform(-2 ** -30, 2 ** -30, x.size))])  # float64 bits
    if not signed:   # gfloat does not define negative inputs of unsigned formats (it returns them)
        x = x[~np.signbit(x) | (x == 0)]
    return x


def _ties_between_powers_of_two(x: np.ndarray) -> np.ndarray:
    m, _ = np.frexp(np.abs(x))
    return m == 0.75


@pytest.mark.parametrize("p,signed,extended", CASES)
def test_rounding_matches_gfloat_in_every_shared_mode(p, signed, extended):
    fi, name = _gfloat(p, signed, extended), _name(p, signed, extended)
    x = _inputs(name, signed)
    xt = torch.from_numpy(x)
    for mode, rm, sat, backend in [(m, r, s, b) for m, r in MODES.items() for s in (False, True)
                                   for b in ("plain", "eager")]:
        if backend == "plain":
            ref = np.array([round_float(fi, v, rm, sat) for v in x])
        ours = floatlab.quantize(xt, name, rounding=mode, saturate=sat, backend=backend).numpy()
        same = _same(ours, ref)
        if p == 1 and mode == "rne":   # the documented precision-1 tie rule (module docstring)
            differ = ~same
            assert differ.any()                                   # the inputs hold such ties
            assert not (differ & ~_ties_between_powers_of_two(x)).any()
            # floatlab takes the larger neighbour (past the max: the format's overflow, NaN)
            larger = (np.abs(ours) > np.abs(ref)) | (np.isnan(ours) & (np.abs(ref) == fi.max))
            assert larger[differ].all()
            same = same | differ
        bad = np.nonzero(~same)[0][:4]
        assert same.all(), (f"{name} {mode} sat={sat} {backend}: x={x[bad]} ours={ours[bad]} "
                            f"gfloat={ref[bad]}")


@pytest.mark.parametrize("p,signed,extended", [(3, True, True), (4, False, False), (1, True, False),
                                               (7, True, True)])
@pytest.mark.parametrize("sr_bits", [1, 4, 13])
def test_sr_bits_equals_gfloats_stochastic_fastest(p, signed, extended, sr_bits):
    """floatlab ``sr`` with ``sr_bits`` k rounds up iff floor(frac*2^k) + r >= 2^k, gfloat's
    StochasticFastest iff frac + r*2^-k >= 1: the same test for integer r."""
    fi, name = _gfloat(p, signed, extended), _name(p, signed, extended)
    x = _inputs(name, signed)
    g = torch.Generator().manual_seed(7)
    ours = floatlab.quantize(torch.from_numpy(x), name, rounding="sr", sr_bits=sr_bits,
                             generator=g, backend="plain").numpy()
    r = torch.randint(0, 2 ** sr_bits, x.shape, generator=torch.Generator().manual_seed(7)).tolist()
    ref = np.array([round_float(fi, v, RoundMode.StochasticFastest, False, ri, sr_bits)
                    for v, ri in zip(x, r)])
    assert _same(ours, ref).all()


def test_worked_values_of_p3109_p3():
    """binary8p3 (signed, extended): bias 16, max 49152 (0x7E), Inf 0x7F, NaN 0x80."""
    x = torch.tensor([49152.0, 53248.0, 57344.0, 1e9, -1e9, 2.0 ** -17, 2.0 ** -18, -0.0,
                      float("inf"), float("nan")])
    y = floatlab.quantize(x, "p3109_p3")
    inf = float("inf")
    assert y.tolist()[:8] == [49152.0, 49152.0, inf, inf, -inf, 2.0 ** -17, 0.0, 0.0]
    assert math.copysign(1, y[7].item()) == 1                     # no negative zero
    assert math.isinf(y[8]) and math.isnan(y[9])
    assert floatlab.encode(x, "p3109_p3").codes.tolist() == [0x7E, 0x7E, 0x7F, 0x7F, 0xFF, 0x01,
                                                             0x00, 0x00, 0x7F, 0x80]
    # finite: 0x7F is 57344, the largest value; overflow is NaN (0x80)
    assert floatlab.quantize(x[:5], "p3109_p3sf").isnan().tolist() == [False, False, False, True, True]
    assert floatlab.encode(x[:5], "p3109_p3sf").codes.tolist() == [0x7E, 0x7E, 0x7F, 0x80, 0x80]
