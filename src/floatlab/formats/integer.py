"""Integer and fixed-point formats: two's complement (or unsigned) integers times 2^-frac_bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from fractions import Fraction

import torch

from floatlab.formats.base import Overflow, ScalarFormat, check_float64_range, mul_pow2


@dataclass(frozen=True)
class IntFormat(ScalarFormat):
    """``nbits``-bit integers scaled by ``2^-frac_bits``.

    Args:
        nbits: total width, 2..16.
        signed: two's complement if True, else unsigned.
        frac_bits: fixed-point fraction bits (MXINT8's element is int8 with ``frac_bits=6``).
        symmetric: drop the most negative code so the range is ``[-max, max]``.
        name: display name.

    Overflow always saturates; negative inputs to an unsigned format clamp to 0.

    Raises:
        ValueError: ``nbits`` outside 2..16, ``symmetric`` unsigned, or a ``frac_bits`` whose
            values are not float64 values (beyond 2^1024 or finer than 2^-1074).
    """

    nbits: int
    signed: bool = True
    frac_bits: int = 0
    symmetric: bool = False
    name: str = ""

    has_inf: ClassVar[bool] = False
    has_nan: ClassVar[bool] = False
    has_zero: ClassVar[bool] = True
    neg_zero: ClassVar[bool] = False
    overflow: ClassVar[Overflow] = Overflow.SATURATE

    def __post_init__(self) -> None:
        if not 2 <= self.nbits <= 16:
            raise ValueError(f"integer formats take 2..16 bits, got {self.nbits}")
        if self.symmetric and not self.signed:
            raise ValueError("symmetric applies to signed integers only")
        if not self.name:
            base = ("int" if self.signed else "uint") + str(self.nbits)
            base += f"_f{self.frac_bits}" if self.frac_bits else ""
            object.__setattr__(self, "name", base + ("_sym" if self.symmetric else ""))
        largest = max(self._imax, -self._imin) * Fraction(2) ** -self.frac_bits
        check_float64_range(self.name, largest, -self.frac_bits)

    @property
    def bits(self) -> int:
        return self.nbits

    @property
    def _imax(self) -> int:
        return 2 ** (self.nbits - 1) - 1 if self.signed else 2 ** self.nbits - 1

    @property
    def _imin(self) -> int:
        if not self.signed:
            return 0
        return -self._imax if self.symmetric else -(2 ** (self.nbits - 1))

    @property
    def max_code(self) -> int:
        return self._imax

    @property
    def max_negative(self) -> float:
        return -self._imin * 2.0 ** -self.frac_bits

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** -self.frac_bits

    def code_value(self, code: int):
        if not 0 <= code < 2 ** self.nbits:
            raise ValueError(f"code {code} out of range for {self.name} ({self.nbits} bits)")
        i = code - 2 ** self.nbits if (self.signed and code >= 2 ** (self.nbits - 1)) else code
        return Fraction(i) * Fraction(2) ** -self.frac_bits    # frac_bits may be negative

    def quantum_exponent(self, e: torch.Tensor) -> torch.Tensor:
        return torch.full_like(e, -self.frac_bits)

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        i = torch.round(mul_pow2(q, self.frac_bits)).to(torch.int64)
        return i & (2 ** self.nbits - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int64)
        if self.signed:
            c = torch.where(c >= 2 ** (self.nbits - 1), c - 2 ** self.nbits, c)
        return mul_pow2(c.to(torch.float64), -self.frac_bits)
