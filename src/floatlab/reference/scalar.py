"""A slow, obviously correct scalar oracle for every scalar format and rounding mode.

It shares no arithmetic with the fast path: the representable values come from decoding every
code with the format's spec (:meth:`code_value`, plain Python Fractions), the two neighbours of
``x`` come from a bisection in that sorted table, and each mode is its textbook definition on
those two neighbours. "Even"/"odd" is the parity of a neighbour counted in units of the gap
between the two neighbours (the significand parity of IEEE 754; ml_dtypes agrees, e.g. E8M0
rounds 1.5 to 2 and 3 to 4). The only fact taken from the format object besides its codes is the
virtual value just past the largest finite one (``overflow_boundary``), tested on its own.

Formats too wide to tabulate (more than 20 bits: fp32, e8m24, e10m30, e11m52, ...) are
IEEE-style :class:`FloatFormat` s, whose magnitude codes ``0 .. max_code`` hold increasing
values; their neighbours come from a bisection over those codes, each decoded with
:meth:`code_value`.
"""

from __future__ import annotations

import bisect
import math
import struct
from fractions import Fraction
from functools import lru_cache

import numpy as np

from floatlab.formats.base import Overflow, ScalarFormat
from floatlab.rounding import RoundingMode

M = RoundingMode


@lru_cache(maxsize=None)
def value_table(fmt: ScalarFormat) -> tuple[Fraction, ...]:
    """All distinct finite values of ``fmt`` in increasing order (formats up to 20 bits)."""
    if fmt.bits > 20:
        raise ValueError(f"{fmt.name} has too many codes to tabulate")
    vals = set()
    for code in range(2 ** fmt.bits):
        v = fmt.code_value(code)
        if isinstance(v, Fraction):
            vals.add(v)
    return tuple(sorted(vals))


@lru_cache(maxsize=None)
def _extended_table(fmt: ScalarFormat) -> list[Fraction]:
    """The value table with the virtual values just past each end (where overflow starts)."""
    table = value_table(fmt)
    step_past_max = fmt.overflow_boundary_exact - Fraction(fmt.max_value)
    lower_virtual = -Fraction(fmt.max_negative) - step_past_max if fmt.signed else Fraction(0)
    return [lower_virtual] + list(table) + [fmt.overflow_boundary_exact]


def _neighbours(fmt: ScalarFormat, X: Fraction) -> tuple[Fraction, Fraction]:
    """The largest representable ``lo <= X`` and smallest ``hi >= X`` (on an extended grid)."""
    if fmt.bits > 20:
        return _bisect_neighbours(fmt, X)
    ext = _extended_table(fmt)
    i = bisect.bisect_right(ext, X) - 1
    if i >= 0 and ext[i] == X:
        return X, X
    if i < 0 or i + 1 >= len(ext):
        raise OverflowError  # beyond the extended grid: overflows in every mode
    return ext[i], ext[i + 1]


def _bisect_neighbours(fmt: ScalarFormat, X: Fraction) -> tuple[Fraction, Fraction]:
    """:func:`_neighbours` for a wide IEEE-style format: bisection over its magnitude codes."""
    from floatlab.formats.floating import FloatFormat

    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"{fmt.name} has too many codes to tabulate and is not IEEE-style")
    mag = abs(X)
    boundary = fmt.overflow_boundary_exact
    top = Fraction(fmt.max_value)
    if mag > boundary:
        raise OverflowError  # beyond the extended grid: overflows in every mode
    if mag >= top:
        lo, hi = top, boundary
    elif mag < fmt.code_value(0):         # below the smallest value of a format without zero
        lo, hi = Fraction(0), fmt.code_value(0)
    else:
        a, b = 0, fmt.max_code            # invariant: value(a) <= mag < value(b)
        while b - a > 1:
            m = (a + b) // 2
            if fmt.code_value(m) <= mag:
                a = m
            else:
                b = m
        lo, hi = fmt.code_value(a), fmt.code_value(b)
    if mag in (lo, hi):
        return X, X
    return (lo, hi) if X >= 0 else (-hi, -lo)


def reference_round(x: float, fmt: ScalarFormat, mode: RoundingMode, saturate: bool = False,
                    u: float | None = None, rint: int | None = None, sr_bits: int | None = None,
                    coin: int | None = None) -> float:
    """Round one Python float ``x`` into ``fmt``. Random inputs for the stochastic modes:
    ``u`` in [0, 1) for ``sr``; ``rint`` in [0, 2^sr_bits) for ``sr`` with ``sr_bits``;
    ``coin`` in {0, 1} for ``sr_half``."""
    if mode is M.HYBRID:
        x = float(np.float32(x))
    if math.isnan(x):
        return math.nan
    if not fmt.signed and x < 0:
        return math.nan if fmt.has_nan else 0.0    # unsigned integers clamp negatives to 0
    if x == 0 and not fmt.has_zero:
        return math.nan
    negative = math.copysign(1.0, x) < 0
    max_mag = fmt.max_negative if negative else fmt.max_value
    overflow_value = {Overflow.INF: math.inf, Overflow.NAN: math.nan,
                      Overflow.SATURATE: max_mag}[fmt.overflow]
    sign = -1.0 if negative else 1.0
    if math.isinf(x):
        if saturate:
            return sign * max_mag
        return sign * math.inf if fmt.has_inf else sign * overflow_value
    X = Fraction(x)
    try:
        lo, hi = _neighbours(fmt, X)
    except OverflowError:
        lo = hi = None
    if lo is not None and lo == hi:
        result = lo
    elif lo is None:
        result = None  # overflowed past the extended grid
    else:
        tz, aw = (hi, lo) if negative else (lo, hi)      # toward zero / away from zero
        gap = hi - lo
        d = abs(X - tz) / gap                           # in (0, 1)
        even_is_tz = (abs(tz) / gap) % 2 == 0
        if mode is M.HYBRID:
            x32 = float(np.float32(x))
            e = math.floor(math.log2(abs(x32))) if x32 != 0 else 0
            if abs(x32) < 2.0 ** -23:
                mode_up = False
                tz = Fraction(0)
            elif abs(e) < 4:
                mode_up = d >= Fraction(1, 2)
            else:
                t14 = struct.unpack("<I", struct.pack("<f", x32))[0] & 0x3FFF
                mode_up = math.floor(d * 2 ** 14) >= t14
        else:
            mode_up = {
                M.RTZ: lambda: False,
                M.RNA: lambda: d >= Fraction(1, 2),
                M.RNZ: lambda: d > Fraction(1, 2),
                M.RNE: lambda: d > Fraction(1, 2) or (d == Fraction(1, 2) and not even_is_tz),
                M.RUP: lambda: not negative,
                M.RDN: lambda: negative,
                M.RTO: lambda: even_is_tz,
                M.SR: lambda: (d > u) if sr_bits is None else (math.floor(d * 2 ** sr_bits) + rint >= 2 ** sr_bits),
                M.SR_HALF: lambda: coin == 1,
            }[mode]()
        result = aw if mode_up else tz
    if result is not None and result == 0 and not fmt.has_zero:
        result = Fraction(fmt.smallest_positive) * (1 if not negative else -1)
    if result is None or abs(result) > Fraction(max_mag):
        toward_zero = (mode in (M.RTZ, M.RTO) or (mode is M.RUP and negative)
                       or (mode is M.RDN and not negative))
        if saturate or toward_zero:
            return sign * max_mag
        return sign * overflow_value if not math.isnan(overflow_value) else math.nan
    if result == 0:
        return -0.0 if (negative and fmt.neg_zero) else 0.0
    return float(result)
