"""HiFloat4's three-level scaling (FORMATS.md section 2.2, Huawei's amct reference).

A block is 64 values, indexed [8 groups][2 subgroups][4 elements]:

0. the input is float32 (amct's); float64 input rounds to it, a finite value beyond float32's
   range saturating to +-3.4028235e38 (:func:`floatlab.plain.blocking.float32_input`), so it
   ends at HiF4's largest magnitude 344064 like every other huge value;
1. a non-finite value anywhere poisons the block (E6M2 byte 0xFF, every value NaN); non-finite
   values count as 0 for the maxima;
2. ``Ma``, ``Mb``, ``Mc``: max |x| over the block, each group of 8, each subgroup of 4;
3. level 1: ``sf = bf16(Ma * bf16(1/7))`` clamped to [2^-48, 1.5*2^15], rounded (RNE) to the
   unsigned E6M2 scale ``S1`` (bias 48, no zero; byte 0 is 2^-48, 0xFE the largest, 0xFF NaN);
4. ``r = bf16(1 / S1)``; level 2: ``E1_8 = [Mb * r >= 4]``; level 3: ``E1_16 = [Mc * r * 2^-E1_8 >= 2]``;
5. elements: ``v = bf16(|x| * r * 2^-(E1_8 + E1_16))``, then E1M2 (0, 0.25, ..., 1.75) with
   ties away (the reference; ``rounding="rne"`` gives the A6 hardware golden) and saturation;
6. value = ``sign * S1 * 2^(E1_8 + E1_16) * c / 4``.

Every product is rounded to float32 first and then, where the spec says bf16, to bfloat16
(``bf16(f32(.))``), exactly as the amct reference computes it; the double rounding can change
the E6M2 byte (e.g. Ma = 1.979452133178711 gives sf = 0.28125, byte 0xB8).

Scale metadata is 4 bytes a block: [E6M2, E1_8 bits, E1_16 bits of subgroups 0-7, 8-15], the
first group/subgroup in the most significant bit.
"""

from __future__ import annotations

import torch

from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat4 import E6M2, ONE_SEVENTH_BF16, SF_MAX, SF_MIN
from floatlab.plain.blocking import float32_input
from floatlab.plain.scalar import quantize_to_float64
from floatlab.rounding import RoundingMode

_BF16 = FloatFormat(8, 7, name="bf16")


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 (RNE) through float32, as amct does: ``bf16(f32(t))``."""
    return quantize_to_float64(_f32(t), _BF16, RoundingMode.RNE, False, None, None)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


def _msb_first8(device) -> torch.Tensor:
    return 2 ** torch.arange(7, -1, -1, device=device)


def _bits_to_byte(bits: torch.Tensor) -> torch.Tensor:
    """(..., 8) 0/1 -> (...) byte, element 0 in bit 7."""
    return (bits.to(torch.int64) * _msb_first8(bits.device)).sum(-1)


def _byte_to_bits(byte: torch.Tensor) -> torch.Tensor:
    return (byte.to(torch.int64)[..., None] // _msb_first8(byte.device)) % 2


def encode_blocks(xb: torch.Tensor, fmt, mode, generator, sr_bits):
    """(nb, 64) float64 -> element codes (nb, 64) and {"scale": uint8 (nb, 4)}."""
    nb = xb.shape[0]
    xb = float32_input(xb).to(torch.float64)  # amct works on float32 inputs (float64 saturates)
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1)
    xa = torch.where(finite, xb.abs(), torch.zeros_like(xb))
    ma = xa.amax(dim=1)
    mb = xa.view(nb, 8, 8).amax(dim=2)
    mc = xa.view(nb, 16, 4).amax(dim=2)
    sf = _bf16(ma * ONE_SEVENTH_BF16).clamp(SF_MIN, SF_MAX)
    s1 = quantize_to_float64(sf, E6M2, RoundingMode.RNE, True, None, None)
    r = _bf16(1.0 / s1)
    # the comparisons use float32 products (amct); a power-of-two factor is exact
    e1_8 = (_f32(mb * r[:, None]) >= 4).to(torch.int64)                  # (nb, 8)
    e1_8_sub = e1_8.repeat_interleave(2, dim=1)                           # (nb, 16)
    e1_16 = (_f32(mc * r[:, None]) * torch.exp2(-e1_8_sub.double()) >= 2).to(torch.int64)
    shift = (e1_8_sub + e1_16).repeat_interleave(4, dim=1)                # (nb, 64)
    v = _bf16(_f32(xa * r[:, None]) * torch.exp2(-shift.double()))
    c = quantize_to_float64(v, fmt.element, mode, True, generator, sr_bits)
    negative = (torch.where(finite, xb, torch.zeros_like(xb)) < 0)
    codes = fmt.element.encode(torch.where(negative, -c, c))             # -0 keeps its sign
    e6m2 = E6M2.encode(torch.where(bad, torch.full_like(s1, float("nan")), s1))
    scale = torch.stack([e6m2, _bits_to_byte(e1_8), _bits_to_byte(e1_16[:, :8]),
                         _bits_to_byte(e1_16[:, 8:])], dim=1)
    return codes, {"scale": scale.to(torch.uint8)}


def decode_blocks(codes: torch.Tensor, scales: dict, fmt, meta) -> torch.Tensor:
    s = scales["scale"].to(torch.int64)
    s1 = E6M2.decode(s[:, 0])
    e1_8 = _byte_to_bits(s[:, 1]).repeat_interleave(2, dim=1)
    e1_16 = torch.cat([_byte_to_bits(s[:, 2]), _byte_to_bits(s[:, 3])], dim=1)
    shift = (e1_8 + e1_16).repeat_interleave(4, dim=1)
    return fmt.element.decode(codes) * s1[:, None] * torch.exp2(shift.double())
