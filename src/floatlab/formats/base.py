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
from functools import cached_property

import torch

from floatlab.rounding import RoundingMode

class Overflow(str, enum.Enum):
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
        e = math.floor(math.log2(self.max_value))
        qe = int(self.quantum_exponent(torch.tensor([e])).item())
        return self.max_value + 2.0 ** qe

    @property
    def code_dtype(self) -> torch.dtype:
        """Integer dtype that holds one unsigned code."""
        if self.bits <= 8:
            return torch.uint8
        return torch.int32 if self.bits <= 31 else torch.int64

    @property
    def kind(self) -> str:
        return "scalar"

    def describe(self) -> str:
        return self.name

    def __str__(self) -> str:
        return self.name

