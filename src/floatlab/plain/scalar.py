"""The generic rounding core for every scalar format (the plain path).

Every input is widened to float64, which holds every float16/bfloat16/float32/float64 value
exactly, and every step below is exact in float64:

1. ``e = floor(log2 |x|)`` from ``frexp``; the format says the spacing ``2^qe`` of its grid in
   that binade (:meth:`ScalarFormat.quantum_exponent`).
2. ``s = |x| / 2^qe`` is exact (a power-of-two scaling, done in steps by
   :func:`~floatlab.formats.base.mul_pow2`: ``2^-qe`` itself may be beyond float64, e.g. 2^1074
   for e11m52's subnormals), so ``floor(s)`` and ``frac = s - floor(s)`` are exact: the two
   neighbours of ``|x|`` are ``floor(s) * 2^qe`` and ``(floor(s)+1) * 2^qe``. Where ``s`` would be
   below ``2^-60`` (far below the grid, e.g. 5e-324 into a format spaced by 8) it is taken as
   ``2^-60`` instead of underflowing to 0: every mode decides the same for any ``frac`` in
   ``(0, 2^-53)`` (see :func:`quantize_to_float64`).
3. The rounding mode decides, per element, whether the magnitude goes up (one boolean).
4. Overflow, special values and the sign are applied by the format's rules (FORMATS.md sec. 0).

float64 input is rounded directly: no double rounding through float32.
"""

from __future__ import annotations

import torch

from floatlab.formats.base import Overflow, ScalarFormat, floor_log2, mul_pow2
from floatlab.rounding import RoundingMode

_HYBRID_TA_LIMIT = 4          # HiF8 HR: ties-away where |E| < 4, self-stochastic elsewhere
_HYBRID_ZERO_EXP = -23        # HiF8 HR (Huawei golden): inputs below 2^-23 go to zero
_TINY_EXP = -60               # a nonzero frac below 2^-53 decides like any other (see below)


def _round_up(mode: RoundingMode, fl, frac, negative, generator, sr_bits, x):
    """Boolean tensor: does the magnitude round up from ``fl`` to ``fl + 1``?"""
    inexact = frac > 0
    if mode is RoundingMode.RTZ:
        return torch.zeros_like(inexact)
    if mode is RoundingMode.RNA:
        return frac >= 0.5
    if mode is RoundingMode.RNZ:
        return frac > 0.5
    if mode is RoundingMode.RNE:
        odd = torch.remainder(fl, 2) == 1
        return (frac > 0.5) | ((frac == 0.5) & odd)
    if mode is RoundingMode.RUP:
        return inexact & ~negative
    if mode is RoundingMode.RDN:
        return inexact & negative
    if mode is RoundingMode.RTO:
        return inexact & (torch.remainder(fl, 2) == 0)
    if mode is RoundingMode.SR:
        if sr_bits is None:
            u = torch.rand(frac.shape, dtype=torch.float64, device=frac.device, generator=generator)
            return u < frac
        scale = float(2 ** sr_bits)
        r = torch.randint(0, 2 ** sr_bits, frac.shape, device=frac.device, generator=generator)
        return torch.floor(frac * scale) + r.to(torch.float64) >= scale
    if mode is RoundingMode.SR_HALF:
        coin = torch.randint(0, 2, frac.shape, device=frac.device, generator=generator)
        return inexact & (coin == 1)
    if mode is RoundingMode.HYBRID:
        return _hybrid_round_up(fl, frac, x)
    raise AssertionError(mode)


def _hybrid_round_up(fl, frac, x):
    """HiF8 hybrid rounding (HR), FORMATS.md 1.3 and Huawei's Python golden.

    Where the input's FP32 exponent satisfies ``|E| < 4``: ties away. Elsewhere, self-stochastic
    rounding: ``f14`` = the 14 bits after the kept mantissa, ``t14`` = the lowest 14 bits of the
    FP32 input mantissa; round up if ``f14 >= t14``. One deliberate difference from the golden:
    an exactly representable value (``f14 == t14 == 0``) is never moved.
    """
    x32 = x.to(torch.float32)
    t14 = (x32.view(torch.int32) & 0x3FFF).to(torch.float64)
    e = floor_log2(x32.abs().to(torch.float64))
    f14 = torch.floor(frac * 2.0 ** 14)
    ssr = (frac > 0) & (f14 >= t14)
    return torch.where(e.abs() < _HYBRID_TA_LIMIT, frac >= 0.5, ssr)


