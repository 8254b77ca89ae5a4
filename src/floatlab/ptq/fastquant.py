"""A float32 fast path for ``floatlab.quantize``, equal to it bit for bit (tested).

Post-training quantization fake-quantizes every activation in every forward pass, so the exact
float64 path (:func:`floatlab.quantize`) would dominate the run time. This module computes the
same values with float32 tensor arithmetic, for the cases where float32 is provably exact:

* scalar formats (signed, with zero, every value and quantum within float32's normal range) with
  a round-to-nearest mode (``rne``, ``rna``, ``rnz``): ``e = floor(log2|x|)`` from ``frexp``,
  the format's own ``quantum_exponent(e)``, ``round(|x| / 2^qe) * 2^qe``; a division by a power
  of two is exact in float32 wherever the result can round to a nonzero value;
* bf16 / fp16 with ``rne``: torch's own IEEE casts;
* block formats with the FLOOR (OCP MX), AMAX (NVFP4), FOUR_OVER_SIX and HIF4 rules: the same
  steps as :mod:`floatlab.ops.block` / :mod:`floatlab.ops.hif4`, which already compute their
  products in float32 (bf16 for HiF4).

Anything else (float64 or half inputs, other modes, overflow without saturation, NaN/Inf, other
scale rules) is handed to :func:`floatlab.quantize` itself, element-wise where only a few values
need it, so the result never differs. ``tests/test_ptq_fastquant.py`` checks the equality on
random, heavy-tailed, tie and special values for every format the PTQ tools use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

import floatlab
from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.ops.blocking import to_blocks
from floatlab.rounding import RoundingMode, parse_rounding

_NEAREST = (RoundingMode.RNE, RoundingMode.RNA, RoundingMode.RNZ)
_F32_MIN_NORMAL_EXP = -126
_F32_MAX_EXP = 127


def pow2_f32(k: torch.Tensor) -> torch.Tensor:
    """Exact ``2.0**k`` as float32 for integer ``k`` in [-126, 127] (built from the bits)."""
    k = k.to(torch.int32).clamp(_F32_MIN_NORMAL_EXP, _F32_MAX_EXP)
    return ((k + 127) << 23).view(torch.float32)


@dataclass(frozen=True)
class _ScalarPlan:
    fmt: object
    mode: RoundingMode
    cast: torch.dtype | None      # bf16/fp16: torch's own RNE cast
    lo: float                     # most negative finite value
    hi: float                     # largest finite value
    const_qe: int | None = None   # integer formats: the one quantum exponent


_TORCH_CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=256)
def _scalar_plan(fmt, mode: RoundingMode) -> _ScalarPlan | None:
    """How to round into ``fmt`` fast, or None when only the exact path can."""
    if getattr(fmt, "kind", "scalar") != "scalar" or mode not in _NEAREST:
        return None
    if not (fmt.signed and fmt.has_zero):
        return None
    lo, hi = -float(fmt.max_negative), float(fmt.max_value)
    cast = None
    for name, dtype in _TORCH_CASTS.items():
        ref = floatlab.get_format(name)
        if mode is RoundingMode.RNE and _same_format(fmt, ref):
            cast = dtype
    if cast is None:
        if not (fmt.smallest_positive >= 2.0 ** _F32_MIN_NORMAL_EXP and hi < 2.0 ** (_F32_MAX_EXP - 1)):
            return None
    probe = fmt.quantum_exponent(torch.arange(-130, 130, dtype=torch.int32))
    const_qe = int(probe[0]) if bool((probe == probe[0]).all()) else None
    if cast is None and int(fmt.quantum_exponent(torch.tensor([-127], dtype=torch.int32))) != \
            int(fmt.quantum_exponent(torch.tensor([-126], dtype=torch.int32))):
        return None
    return _ScalarPlan(fmt, mode, cast, lo, hi, const_qe)


def _same_format(a, b) -> bool:
    keys = ("ebits", "mbits", "bias", "subnormals", "nan", "signed")
    return type(a) is type(b) and all(getattr(a, k, None) == getattr(b, k, None) for k in keys) \
        and a.max_value == b.max_value


def _mode(fmt, rounding) -> RoundingMode:
    return fmt.default_rounding if rounding is None else parse_rounding(rounding)


def _round_magnitude(s: torch.Tensor, mode: RoundingMode) -> torch.Tensor:
    if mode is RoundingMode.RNE:
        return torch.round(s)                      # half to even, as IEEE
    if mode is RoundingMode.RNA:
        return torch.floor(s + 0.5)
    return torch.ceil(s - 0.5)                     # RNZ


def scalar_quantize(x: torch.Tensor, fmt, rounding=None, saturate: bool | None = None) -> torch.Tensor:
    """``floatlab.quantize(x, fmt, rounding, saturate)`` for a scalar format, fast where exact."""
    fmt = floatlab.get_format(fmt)
    mode = _mode(fmt, rounding)
    plan = _scalar_plan(fmt, mode)
    if plan is None or x.dtype != torch.float32:
        return floatlab.quantize(x, fmt, rounding=mode, saturate=saturate)
    if plan.cast is not None:
        xs = x.clamp(plan.lo, plan.hi) if saturate else x
        return xs.to(plan.cast).to(torch.float32)
    a = x.abs()
    if plan.const_qe is not None:               # integers: one quantum everywhere
        q = 2.0 ** plan.const_qe
        y = _round_magnitude(a * (1.0 / q), mode) * q
    else:
        # floor(log2 |x|) from the exponent field; float32 subnormals read as -127, which every
        # eligible format treats like -126 (its grid is constant below 2^-126)
        e = ((a.view(torch.int32) >> 23) & 0xFF) - 127
        qe = fmt.quantum_exponent(e)
        y = _round_magnitude(a * pow2_f32(-qe), mode) * pow2_f32(qe)
    y = torch.copysign(y, x)
    if not fmt.neg_zero:
        y = y + 0.0                                # -0 + 0 = +0
    if saturate:
        y = y.clamp(plan.lo, plan.hi)
        bad = torch.isnan(x)
    else:
        bad = ~((y >= plan.lo) & (y <= plan.hi))   # NaN, Inf, overflow: the format decides
    if bool(bad.any()):
        y = y.clone()
        y[bad] = floatlab.quantize(x[bad], fmt, rounding=mode, saturate=saturate).to(y.dtype)
    return y


# ---- block formats ------------------------------------------------------------------------
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
            c = scalar_quantize(v, self.fmt.element, self.mode, saturate=True)
            return torch.where(xb < 0, -c, c)
        return scalar_quantize(xb * mul, self.fmt.element, self.mode, saturate=True)

    def round(self, xb: torch.Tensor, cols: slice | None = None) -> torch.Tensor:
        return self.decode(self.elements(xb, cols), cols)

    def scales(self) -> dict[str, torch.Tensor]:
        """The scale tensors as :func:`floatlab.encode` stores them for these blocks."""
        fmt, p = self.fmt, self.params
        if fmt.rule is ScaleRule.FLOOR:
            return {"scale": fmt.scale.encode(p["X"].double()).to(torch.uint8)}
        if fmt.rule is ScaleRule.HIF4:
            from floatlab.ops.hif4 import E6M2
            msb = 2 ** torch.arange(7, -1, -1)
            byte = lambda bits: (bits.to(torch.int64) * msb).sum(-1)  # noqa: E731
            e6m2 = E6M2.encode(p["s1"].double())
            return {"scale": torch.stack([e6m2, byte(p["e1_8"]), byte(p["e1_16"][:, :8]),
                                          byte(p["e1_16"][:, 8:])], dim=1).to(torch.uint8)}
        codes = fmt.scale.encode(p["s_b"].double())
        out = {"scale": codes.to(torch.uint8 if fmt.scale.bits <= 8 else torch.int32)}
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
    mode = _mode(fmt, rounding)
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
    s_b = scalar_quantize(s_dec_b * s_enc, fmt.scale, RoundingMode.RNE, saturate=True)
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


_ONE_SEVENTH_BF16 = 0.142578125
_SF_MIN, _SF_MAX = 2.0 ** -48, 1.5 * 2 ** 15


def _grid_hif4(xb, fmt, mode):
    from floatlab.ops.hif4 import E6M2
    nb = xb.shape[0]
    xa = xb.abs()
    ma = xa.amax(dim=1)
    mb = xa.view(nb, 8, 8).amax(dim=2)
    mc = xa.view(nb, 16, 4).amax(dim=2)
    sf = _bf16(ma * _ONE_SEVENTH_BF16).clamp(_SF_MIN, _SF_MAX)
    s1 = floatlab.quantize(sf.double(), E6M2, rounding="rne", saturate=True).to(torch.float32)
    r = _bf16((1.0 / s1.double()).to(torch.float32))
    e1_8 = ((mb * r[:, None]) >= 4).to(torch.int32)
    e1_8_sub = e1_8.repeat_interleave(2, dim=1)
    e1_16 = ((mc * r[:, None]) * pow2_f32(-e1_8_sub) >= 2).to(torch.int32)
    shift = (e1_8_sub + e1_16).repeat_interleave(4, dim=1)                # (nb, 64)
    # element value v = bf16(f32(|x| * r) * 2^-shift); stored as two multipliers
    encode_mul = torch.stack([r[:, None].expand(-1, 64), pow2_f32(-shift)], dim=-1)
    dec = s1[:, None] * pow2_f32(shift)

    def decode(c, cols=None):
        return c * (dec if cols is None else dec[:, cols])
    return BlockGrid(fmt, mode, encode_mul, decode, {"s1": s1, "e1_8": e1_8, "e1_16": e1_16})


def block_quantize(x: torch.Tensor, fmt, rounding=None, axis: int = -1, pad: bool = True) -> torch.Tensor:
    """``floatlab.quantize(x, fmt, rounding, axis=axis, pad=pad)`` for a block format."""
    fmt = floatlab.get_format(fmt)
    if x.dtype != torch.float32 or not block_supported(fmt) or _mode(fmt, rounding) not in _NEAREST:
        return floatlab.quantize(x, fmt, rounding=rounding, axis=axis, pad=pad)
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    if not bool(torch.isfinite(xb).all()):
        return floatlab.quantize(x, fmt, rounding=rounding, axis=axis, pad=pad)
    yb = block_grid(xb, fmt, rounding).round(xb)
    return blocking.unblock(yb).contiguous()


def fast_quantize(x: torch.Tensor, fmt, rounding=None, saturate: bool | None = None,
                  axis: int = -1, pad: bool = True) -> torch.Tensor:
    """Drop-in for :func:`floatlab.quantize` (same values), fast for float32 inputs."""
    fmt = floatlab.get_format(fmt)
    if fmt.kind == "block":
        if saturate is False:
            return floatlab.quantize(x, fmt, rounding=rounding, saturate=saturate, axis=axis, pad=pad)
        return block_quantize(x, fmt, rounding, axis, pad)
    return scalar_quantize(x, fmt, rounding, saturate)
