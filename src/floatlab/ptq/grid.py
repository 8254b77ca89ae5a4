"""Block-format scales frozen for a set of blocks: GPTQ's group grids and RTN's codes + scales.

:func:`block_grid` computes a block format's scales for a ``(nblocks, block)`` float32 matrix the
way :mod:`floatlab.plain.block` / :mod:`floatlab.plain.hif4` do (MX: FLOOR; NVFP4: AMAX, Four Over
Six; HiF4), and returns a :class:`BlockGrid` that rounds *other* values on the grid those scales
define. GPTQ needs this: it fixes a block's scales when it reaches the block, then rounds the
block's columns one by one as it updates them. Element rounding goes through
:func:`floatlab.quantize` (the one quantize entry point), so ``grid.round(xb)`` of the unchanged
blocks equals ``floatlab.quantize`` of them bit for bit (``tests/test_ptq_fastquant.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import floatlab
from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.formats.hifloat4 import E6M2, ONE_SEVENTH_BF16, SF_MAX, SF_MIN
from floatlab.kernels.scalar import F32, pow2
from floatlab.rounding import RoundingMode, resolve_rounding

_FAST_RULES = (ScaleRule.FLOOR, ScaleRule.AMAX, ScaleRule.FOUR_OVER_SIX, ScaleRule.HIF4)


def block_supported(fmt) -> bool:
    return isinstance(fmt, BlockFormat) and fmt.rule in _FAST_RULES


@dataclass
class BlockGrid:
    """A block format's scales frozen for a ``(nblocks, block)`` matrix: ``round`` puts values
    on the grid those scales define. ``fake_quant`` of the same values is ``round(values)``.

    GPTQ uses this to keep a group's scales fixed while it updates the group column by column;
    ``scales()`` gives the scales in the layout of floatlab's QTensor (for saving).
    """

    fmt: BlockFormat
    mode: RoundingMode
    encode_mul: torch.Tensor      # (nb, block) float32 (HiF4: (nb, block, 2))
    decode: callable              # (signed element values, cols) -> fake-quantized values
    params: dict                  # the scales: X (MX); s_b, s_dec (NVFP4); s1, e1_8, e1_16 (HiF4)

    def elements(self, xb: torch.Tensor, cols: slice | None = None) -> torch.Tensor:
        """Signed element values (on the element format's grid) of ``xb``."""
        mul = self.encode_mul if cols is None else self.encode_mul[:, cols]
        if self.fmt.rule is ScaleRule.HIF4:
            v = _bf16((xb.abs() * mul[..., 0]) * mul[..., 1])
            c = floatlab.quantize(v, self.fmt.element, self.mode, saturate=True)
            return torch.where(xb < 0, -c, c)
        return floatlab.quantize(xb * mul, self.fmt.element, self.mode, saturate=True)

    def round(self, xb: torch.Tensor, cols: slice | None = None) -> torch.Tensor:
        return self.decode(self.elements(xb, cols), cols)

    def scales(self) -> dict[str, torch.Tensor]:
        """The scale tensors as :func:`floatlab.encode` stores them for these blocks."""
        fmt, p = self.fmt, self.params
        if fmt.rule is ScaleRule.FLOOR:
            return {"scale": fmt.scale.encode(p["X"].double()).to(fmt.scale.code_dtype)}
        if fmt.rule is ScaleRule.HIF4:
            msb = 2 ** torch.arange(7, -1, -1)
            byte = lambda bits: (bits.to(torch.int64) * msb).sum(-1)  # noqa: E731
            e6m2 = E6M2.encode(p["s1"].double())
            return {"scale": torch.stack([e6m2, byte(p["e1_8"]), byte(p["e1_16"][:, :8]),
                                          byte(p["e1_16"][:, 8:])], dim=1).to(torch.uint8)}
        codes = fmt.scale.encode(p["s_b"].double())
        out = {"scale": codes.to(fmt.scale.code_dtype)}
        if fmt.tensor_scale:
            out["tensor_scale"] = p["s_dec"].reshape(1).to(torch.float32)
        return out


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def block_grid(xb: torch.Tensor, fmt: BlockFormat, rounding=None,
               tensor_amax: torch.Tensor | None = None) -> BlockGrid:
    """Compute the scales of ``fmt`` for the finite float32 blocks ``xb`` (nblocks, block).

    ``tensor_amax`` overrides the amax behind NVFP4's per-tensor scale (GPTQ computes the
    scales of a few blocks at a time but keeps the whole weight's tensor scale)."""
    mode = resolve_rounding(fmt, rounding, None)
    if fmt.rule not in _FAST_RULES:
        raise ValueError(f"{fmt.name!r}: scale rule {fmt.rule.value!r} has no frozen-grid form")
    if fmt.rule is ScaleRule.FLOOR:
        return _grid_floor(xb, fmt, mode)
    if fmt.rule is ScaleRule.HIF4:
        return _grid_hif4(xb, fmt, mode)
    return _grid_amax(xb, fmt, mode, tensor_amax)


def _grid_floor(xb, fmt, mode):
    amax = xb.abs().amax(dim=1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    e = torch.frexp(safe).exponent.to(torch.int64) - 1
    e = torch.where(amax > 0, e, torch.full_like(e, -100000))
    e = e - math.floor(math.log2(fmt.element.max_value))
    lo = round(math.log2(fmt.scale.smallest_positive))
    hi = math.floor(math.log2(fmt.scale.max_value))
    X = torch.ldexp(torch.ones_like(e, dtype=torch.float64), e.clamp(lo, hi)).to(torch.float32)
    inv = (1.0 / X.double()).to(torch.float32)     # exact powers of two (X >= 2^-127)
    encode_mul = inv[:, None].expand_as(xb)

    def decode(c, cols=None):
        return c * X[:, None]
    return BlockGrid(fmt, mode, encode_mul, decode, {"X": X})


def _amax_scales(xb, amax_b, target, s_enc, s_dec, fmt):
    s_dec_b = amax_b / torch.tensor(target, dtype=torch.float32)
    s_b = floatlab.quantize(s_dec_b * s_enc, fmt.scale, RoundingMode.RNE, saturate=True)
    s_enc_b = torch.where(s_b > 0, 1.0 / (s_b * s_dec), torch.zeros_like(s_b))
    return s_b, s_enc_b


def _grid_amax(xb, fmt, mode, tensor_amax=None):
    amax_b = xb.abs().amax(dim=1)
    four_six = fmt.rule is ScaleRule.FOUR_OVER_SIX
    scale_max = 256.0 if four_six else fmt.scale.max_value
    one = torch.ones((), dtype=torch.float32)
    s_enc, s_dec = one, one
    if fmt.tensor_scale:
        t_amax = amax_b.max() if amax_b.numel() else torch.zeros((), dtype=torch.float32)
        if tensor_amax is not None:
            t_amax = tensor_amax.to(torch.float32).reshape(())
        num = torch.tensor(fmt.element.max_value * scale_max, dtype=torch.float32)
        s_enc = torch.where(t_amax > 0, num / t_amax, one)
        s_enc = torch.where(torch.isfinite(s_enc), s_enc, one)
        s_dec = (1.0 / s_enc).to(torch.float32)
    emax = fmt.element.max_value
    s_b, s_enc_b = _amax_scales(xb, amax_b, emax, s_enc, s_dec, fmt)
    if four_six:
        s_b4, s_enc_b4 = _amax_scales(xb, amax_b, emax * 4 / 6, s_enc, s_dec, fmt)
        g6 = _amax_grid(fmt, mode, s_b, s_enc_b, s_dec)
        g4 = _amax_grid(fmt, mode, s_b4, s_enc_b4, s_dec)
        err6 = ((g6.round(xb).double() - xb.double()) ** 2).sum(dim=1)
        err4 = ((g4.round(xb).double() - xb.double()) ** 2).sum(dim=1)
        pick4 = err4 < err6
        s_b = torch.where(pick4, s_b4, s_b)
        s_enc_b = torch.where(pick4, s_enc_b4, s_enc_b)
    return _amax_grid(fmt, mode, s_b, s_enc_b, s_dec, like=xb)


def _amax_grid(fmt, mode, s_b, s_enc_b, s_dec, like=None):
    positive = s_b > 0
    mul = s_enc_b[:, None]

    def decode(c, cols=None):
        c = torch.where(positive[:, None], c, torch.zeros_like(c))  # zero scale: +0 elements
        return (c * s_b[:, None]) * s_dec
    n = like.shape[1] if like is not None else fmt.block_numel
    return BlockGrid(fmt, mode, mul.expand(-1, n), decode, {"s_b": s_b, "s_dec": s_dec})




def _grid_hif4(xb, fmt, mode):
    nb = xb.shape[0]
    xa = xb.abs()
    ma = xa.amax(dim=1)
    mb = xa.view(nb, 8, 8).amax(dim=2)
    mc = xa.view(nb, 16, 4).amax(dim=2)
    sf = _bf16(ma * ONE_SEVENTH_BF16).clamp(SF_MIN, SF_MAX)
    s1 = floatlab.quantize(sf.double(), E6M2, rounding="rne", saturate=True).to(torch.float32)
    r = _bf16((1.0 / s1.double()).to(torch.float32))
    e1_8 = ((mb * r[:, None]) >= 4).to(torch.int32)
    e1_8_sub = e1_8.repeat_interleave(2, dim=1)
    e1_16 = ((mc * r[:, None]) * pow2(-e1_8_sub, F32) >= 2).to(torch.int32)
    shift = (e1_8_sub + e1_16).repeat_interleave(4, dim=1)                # (nb, 64)
    # element value v = bf16(f32(|x| * r) * 2^-shift); stored as two multipliers
    encode_mul = torch.stack([r[:, None].expand(-1, 64), pow2(-shift, F32)], dim=-1)
    dec = s1[:, None] * pow2(shift, F32)

    def decode(c, cols=None):
        return c * (dec if cols is None else dec[:, cols])
    return BlockGrid(fmt, mode, encode_mul, decode, {"s1": s1, "e1_8": e1_8, "e1_16": e1_16})