def quantize_to_float64(x: torch.Tensor, fmt: ScalarFormat, mode: RoundingMode, saturate: bool,
                        generator: torch.Generator | None, sr_bits: int | None) -> torch.Tensor:
    """Round ``x`` into ``fmt``; the result is float64 holding values of ``fmt`` (or NaN/+-Inf)."""
    if mode is RoundingMode.HYBRID:
        x = x.to(torch.float32)  # HR is defined on FP32 bit patterns (float64 is rounded first)
    xd = x.to(torch.float64)
    a = xd.abs()
    finite = torch.isfinite(xd)
    negative = torch.signbit(xd)
    # Magnitudes beyond twice the overflow boundary overflow in every mode: clamping them there
    # keeps every scaled value finite without changing any decision.
    limit = 2.0 * fmt.overflow_boundary
    a_fin = torch.where(finite, torch.clamp(a, max=limit), torch.zeros_like(a))
    e = floor_log2(a_fin)
    qe = fmt.quantum_exponent(e)
    # s = |x| / 2^qe, exactly. Far below the grid (s < 2^-60) s is replaced by 2^-60: fl = 0 and a
    # nonzero frac below 2^-53 makes every decision the same (below every tie and every sr_bits
    # threshold (<= 52 bits); torch.rand draws multiples of 2^-53, so u < frac iff u == 0), and it
    # cannot underflow to 0 (which would make an inexact value look exact to rup/rdn/rto/sr).
    tiny = (e - qe < _TINY_EXP) & (a_fin > 0)
    s = mul_pow2(a_fin, torch.where(tiny, torch.zeros_like(qe), -qe))
    s = torch.where(tiny, torch.full_like(s, 2.0 ** _TINY_EXP), s)
    fl = torch.floor(s)
    frac = s - fl
    up = _round_up(mode, fl, frac, negative, generator, sr_bits, x)
    y = mul_pow2(fl + up.to(torch.float64), qe)      # a value of fmt: a float64 (FloatFormat checks)

    if mode is RoundingMode.HYBRID:
        tiny = a < 2.0 ** _HYBRID_ZERO_EXP
        y = torch.where(tiny, torch.zeros_like(y), y)

    if not fmt.has_zero:  # e.g. E8M0: nothing below the smallest value, and 0 itself is NaN
        y = torch.where(y == 0, torch.full_like(y, fmt.smallest_positive), y)
        y = torch.where(a == 0, torch.full_like(y, float("nan")), y)

    # overflow: the magnitude went past the largest finite value on its side
    max_mag = torch.where(negative, torch.full_like(y, fmt.max_negative),
                          torch.full_like(y, fmt.max_value))
    over = finite & (y > max_mag)
    if saturate or mode in (RoundingMode.RTZ, RoundingMode.RTO):
        y = torch.where(over, max_mag, y)
    else:
        # a directed mode that rounds this magnitude toward zero stops at the largest value
        toward_zero = torch.zeros_like(over)
        if mode is RoundingMode.RUP:
            toward_zero = negative
        elif mode is RoundingMode.RDN:
            toward_zero = ~negative
        y = torch.where(over & toward_zero, max_mag, y)
        y = torch.where(over & ~toward_zero, _overflow_value(fmt, max_mag), y)

    # non-finite inputs
    if fmt.has_inf and not saturate:
        inf_out = torch.full_like(y, float("inf"))
    elif saturate:
        inf_out = max_mag
    else:
        inf_out = _overflow_value(fmt, max_mag)
    y = torch.where(torch.isinf(xd), inf_out, y)
    y = torch.where(torch.isnan(xd), torch.full_like(y, float("nan")), y)

    if not fmt.signed:
        bad = negative & (a > 0) if fmt.has_nan else torch.zeros_like(negative)
        y = torch.where(bad, torch.full_like(y, float("nan")), y)
        return y
    out = torch.where(negative, -y, y)
    if not fmt.neg_zero:
        out = torch.where(out == 0, torch.zeros_like(out), out)
    return out


def _overflow_value(fmt: ScalarFormat, max_mag: torch.Tensor) -> torch.Tensor:
    if fmt.overflow is Overflow.INF:
        return torch.full_like(max_mag, float("inf"))
    if fmt.overflow is Overflow.NAN:
        return torch.full_like(max_mag, float("nan"))
    return max_mag
