"""IEEE-style binary floating-point formats, described by flags rather than by names."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from floatlab.formats.base import (Choice, Overflow, ScalarFormat, as_int64_code, check_float64_range,
                                   floor_log2, mul_pow2)


class NanStyle(Choice):
    """How a format spends codes on NaN (and Inf)."""

    IEEE = "ieee"  # top exponent field reserved: mantissa 0 is +-Inf, the rest NaN (e5m2, fp16)
    FN = "fn"      # finite: only the all-ones code (per sign) is NaN, no Inf (e4m3fn, e8m0)
    FNUZ = "fnuz"  # finite, unsigned zero: the negative-zero code 0x80 is the only NaN (e4m3fnuz)
    NONE = "none"  # no NaN and no Inf at all (e2m1, e3m2, e2m3, e1m2)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FloatFormat(ScalarFormat):
    """A binary floating-point format ``(-1)^s * 2^(E - bias) * 1.M``.

    Args:
        ebits: exponent field width (>= 1).
        mbits: mantissa (fraction) field width (>= 0).
        bias: exponent bias; default ``2^(ebits-1) - 1`` (``2^(ebits-1)`` for ``fnuz``).
        subnormals: exponent field 0 holds subnormals ``0.M * 2^(1-bias)``. If False, field 0 is
            zero only (flush-to-zero formats), or, with ``zero=False``, an ordinary binade.
        nan: :class:`NanStyle`: which codes are NaN; ``ieee`` also reserves the top exponent
            field and puts +-Inf there.
        signed: a sign bit exists. Unsigned formats map negative inputs to NaN.
        zero: the format has a zero (``False`` only for scale formats like E8M0).
        top_inf: the largest magnitude code that is not NaN is +-Inf (IEEE P3109's "extended"
            formats: ``nan="fnuz"`` with +-Inf on 0x7F/0xFF, or unsigned ``nan="fn"`` with +Inf on
            0xFE); not with ``nan="ieee"``, which has its own Inf. Spelled with the suffix ``_inf``.
        name: display name (the registry fills it in).

    Raises:
        ValueError: fields out of range or contradicting each other, or a format whose values
            are not all float64 values (largest at 2^1024 or beyond, or a spacing below 2^-1074:
            e.g. ``e11m2fn``, whose top binade 2^1024 is not reserved; ``e11m2fn_b1024`` fits).
    """

    ebits: int
    mbits: int
    bias: int | None = None
    subnormals: bool = True
    nan: NanStyle = NanStyle.IEEE
    signed: bool = True
    zero: bool = True
    name: str = ""
    top_inf: bool = False

    def __post_init__(self) -> None:
        nan = NanStyle(self.nan)
        object.__setattr__(self, "nan", nan)
        if not (1 <= self.ebits <= 11) or not (0 <= self.mbits <= 52):
            raise ValueError(f"need 1 <= ebits <= 11 and 0 <= mbits <= 52, got e{self.ebits}m{self.mbits}")
        if self.bias is None:
            default = 2 ** (self.ebits - 1) - (0 if nan is NanStyle.FNUZ else 1)
            object.__setattr__(self, "bias", default)
        if nan is NanStyle.IEEE and self.mbits == 0:
            raise ValueError("an IEEE-style format needs mbits >= 1 to tell Inf from NaN")
        if nan is NanStyle.FNUZ and not self.signed:
            raise ValueError("'fnuz' puts NaN on the negative-zero code: it needs a sign bit")
        if not self.zero and (self.subnormals or self.signed):
            raise ValueError("a format without zero must be unsigned and have subnormals=False")
        if self.subnormals and not self.zero:
            raise ValueError("subnormals imply a zero")
        if self.top_inf and nan is NanStyle.IEEE:
            raise ValueError("top_inf puts Inf on the top code of a format without IEEE's reserved "
                             "exponent field: use it with nan='fn', 'fnuz' or 'none'")
        if self.max_code < (1 if self.zero else 0):
            raise ValueError(f"e{self.ebits}m{self.mbits} with these special values has no positive "
                             "finite value")
        if not self.name:
            object.__setattr__(self, "name", self.spelled())
        self._check_range()

    def _check_range(self) -> None:
        """Every value must be a float64: spacing 2^(emin - mbits) >= 2^-1074, max below 2^1024."""
        # the biases that fit: emin - mbits = (1 or 0) - bias - mbits >= -1074, and the top
        # exponent field minus the bias <= 1023
        hi_bias = int(self.zero) - self.mbits + 1074
        lo_bias = (self.max_code >> self.mbits) - 1023
        hint = (f" Biases {lo_bias}..{hi_bias} fit e{self.ebits}m{self.mbits}."
                if lo_bias <= hi_bias else "")
        check_float64_range(self.name, abs(self.code_value(self.max_code)), self.emin - self.mbits,
                            hint)

    # ---- identity -----------------------------------------------------------------------
    def spelled(self) -> str:
        """A canonical spelling that :func:`floatlab.get_format` parses back to this spec."""
        s = ("" if self.signed else "u") + f"e{self.ebits}m{self.mbits}"
        if self.nan is not NanStyle.IEEE:
            s += {"fn": "fn", "fnuz": "fnuz", "none": "fnone"}[self.nan.value]
        default_bias = 2 ** (self.ebits - 1) - (0 if self.nan is NanStyle.FNUZ else 1)
        if self.bias != default_bias:
            s += f"_b{self.bias}"
        if not self.subnormals:
            s += "_nosub" if self.zero else "_nozero"
        if self.top_inf:
            s += "_inf"
        return s

    # ---- ScalarFormat facts -------------------------------------------------------------
    @property
    def bits(self) -> int:
        return int(self.signed) + self.ebits + self.mbits

    @property
    def has_inf(self) -> bool:
        return self.nan is NanStyle.IEEE or self.top_inf

    @property
    def has_nan(self) -> bool:
        return self.nan is not NanStyle.NONE

    @property
    def has_zero(self) -> bool:
        return self.zero

    @property
    def neg_zero(self) -> bool:
        return self.signed and self.nan is not NanStyle.FNUZ

    @property
    def overflow(self) -> Overflow:
        if self.top_inf:
            return Overflow.INF
        return {NanStyle.IEEE: Overflow.INF, NanStyle.FN: Overflow.NAN,
                NanStyle.FNUZ: Overflow.NAN, NanStyle.NONE: Overflow.SATURATE}[self.nan]

    @property
    def _top_field(self) -> int:
        return 2 ** self.ebits - 1

    @property
    def _mmask(self) -> int:
        return 2 ** self.mbits - 1

    @property
    def _top_non_nan(self) -> int:
        """The largest magnitude code that is not NaN (where ``top_inf`` puts +-Inf)."""
        top = self._top_field
        if self.nan is NanStyle.IEEE:
            return ((top - 1) << self.mbits) | self._mmask
        if self.nan is NanStyle.FN:
            return ((top << self.mbits) | self._mmask) - 1
        return (top << self.mbits) | self._mmask

    @property
    def max_code(self) -> int:
        return self._top_non_nan - 1 if self.top_inf else self._top_non_nan

    @property
    def emin(self) -> int:
        """Exponent of the lowest binade that holds values of the form 1.M."""
        return 1 - self.bias if (self.subnormals or self.zero) else -self.bias

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** self.emin

    @property
    def nan_code(self) -> int | None:
        if self.nan is NanStyle.IEEE:
            return (self._top_field << self.mbits) | (1 << (self.mbits - 1))
        if self.nan is NanStyle.FN:
            return (self._top_field << self.mbits) | self._mmask
        if self.nan is NanStyle.FNUZ:
            return 1 << (self.bits - 1)
        return None

    @property
    def inf_code(self) -> int | None:
        if self.top_inf:
            return self._top_non_nan
        return (self._top_field << self.mbits) if self.has_inf else None

    def code_value(self, code: int):
        if not 0 <= code < 2 ** self.bits:
            raise ValueError(f"code {code} out of range for {self.name} ({self.bits} bits)")
        sign_bit = (code >> (self.ebits + self.mbits)) & 1 if self.signed else 0
        mag = code & ((1 << (self.ebits + self.mbits)) - 1)
        field, mant = mag >> self.mbits, mag & self._mmask
        sign = -1 if sign_bit else 1
        if self.nan is NanStyle.FNUZ and sign_bit and mag == 0:
            return float("nan")
        if self.nan is NanStyle.IEEE and field == self._top_field:
            return float("nan") if mant else sign * float("inf")
        if self.nan is NanStyle.FN and mag == (self._top_field << self.mbits) | self._mmask:
            return float("nan")
        if self.top_inf and mag == self.inf_code:
            return sign * float("inf")
        if field == 0 and self.subnormals:
            return sign * Fraction(mant, 2 ** self.mbits) * Fraction(2) ** (1 - self.bias)
        if field == 0 and self.zero:  # flush-to-zero format: field 0 means zero
            return sign * Fraction(0)
        return sign * (1 + Fraction(mant, 2 ** self.mbits)) * Fraction(2) ** (field - self.bias)

    def quantum_exponent(self, e: torch.Tensor) -> torch.Tensor:
        if self.subnormals:
            return torch.clamp(e, min=self.emin) - self.mbits
        # no subnormals: below the lowest binade the only candidates are 0 and 2^emin
        return torch.where(e < self.emin, torch.full_like(e, self.emin), e - self.mbits)

    # ---- vectorized codes ---------------------------------------------------------------
    def encode(self, q: torch.Tensor) -> torch.Tensor:
        a = q.abs()
        finite_nonzero = torch.isfinite(a) & (a > 0)
        safe = torch.where(finite_nonzero, a, torch.ones_like(a))
        e = floor_log2(safe)
        normal = e >= self.emin
        field = torch.where(normal, e + self.bias, torch.zeros_like(e))
        qe = torch.clamp(e, min=self.emin) - self.mbits
        # exact: safe is a multiple of 2^qe (2^-qe itself may be beyond float64: e11m52's 2^1074)
        sig = torch.round(mul_pow2(safe, -qe)).to(torch.int64)
        mant = torch.where(normal, sig - (1 << self.mbits), sig)
        mag = (field << self.mbits) | mant
        mag = torch.where(finite_nonzero, mag, torch.zeros_like(mag))
        if self.has_inf:
            mag = torch.where(torch.isinf(a), torch.full_like(mag, self.inf_code), mag)
        if self.signed:
            negative = torch.signbit(q) & (finite_nonzero | torch.isinf(q) | torch.tensor(self.neg_zero))
            mag = mag | (negative.to(torch.int64) << (self.bits - 1))
        if self.has_nan:
            mag = torch.where(torch.isnan(q), torch.full_like(mag, as_int64_code(self.nan_code)), mag)
        return mag

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int64)
        nbits = self.ebits + self.mbits
        mag = c & ((1 << nbits) - 1)
        field, mant = mag >> self.mbits, mag & self._mmask
        if self.subnormals:
            sig = torch.where(field == 0, mant, mant + (1 << self.mbits))
            exp = torch.clamp(field, min=1) - self.bias - self.mbits
        else:
            sig = mant + (1 << self.mbits)
            exp = field - self.bias - self.mbits
            if self.zero:
                sig = torch.where(field == 0, torch.zeros_like(sig), sig)
        v = mul_pow2(sig.to(torch.float64), exp)
        if self.signed:
            v = torch.where(((c >> nbits) & 1).bool(), -v, v)
        if self.has_inf:
            inf = mag == self.inf_code
            v = torch.where(inf, torch.copysign(torch.full_like(v, float("inf")), v), v)
        if self.nan is NanStyle.IEEE:
            v = torch.where((field == self._top_field) & (mant != 0), torch.full_like(v, float("nan")), v)
        elif self.nan is NanStyle.FN:
            v = torch.where(mag == (self._top_field << self.mbits) | self._mmask,
                            torch.full_like(v, float("nan")), v)
        elif self.nan is NanStyle.FNUZ:
            v = torch.where(c == as_int64_code(self.nan_code), torch.full_like(v, float("nan")), v)
        return v
