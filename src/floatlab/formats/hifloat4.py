"""HiFloat4's scale-level constants (FORMATS.md section 2.2, Huawei's amct reference).

The HiF4 block format itself is an ordinary :class:`~floatlab.formats.block.BlockFormat`
(E1M2 elements, rule ``HIF4``); these are the facts its rule needs, shared by the plain path
(:mod:`floatlab.plain.hif4`), the fused kernels and GPTQ's frozen grid:

* ``E6M2``: the unsigned level-1 scale, 6 exponent bits, 2 mantissa bits, bias 48, no zero and
  no subnormals; byte 0 is 2^-48, 0xFE the largest used code (1.5*2^15), 0xFF marks a NaN block;
* ``ONE_SEVENTH_BF16 = bf16(1/7) = 0.142578125``: the level-1 scale is ``bf16(Ma * bf16(1/7))``;
* ``SF_MIN, SF_MAX = 2^-48, 1.5*2^15``: the clamp of that product before the E6M2 rounding.
"""

from __future__ import annotations

from floatlab.formats.floating import FloatFormat, NanStyle

E6M2 = FloatFormat(6, 2, bias=48, subnormals=False, zero=False, nan=NanStyle.FN, signed=False,
                   name="ue6m2")
ONE_SEVENTH_BF16 = 0.142578125
SF_MIN, SF_MAX = 2.0 ** -48, 1.5 * 2 ** 15
