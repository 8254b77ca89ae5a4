"""HiFloat8: Huawei's tapered 8-bit float (FORMATS.md section 1).

Layout: sign | dot (prefix code) | exponent (sign-magnitude, implicit leading 1) | mantissa.

=========  =====  =========  ========  ==========
dot code   D      exp bits   mantissa  exponents
=========  =====  =========  ========  ==========
``11``     4      4          1         +-8..+-15
``10``     3      3          2         +-4..+-7
``01``     2      2          3         +-2, +-3
``001``    1      1          3         +-1
``0001``   0      0          3         0
``0000``   DML    0          3 (exp)   -22..-16, value 2^(m-23)
=========  =====  =========  ========  ==========

Zero is ``0x00`` (no negative zero), NaN is ``0x80``, +-Inf are ``0x6F``/``0xEF`` (the slot of
1.5*2^15), the largest finite value is 2^15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from fractions import Fraction

import torch

from floatlab.formats.base import Overflow, ScalarFormat, floor_log2, pow2
from floatlab.rounding import RoundingMode

_INF_CODE = 0x6F
_NAN_CODE = 0x80
_DML_MIN_EXP, _DML_MAX_EXP = -22, -16


@dataclass(frozen=True)
class HiF8Format(ScalarFormat):
    """The HiFloat8 tapered format. Default rounding is ties-away (TA), as en_dtypes' cast."""

    name: str = "hif8"

    bits: ClassVar[int] = 8
    signed: ClassVar[bool] = True
    has_inf: ClassVar[bool] = True
    has_nan: ClassVar[bool] = True
    has_zero: ClassVar[bool] = True
    neg_zero: ClassVar[bool] = False
    overflow: ClassVar[Overflow] = Overflow.INF
    max_code: ClassVar[int] = 0x6E  # 2^15, the largest finite value

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** -15

    @property
    def nan_code(self) -> int:
        return _NAN_CODE

    @property
    def inf_code(self) -> int:
        return _INF_CODE

    @property
    def default_rounding(self) -> RoundingMode:
        return RoundingMode.RNA

    def valid_rounding(self, mode: RoundingMode) -> bool:
        return True

    def code_value(self, code: int):
        if not 0 <= code < 256:
            raise ValueError(f"code {code} out of range for hif8 (8 bits)")
        if code == _NAN_CODE:
            return float("nan")
        sign = -1 if code & 0x80 else 1
        if code & 0x7F == _INF_CODE:
            return sign * float("inf")
        body = code & 0x7F
        if body >> 5:                      # dot 11 / 10 / 01: D = 4 / 3 / 2
            d = {3: 4, 2: 3, 1: 2}[body >> 5]
            rest, nrest = body & 0x1F, 5
        elif body & 0x10:                  # dot 001: D = 1
            d, rest, nrest = 1, body & 0x0F, 4
        elif body & 0x08:                  # dot 0001: D = 0
            d, rest, nrest = 0, body & 0x07, 3
        else:                              # dot 0000: denormal mode
            m = body & 0x07
            return sign * Fraction(0) if m == 0 else sign * Fraction(2) ** (m - 23)
        mbits = nrest - d                  # the exponent takes D bits: sign + (D-1) magnitude
        mant = rest & ((1 << mbits) - 1)
        if d == 0:
            e = 0
        else:
            ebits = rest >> mbits
            esign = ebits >> (d - 1)
            mag = (1 << (d - 1)) + (ebits & ((1 << (d - 1)) - 1))
            e = -mag if esign else mag
        return sign * (1 + Fraction(mant, 2 ** mbits)) * Fraction(2) ** e

    def quantum_exponent(self, e: torch.Tensor) -> torch.Tensor:
        ae = e.abs()
        m = torch.where(ae <= 3, 3, torch.where(ae <= 7, 2, 1))
        normal = e - m
        qe = torch.where(e < -15, e, normal)                 # denormal binades: spacing 2^e
        qe = torch.where(e < _DML_MIN_EXP, torch.full_like(e, _DML_MIN_EXP), qe)
        return torch.where(e > 15, e - 1, qe)                # beyond max: grid of 1.5*2^15

    def encode(self, q: torch.Tensor) -> torch.Tensor:
        a = q.abs()
        finite_nonzero = torch.isfinite(a) & (a > 0)
        safe = torch.where(finite_nonzero, a, torch.ones_like(a))
        e = floor_log2(safe)
        ae = e.abs()
        m = torch.where(ae <= 3, 3, torch.where(ae <= 7, 2, 1))
        mant = torch.round(safe * pow2(m - e)).to(torch.int64) - (1 << m)
        esign = (e < 0).to(torch.int64)
        code = torch.where(
            ae == 0, 0x08 | mant,
            torch.where(ae == 1, 0x10 | (esign << 3) | mant,
            torch.where(ae <= 3, 0x20 | (esign << 4) | ((ae - 2) << 3) | mant,
            torch.where(ae <= 7, 0x40 | (esign << 4) | ((ae - 4) << 2) | mant,
                        0x60 | (esign << 4) | ((ae - 8) << 1) | mant))))
        code = torch.where(e < -15, e + 23, code)                         # denormal mode
        code = torch.where(finite_nonzero, code, torch.zeros_like(code))
        code = torch.where(torch.isinf(a), torch.full_like(code, _INF_CODE), code)
        negative = torch.signbit(q) & (finite_nonzero | torch.isinf(q))
        code = code | (negative.to(torch.int64) << 7)
        return torch.where(torch.isnan(q), torch.full_like(code, _NAN_CODE), code)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        table = _decode_table().to(codes.device)
        return table[codes.to(torch.int64)]


_TABLE: torch.Tensor | None = None


def _decode_table() -> torch.Tensor:
    global _TABLE
    if _TABLE is None:
        fmt = HiF8Format()
        _TABLE = torch.tensor([float(fmt.code_value(c)) for c in range(256)], dtype=torch.float64)
    return _TABLE
