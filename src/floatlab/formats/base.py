"""What every scalar format tells the rounding core.

A scalar format is described by what it *means*. The rounding core in :mod:`floatlab.plain.scalar`
needs only a few facts from it, the same for IEEE-style minifloats, integers and the tapered
HiFloat8:

* :meth:`ScalarFormat.quantum_exponent`: in the binade ``[2^e, 2^(e+1))`` the representable
  magnitudes are the multiples of ``2^quantum_exponent(e)``. This single function is what makes a
  format IEEE-like, fixed-point or tapered.
* the largest finite magnitudes (``max_value``, and ``max_negative`` for two's-complement
  integers), what overflow does by default (:class:`Overflow`), and which special values exist.
* :meth:`code_value`: the meaning of one code, in plain Python (used by the scalar reference,
  by ``finfo`` and by the tests; it is the spec).
* vectorized :meth:`encode` / :meth:`decode` between values and integer codes.
"""

from __future__ import annotations

import abc
import enum
import math
from fractions import Fraction
from functools import cached_property

import torch

from floatlab.rounding import RoundingMode

class Choice(str, enum.Enum):
    """A string enum whose bad value is refused with the valid ones and a did-you-mean
    (``'round' is not a valid ScaleRule`` said neither)."""

    @classmethod
    def _missing_(cls, value):
        import difflib

        valid = [m.value for m in cls]
        close = difflib.get_close_matches(str(value).lower(), valid, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{value!r} is not a valid {cls.__name__}{hint} (choose from {', '.join(valid)})")

    def __str__(self) -> str:
        return self.value


class Overflow(Choice):
    """What a round-to-nearest conversion does with a magnitude beyond the largest finite value."""

    INF = "inf"            # +-Inf (IEEE-style formats, HiFloat8)
    NAN = "nan"            # NaN (the "fn"/"fnuz" formats, like ml_dtypes' float8_e4m3fn)
    SATURATE = "saturate"  # +-max (formats with neither Inf nor NaN, integers)

    def __str__(self) -> str:
        return self.value


def pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact ``2.0**k`` as float64, built from the bit pattern, for integer tensors ``k``.

    ``k`` is clamped to [-1074, 1023] (the float64 range, subnormals included).
    """
    k = torch.clamp(k.to(torch.int64), -1074, 1023)
    normal_bits = (k + 1023) << 52
    subnormal_bits = torch.ones_like(k) << torch.clamp(k + 1074, 0, 51)
    return torch.where(k >= -1022, normal_bits, subnormal_bits).view(torch.float64)


def mul_pow2(v: torch.Tensor, k) -> torch.Tensor:
    """``v * 2^k`` for float64 ``v`` and integer ``k`` (a tensor or an int), in steps of at most
    ``2^+-1000``: exact wherever the true product is a float64 (``2^k`` itself need not be one).

    One multiplication by :func:`pow2` cannot scale by ``2^1074`` (5e-324 to 1.0) or by
    ``2^-1100``: the factor is outside float64. Each step here is exact because every
    intermediate lies between ``v`` and the result, on the same significand.
    """
    k = torch.as_tensor(k, dtype=torch.int64, device=v.device)
    for _ in range(3):          # |k| < 3000 covers any float64 v and any float64 result
        step = torch.clamp(k, -1000, 1000)
        v = v * pow2(step)
        k = k - step
    return v


def as_int64_code(code: int) -> int:
    """A code of up to 64 bits as the int64 holding its bit pattern (two's complement)."""
    return code - (1 << 64) if code >= 1 << 63 else code


_FLOAT64_MIN_EXP = -1074      # the smallest float64 is 2^-1074
_FLOAT64_LIMIT = Fraction(2) ** 1024   # every finite float64 is below it


def check_float64_range(name: str, largest, quantum_exp: int, hint: str = "") -> None:
    """Refuse a format whose values are not all float64 values (floatlab computes in float64).

    ``largest``: the largest finite magnitude (a Fraction); ``quantum_exp``: the exponent of the
    finest spacing of the format's grid (every value is a multiple of ``2^quantum_exp``).

    Raises:
        ValueError: the largest value reaches 2^1024 or the finest spacing is below 2^-1074.
    """
    if largest >= _FLOAT64_LIMIT:
        top = largest.numerator.bit_length() - largest.denominator.bit_length()
        raise ValueError(f"{name}: its largest value, about 2^{top}, is beyond float64 (every "
                         "float64 is below 2^1024); floatlab rounds and decodes in float64, so "
                         f"every value of a format must be a float64.{hint}")
    if quantum_exp < _FLOAT64_MIN_EXP:
        raise ValueError(f"{name}: its values are multiples of 2^{quantum_exp}, finer than "
                         "float64's smallest value 2^-1074; floatlab rounds and decodes in float64, "
                         f"so every value of a format must be a float64.{hint}")


def floor_log2(a: torch.Tensor, zero: int = 0) -> torch.Tensor:
    """Exact ``floor(log2 a)`` as int64 where ``a > 0`` (from ``frexp``); ``zero`` elsewhere."""
    positive = a > 0
    e = torch.frexp(torch.where(positive, a, torch.ones_like(a))).exponent.to(torch.int64) - 1
    return torch.where(positive, e, torch.full_like(e, zero))


class ScalarFormat(abc.ABC):
    """Base class of every element-wise number format (frozen dataclasses subclass it)."""

    name: str

    # ---- facts each kind provides -------------------------------------------------------
    @property
    @abc.abstractmethod
    def bits(self) -> int: ...

    @property
    @abc.abstractmethod
    def signed(self) -> bool: ...

    @property
    @abc.abstractmethod
    def has_inf(self) -> bool: ...

    @property
    @abc.abstractmethod
    def has_nan(self) -> bool: ...

    @property
    @abc.abstractmethod
    def has_zero(self) -> bool: ...

    @property
    @abc.abstractmethod
    def neg_zero(self) -> bool: ...

    @property
    @abc.abstractmethod
    def overflow(self) -> Overflow: ...

    @property
    @abc.abstractmethod
    def max_code(self) -> int:
        """The code of the largest finite positive value."""

    @property
    @abc.abstractmethod
    def smallest_normal(self) -> float: ...

    @abc.abstractmethod
    def code_value(self, code: int):
        """The value of one code as a Fraction (finite) or a float (+-inf, nan): the spec."""

    @abc.abstractmethod
    def quantum_exponent(self, e: torch.Tensor) -> torch.Tensor:
        """Exponent of the spacing of representable magnitudes in the binade [2^e, 2^(e+1))."""

    @abc.abstractmethod
    def encode(self, q: torch.Tensor) -> torch.Tensor:
        """float64 tensor of representable values (or NaN/+-Inf where the format has them)
        to int64 codes."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes to float64 values."""

    @property
    def nan_code(self) -> int | None:
        return None

    @property
    def inf_code(self) -> int | None:
        """Code of +Inf (-Inf is its sign-flipped twin)."""
        return None

    @property
    def default_rounding(self) -> RoundingMode:
        return RoundingMode.RNE

    def valid_rounding(self, mode: RoundingMode) -> bool:
        return mode is not RoundingMode.HYBRID

    # ---- derived facts ------------------------------------------------------------------
    @cached_property
    def max_value(self) -> float:
        return float(self.code_value(self.max_code))

    @cached_property
    def smallest_positive(self) -> float:
        """The smallest positive value (the smallest subnormal where there are subnormals)."""
        return 2.0 ** int(self.quantum_exponent(torch.tensor([-1100])).item())

    @property
    def max_negative(self) -> float:
        """Magnitude of the most negative finite value (``max_value`` unless two's complement)."""
        return self.max_value if self.signed else 0.0

    @cached_property
    def overflow_boundary(self) -> float:
        """The value just above ``max_value`` on the format's grid, were the exponent unbounded.

        Rounding decisions near the top compare against it (e.g. 480 for e4m3fn, 65536 for e5m2,
        1.5*2^15 for hif8): a rounded magnitude that reaches it has overflowed.
        """
        boundary = self.overflow_boundary_exact
        return float(boundary) if boundary < _FLOAT64_LIMIT else math.inf

    @cached_property
    def overflow_boundary_exact(self) -> Fraction:
        """:attr:`overflow_boundary` as an exact Fraction (2^1024 for e11m52, where the float is inf)."""
        e = math.floor(math.log2(self.max_value))
        qe = int(self.quantum_exponent(torch.tensor([e])).item())
        return Fraction(self.max_value) + Fraction(2) ** qe

    @property
    def code_dtype(self) -> torch.dtype:
        """Integer dtype that holds one code: ``uint8`` up to 8 bits, ``int32`` up to 31, else
        ``int64``. A 64-bit code (signed e11m52) is held as its bit pattern: codes with the top
        bit set are negative int64 values (two's complement), e.g. -1.0 is ``0xBFF0000000000000``
        ``= -4616189618054758400``."""
        if self.bits <= 8:
            return torch.uint8
        return torch.int32 if self.bits <= 31 else torch.int64

    def codes_from(self, codes: torch.Tensor) -> torch.Tensor:
        """Validated int64 codes (bit patterns) from an integer tensor of codes.

        Codes are ``0 .. 2^bits - 1``. A container exactly as wide as the format (``int8`` for
        8-bit codes, ``int16``, ``int32``, ``int64`` for 64-bit codes) may hold the bit pattern as
        a negative number (two's complement), as may ``uint64`` for 64-bit codes; a 64-bit format's
        codes come back as int64 bit patterns (see :attr:`code_dtype`).

        Raises:
            ValueError: a code outside ``0 .. 2^bits - 1`` (a negative value in a wider container,
                or a value needing more than ``bits`` bits).
        """
        c = codes.to(torch.int64)                 # uint64 beyond 2^63 wraps to its bit pattern
        width = codes.dtype.itemsize * 8
        if self.bits == 64:
            if width == 64:
                return c                          # every int64 is one 64-bit pattern
        elif width == self.bits and codes.dtype.is_signed:
            c = c & ((1 << self.bits) - 1)        # a signed container holding the bit pattern
        top = (1 << min(self.bits, 63)) - 1       # the largest code a non-negative int64 holds
        bad = (c < 0) | (c > top)
        if bool(bad.any()):
            first = int(codes.reshape(-1)[bad.reshape(-1).nonzero()[0]].item())
            also = (f"; an int{self.bits} tensor may hold them as negative two's-complement bit "
                    "patterns" if self.bits in (8, 16, 32, 64) else "")
            raise ValueError(f"codes out of range for {self.name!r}: {self.bits}-bit codes are "
                             f"0..{(1 << self.bits) - 1} (got {first}){also}")
        return c

    @property
    def kind(self) -> str:
        return "scalar"

    def describe(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name

