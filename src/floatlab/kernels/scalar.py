"""The fused scalar rounding kernel: integer bit manipulation on the input's float bits.

It computes exactly what :func:`floatlab.plain.scalar.quantize_to_float64` computes, in one pass
and without float64 temporaries, so that ``torch.compile`` turns it into one loop:

* float16, bfloat16 and float32 inputs are widened (exactly) to float32 and handled on their
  int32 bit pattern; float64 inputs on their int64 bit pattern (:class:`Layout`).
* From the bits: ``sig`` (the integer significand), ``unit`` (the exponent of one unit of
  ``sig``) and ``e = floor(log2 |x|)`` (subnormals included). The format's own
  ``quantum_exponent(e)`` gives ``qe``; the ``d = qe - unit`` low bits of ``sig`` are dropped:
  ``fl = sig >> d`` and the remainder ``rem`` decide, per mode, whether to add one (the same
  decisions as the plain path, made on integers instead of on ``frac = rem / 2^d``).
* The result ``(fl + up) * 2^qe`` is exact in the compute dtype (it has at most as many
  significant bits as the input); overflow, specials and the sign follow the plain path's rules
  line by line.

The stochastic modes take their randomness from ``rnd``: the very draws of the plain path when a
generator is given (``torch.rand`` float64, ``torch.randint`` int64), or a counter-based hash
(:mod:`floatlab.kernels.rng`) keyed by a seed otherwise (:class:`Plan`.``rng``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from floatlab.formats.base import Overflow, ScalarFormat
from floatlab.kernels.rng import random_word
from floatlab.rounding import RoundingMode as M

_HYBRID_TA_LIMIT = 4
_HYBRID_ZERO = 2.0 ** -23


@dataclass(frozen=True)
class Layout:
    """The bit layout of the compute float: its int twin, mantissa bits, bias, max field."""

    float_dtype: torch.dtype
    int_dtype: torch.dtype
    mbits: int
    bias: int
    top_field: int
    min_exp: int      # exponent of the smallest subnormal
    max_exp: int      # exponent of the largest binade


F32 = Layout(torch.float32, torch.int32, 23, 127, 255, -149, 127)
F64 = Layout(torch.float64, torch.int64, 52, 1023, 2047, -1074, 1023)


@dataclass(frozen=True)
class Plan:
    """Everything the kernel specializes on (hashable: one compiled kernel per plan)."""

    fmt: ScalarFormat
    mode: M
    saturate: bool
    layout: Layout
    out_dtype: torch.dtype
    sr_bits: int | None
    rng: str          # "none" (deterministic), "replay" (draws passed in), "hash" (seed passed in)
    max_value: float = 0.0          # the format's constants, read once outside the traced code
    max_negative: float = 0.0
    smallest_positive: float = 0.0
    float_rounding: bool = False    # use :func:`_round_float` (see :func:`Plan.make`)
    uniform_qe: int | None = None   # the one spacing exponent below the format's max, if any

    @staticmethod
    def make(fmt: ScalarFormat, mode: M, saturate: bool, layout: Layout, out_dtype: torch.dtype,
             sr_bits: int | None = None, rng: str = "none",
             shifts: tuple[int, int] = (0, 0)) -> "Plan":
        """``shifts``: the range of ``shift`` that :func:`quantize_kernel` will be given."""
        e = torch.arange(layout.min_exp - 1, layout.max_exp + 2, dtype=torch.int64)
        qe = torch.cat([fmt.quantum_exponent(e - k) + k for k in range(shifts[0], shifts[1] + 1)])
        float_ok = (layout is F32 and mode in _FLOAT_MODES and int(qe.min()) >= layout.min_exp
                    and int(qe.max()) <= layout.max_exp)
        # a largest value beyond the compute dtype (e9m3.. e11m52 on float32) is +inf there: the
        # comparisons with it then never trigger, as with the float64 value (torch.full would
        # refuse to convert it); so is the smallest value of a format without zero beyond it
        # (ue8m0fn_b-700_nozero), which the plain path's float64 result also becomes in float32
        big = float(torch.finfo(layout.float_dtype).max)
        top = [v if abs(v) <= big else math.copysign(math.inf, v)
               for v in (float(fmt.max_value), float(fmt.max_negative), float(fmt.smallest_positive))]
        return Plan(fmt, mode, saturate, layout, out_dtype, sr_bits, rng, top[0], top[1],
                    top[2], float_ok, _uniform_qe(fmt, mode, layout, shifts))

    @property
    def rng_width(self) -> int:
        """Bits of one hashed random word (more where 32 cannot hold the probability)."""
        if self.layout is F32 and (self.sr_bits is None or self.sr_bits <= 32):
            return 32
        return 62


def _uniform_qe(fmt: ScalarFormat, mode: M, layout: Layout, shifts: tuple[int, int]) -> int | None:
    """The spacing exponent when it is the same in every binade up to the format's max (integer
    formats, E1My minifloats), else None.

    Then the kernel needs no ``floor(log2 |x|)``. Beyond the max the true spacing may grow, but
    every rounding of such an input stays above the max either way, so overflow decides the
    result in both cases. (The hybrid mode reads the exponent itself: never uniform.)
    """
    largest = max(float(fmt.max_value), abs(float(fmt.max_negative)))
    if mode is M.HYBRID or not (largest > 0 and math.isfinite(largest)):
        return None
    top = math.floor(math.log2(largest))
    e = torch.arange(layout.min_exp - 1 - max(shifts[1], 0), top + 1, dtype=torch.int64)
    qe = fmt.quantum_exponent(e)
    return int(qe[0]) if bool((qe == qe[0]).all()) else None


def pow2(k: torch.Tensor, L: Layout) -> torch.Tensor:
    """Exact ``2^k`` in the compute dtype for integer ``k`` in [min_exp, max_exp]."""
    normal = (k + L.bias) << L.mbits
    sub = torch.ones_like(k) << torch.clamp(k - L.min_exp, 0, L.mbits - 1)
    return torch.where(k >= 1 - L.bias, normal, sub).view(L.float_dtype)


def _shift_right(v: torch.Tensor, s: torch.Tensor, width: int) -> torch.Tensor:
    """``floor(v * 2^-s)`` for any integer ``s`` (negative shifts go left), ``v >= 0``."""
    right = v >> torch.clamp(s, 0, width - 1)
    left = v << torch.clamp(-s, 0, width - 1)
    return torch.where(s >= 0, right, left)


def _round_up(p: Plan, fl, rem, half, d, negative, e, bits, rnd, index):
    """Boolean: does the magnitude go from ``fl`` to ``fl + 1`` (same rules as the plain path)."""
    mode = p.mode
    inexact = rem > 0
    if mode is M.RTZ:
        return torch.zeros_like(inexact)
    if mode is M.RNA:
        return inexact & (rem >= half)
    if mode is M.RNZ:
        return inexact & (rem > half)
    if mode is M.RNE:
        return inexact & ((rem > half) | ((rem == half) & ((fl & 1) == 1)))
    if mode is M.RUP:
        return inexact & ~negative
    if mode is M.RDN:
        return inexact & negative
    if mode is M.RTO:
        return inexact & ((fl & 1) == 0)
    if mode is M.HYBRID:  # FP32 only (the plan forces F32): ties away where |E| < 4, else SSR
        t14 = bits & 0x3FFF
        f14 = _shift_right(rem, d - 14, 32)
        ssr = inexact & (f14 >= t14)
        return torch.where(e.abs() < _HYBRID_TA_LIMIT, inexact & (rem >= half), ssr)
    rem64, d64 = rem.to(torch.int64), d.to(torch.int64)
    if p.rng == "hash":
        w = p.rng_width
        r = random_word(index, rnd, w)
        if mode is M.SR_HALF:
            return inexact & (((r >> (w - 1)) & 1) == 1)
        if p.sr_bits is None:   # P(up) = rem / 2^d, exact for d <= w, else to 2^-w
            short = (r >> torch.clamp(w - d64, 0, 63)) < rem64
            long = r < (rem64 >> torch.clamp(d64 - w, 0, 63))
            return inexact & torch.where(d64 <= w, short, long)
        k = p.sr_bits
        rk = r >> (w - k)
        return _shift_right(rem64, d64 - k, 64) + rk >= (1 << k)
    if mode is M.SR_HALF:
        return inexact & (rnd == 1)
    if p.sr_bits is None:       # the plain path's test u < frac, frac = rem * 2^-d exactly
        frac = rem64.to(torch.float64) * pow2(torch.clamp(-d64, F64.min_exp, 0), F64)
        return rnd < frac
    k = p.sr_bits
    return _shift_right(rem64, d64 - k, 64) + rnd >= (1 << k)


def quantize_kernel(x: torch.Tensor, rnd: torch.Tensor | None, p: Plan,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """Round ``x`` (any shape, row-major draws) into ``p.fmt``; returns ``p.out_dtype`` values.

    ``rnd`` is the plain path's draws (``p.rng == "replay"``), a 0-d int64 seed (``"hash"``),
    or None. ``shift`` (integers broadcastable to ``x``) rounds into the format scaled by
    ``2^shift`` instead, i.e. ``2^shift * q(x / 2^shift)`` with saturation at
    ``max * 2^shift``, exactly and without computing ``x / 2^shift`` (block scales).
    """
    L, fmt = p.layout, p.fmt
    IT, FT = L.int_dtype, L.float_dtype
    xw = x.to(FT)
    bits = xw.view(IT)
    negative = bits < 0
    mag = bits & _magnitude_mask(L)
    a = mag.view(FT)
    field = mag >> L.mbits
    mant = mag & ((1 << L.mbits) - 1)
    is_sub = field == 0
    sig = torch.where(is_sub, mant, mant | (1 << L.mbits))
    unit = torch.clamp(field, min=1) - (L.bias + L.mbits)
    scale = None if shift is None else pow2(shift.to(IT), L)
    if p.uniform_qe is not None:     # one spacing up to the max: no exponent needed
        e = None
        qe = torch.full_like(field, p.uniform_qe) if shift is None else shift.to(IT) + p.uniform_qe
    else:
        sub_e = ((mant.to(FT).view(IT) >> L.mbits) - L.bias) + (1 - L.bias - L.mbits)
        e = torch.where(is_sub, sub_e, field - L.bias)
        if shift is None:
            qe = fmt.quantum_exponent(e).to(IT)
        else:
            qe = (fmt.quantum_exponent(e - shift) + shift).to(IT)
    if p.float_rounding:
        y = _round_float(p, a, qe, negative)
        return _finish(p, xw, a, y, negative, field, mant, scale).to(p.out_dtype)
    d = qe - unit
    dd = torch.clamp(d, 0, L.mbits + 2)
    fl = sig >> dd
    rem = sig - (fl << dd)
    half = (torch.ones_like(dd) << dd) >> 1
    index = None
    if p.rng == "hash":
        index = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
    up = _round_up(p, fl, rem, half, d, negative, e, bits, rnd, index)
    m = (fl + up.to(IT)).to(FT)
    big = qe > L.max_exp          # 2^qe beyond the dtype: the result is 0 or overflows to inf
    y = m * pow2(torch.clamp(qe, L.min_exp, L.max_exp), L) * torch.where(big, 2.0, 1.0).to(FT)
    y = torch.where(d > 0, y, a)
    y = _finish(p, xw, a, y, negative, field, mant, scale)
    return y.to(p.out_dtype)


_FLOAT_MODES = (M.RNE, M.RNA, M.RNZ, M.RTZ, M.RUP, M.RDN)


def _round_float(p: Plan, a, qe, negative):
    """The deterministic modes with float32 arithmetic (fewer operations than on integers).

    ``s = |x| * 2^-qe`` is exact (a power-of-two scaling, in two steps so that 2^-qe may
    exceed 2^127; :attr:`Plan.float_rounding` guarantees ``-149 <= qe <= 127``) except where
    it overflows (the format overflows too) or, with a block shift, underflows (then the true
    ``s`` is below 2^-126: only rounding up cares, and it gives 1). ``floor``/``ceil``/``round`` (ties to even) of an
    exact ``s`` make the same decisions as the plain path's ``frac`` tests.
    """
    L = p.layout
    k = -qe
    k1 = torch.clamp(k, max=L.max_exp)
    s = (a * pow2(k1, L)) * pow2(k - k1, L)
    mode = p.mode
    if mode is M.RNE:
        r = torch.round(s)
    elif mode is M.RTZ:
        r = torch.floor(s)
    elif mode in (M.RNA, M.RNZ):
        fl = torch.floor(s)
        up = (s - fl >= 0.5) if mode is M.RNA else (s - fl > 0.5)
        r = fl + up.to(s.dtype)
    else:
        toward_floor = negative if mode is M.RUP else ~negative
        # with a block shift, s = |x| * 2^-qe can underflow to 0 while |x| > 0: still rounds up
        ceil = torch.where((s == 0) & (a > 0), torch.ones_like(s), torch.ceil(s))
        r = torch.where(toward_floor, torch.floor(s), ceil)
    return r * pow2(qe, L)


def _magnitude_mask(L: Layout) -> int:
    return (1 << (L.float_dtype.itemsize * 8 - 1)) - 1


def _finish(p: Plan, xw, a, y, negative, field, mant, scale=None):
    """Overflow, special values and the sign: :func:`quantize_to_float64`'s rules, in order."""
    fmt, mode, L = p.fmt, p.mode, p.layout
    FT = L.float_dtype
    nonfinite = field == L.top_field
    is_inf = nonfinite & (mant == 0)
    is_nan = nonfinite & (mant != 0)
    zero = torch.zeros((), dtype=FT, device=y.device)
    nan = torch.full((), float("nan"), dtype=FT, device=y.device)
    if mode is M.HYBRID:
        y = torch.where(a < _HYBRID_ZERO, zero, y)
    if not fmt.has_zero:
        y = torch.where(y == 0, torch.full((), p.smallest_positive, dtype=FT, device=y.device), y)
        y = torch.where(a == 0, nan, y)
    if p.max_negative == p.max_value:
        max_mag = torch.full((), p.max_value, dtype=FT, device=y.device).expand_as(y)
    else:
        max_mag = torch.where(negative, torch.full((), p.max_negative, dtype=FT, device=y.device),
                              torch.full((), p.max_value, dtype=FT, device=y.device))
    if scale is not None:
        max_mag = (max_mag * scale).expand_as(y)
    over = ~nonfinite & (y > max_mag)
    if fmt.overflow is Overflow.INF:
        ovf = torch.full((), float("inf"), dtype=FT, device=y.device).expand_as(y)
    elif fmt.overflow is Overflow.NAN:
        ovf = nan.expand_as(y)
    else:
        ovf = max_mag
    if p.saturate or mode in (M.RTZ, M.RTO):
        y = torch.where(over, max_mag, y)
    else:
        if mode is M.RUP:
            toward_zero = negative
        elif mode is M.RDN:
            toward_zero = ~negative
        else:
            toward_zero = torch.zeros_like(negative)
        y = torch.where(over & toward_zero, max_mag, y)
        y = torch.where(over & ~toward_zero, ovf, y)
    if fmt.has_inf and not p.saturate:
        inf_out = torch.full((), float("inf"), dtype=FT, device=y.device).expand_as(y)
    elif p.saturate:
        inf_out = max_mag
    else:
        inf_out = ovf
    y = torch.where(is_inf, inf_out, y)
    y = torch.where(is_nan, nan, y)
    if not fmt.signed:
        if fmt.has_nan:
            y = torch.where(negative & (a > 0), nan, y)
        return y
    # copysign, not -y: Triton negates as 0 - y, which turns -0.0 into +0.0 on CUDA
    out = torch.copysign(y, xw)
    if not fmt.neg_zero:
        out = torch.where(out == 0, zero, out)
    return out
