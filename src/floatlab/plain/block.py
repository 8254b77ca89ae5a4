"""Block-format quantization: one pipeline, parameterized by the scale rule.

``block_encode`` cuts the tensor into blocks (:mod:`floatlab.plain.blocking`), lets the rule
compute element codes and scales; :class:`~floatlab.QTensor` stores them packed.
``block_quantize`` is ``block_decode(block_encode(x))``, so the fake-quantized values and the
stored ones cannot disagree.
"""

from __future__ import annotations

import math

import torch

from floatlab.formats.base import floor_log2, pow2
from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.plain import hif4 as hif4_rule
from floatlab.plain.blocking import F32_MAX, Blocking, float32_input, to_blocks
from floatlab.plain.scalar import quantize_to_float64
from floatlab.rounding import RoundingMode

RNE = RoundingMode.RNE
_NO_EXPONENT = -100000  # floor(log2 0): far below any scale, clamped to the smallest


def _q(x: torch.Tensor, fmt, mode=RNE, saturate=True, generator=None, sr_bits=None):
    return quantize_to_float64(x, fmt, mode, saturate, generator, sr_bits)


# ---- power-of-two scales (OCP MX and variants) -------------------------------------------
def element_precision(elem) -> int:
    """Mantissa bits of the element format in its top binade (e2m1: 1, e4m3: 3, int8: 6)."""
    emax = math.floor(math.log2(elem.max_value))
    return emax - int(elem.quantum_exponent(torch.tensor([emax])).item())


def _pow2_scale_exponent(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """The scale exponent of each block from its float64 ``amax`` (exact at every magnitude:
    exponents and mantissas come from ``frexp``, so nothing overflows or underflows)."""
    elem, rule = fmt.element, fmt.rule
    emax_elem = math.floor(math.log2(elem.max_value))
    if rule is ScaleRule.FLOOR:
        e = floor_log2(amax, zero=_NO_EXPONENT) - emax_elem
    elif rule is ScaleRule.CEIL:
        f = floor_log2(amax, zero=_NO_EXPONENT)
        exact = amax == pow2(f)
        e = f + (~exact).to(torch.int64) - emax_elem
    elif rule is ScaleRule.EVEN:
        # amax rounded (RNE) to the element's precision p, then FLOOR: the rounding carries into
        # the next binade iff the mantissa m in [1, 2) is >= 2 - 2^-(p+1) (the tie goes up: 2 is
        # the even neighbour). Read from frexp, not from a rounded amax, which would overflow
        # to Inf for amax near float64's max.
        f = floor_log2(amax, zero=_NO_EXPONENT)
        m = 2 * torch.frexp(amax).mantissa
        carry = (amax > 0) & (m >= 2 - 2.0 ** -(element_precision(elem) + 1))
        e = f + carry.to(torch.int64) - emax_elem
    else:  # RCEIL: the smallest e with elem_max * 2^e >= amax
        e = floor_log2(amax, zero=_NO_EXPONENT) - math.floor(math.log2(elem.max_value))
        too_small = elem.max_value * pow2(e) < amax
        e = e + too_small.to(torch.int64)
        fits_lower = elem.max_value * pow2(e - 1) >= amax
        e = e - fits_lower.to(torch.int64)
    lo = round(math.log2(fmt.scale.smallest_positive))
    hi = math.floor(math.log2(fmt.scale.max_value))
    return e.clamp(lo, hi)


_F64_TINY_EXP = -1022   # below 2^-1022 a float64 quotient x / 2^e may lose bits


def float64_elements_exact(elem) -> bool:
    """Whether the element's grid below 2^-1022 is one spacing of at least 2^-969 (every element
    with at most 10 exponent bits at its default bias): then a quotient below 2^-1022 is at most
    2^-53 of a step and :func:`_element_quotients` rounds it exactly."""
    qe = elem.quantum_exponent(torch.arange(-1200, _F64_TINY_EXP + 1, dtype=torch.int64))
    return bool((qe == qe[0]).all()) and int(qe[0]) >= _F64_TINY_EXP + 53


def _element_quotients(xf: torch.Tensor, e: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """``xf / 2^e`` per block, as the element rounding must see it.

    The division by a power of two is exact unless the quotient falls below 2^-1022 (float64
    inputs only: float32 ones stay above 2^-276), where it would round, to 0 at worst, and a
    directed or stochastic mode would lose that the value is nonzero (``rup`` of 1e-300 beside
    1e38 gave 0 instead of the element's smallest step). Such a quotient lies below 2^-969 of
    the element's smallest step, so every mode decides on its sign alone (a stochastic draw
    compares against a probability below 2^-53, which no draw of the plain path or the fused
    kernel resolves); the quotient is replaced by +-2^-1022, which decides the same.
    """
    X = pow2(e)[:, None]
    p = xf / X
    # only |x| < 2^-1022 * largest scale can give such a quotient (E8M0: 2^-895, float64 input)
    top = math.floor(math.log2(fmt.scale.max_value))
    maybe = (xf != 0) & (xf.abs() < math.ldexp(1.0, _F64_TINY_EXP + top))
    if not bool(maybe.any()):
        return p
    tiny = maybe & (floor_log2(xf.abs(), zero=0) - e[:, None] < _F64_TINY_EXP)
    if not bool(tiny.any()):
        return p
    if not float64_elements_exact(fmt.element):
        raise ValueError(
            f"{fmt.name!r}: element {fmt.element.name!r} has steps below 2^-969, and the input "
            f"holds {int(tiny.sum())} float64 value(s) below 2^-1022 times their block scale; the "
            "block pipeline computes x / scale in float64 and cannot round these exactly. Use an "
            "element format with at most 10 exponent bits, or float32 input")
    proxy = torch.copysign(torch.full_like(p, 2.0 ** _F64_TINY_EXP), xf)
    return torch.where(tiny, proxy, p)


def _encode_pow2(xb, fmt, mode, generator, sr_bits):
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1)
    amax = torch.where(finite, xb.abs(), torch.zeros_like(xb)).amax(dim=1)
    e = _pow2_scale_exponent(amax, fmt)
    X = pow2(e)
    p = _element_quotients(torch.where(finite, xb, torch.zeros_like(xb)), e, fmt)
    pq = _q(p, fmt.element, mode, True, generator, sr_bits)
    scale_codes = fmt.scale.encode(torch.where(bad, torch.full_like(X, float("nan")), X))
    return fmt.element.encode(pq), {"scale": scale_codes.to(fmt.scale.code_dtype)}


def _decode_pow2(codes, scales, fmt, meta):
    X = fmt.scale.decode(scales["scale"].to(torch.int64))
    return fmt.element.decode(codes) * X[:, None]


# ---- amax / elem_max scales in float32 (NVFP4, user recipes with E4M3/UE5M3 scales) --------
def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def _tensor_scales(tensor_amax: torch.Tensor, fmt: BlockFormat, scale_max: float):
    """NVFP4's second level: s_enc = elem_max * scale_max / amax, s_dec = 1 / s_enc (fp32).

    As TransformerEngine (``compute_global_encode_scaling_factor_FP4``): an s_enc beyond
    float32's range saturates to its max (an amax below 2688 / 3.4e38 = 7.9e-36 for NVFP4;
    before, s_enc = 1 made every block scale underflow to zero) and a zero amax gives s_enc = 1.
    The quotient is rounded to float32 once (``elem_max * scale_max`` need not fit float32);
    s_dec saturates likewise."""
    one = torch.ones((), dtype=torch.float32)
    if not fmt.tensor_scale:
        return one, one
    amax = tensor_amax.to(torch.float64)
    num = float(fmt.element.max_value) * float(scale_max)
    s_enc = (num / torch.where(amax > 0, amax, torch.ones_like(amax))).to(torch.float32)
    s_enc = torch.where(amax > 0, s_enc.clamp(max=F32_MAX), one)
    return s_enc, (1.0 / s_enc).clamp(max=F32_MAX)


def _scale_input(v: torch.Tensor, scale_fmt) -> torch.Tensor:
    """A zero block scale where the scale format has no zero (E8M0) is its smallest value, as
    the power-of-two rules clamp (rounding 0 into such a format gives NaN)."""
    if scale_fmt.has_zero:
        return v
    return torch.where(v == 0, torch.full_like(v, scale_fmt.smallest_positive), v)


def _amax_candidate(xb32, amax_b, target, s_enc, s_dec, fmt, mode, generator, sr_bits):
    s_dec_b = amax_b / torch.tensor(target, dtype=torch.float32)
    s_b = _f32(_q(_scale_input(s_dec_b * s_enc, fmt.scale), fmt.scale, RNE, True))
    # 1 / (s_b * s_dec) saturates at float32's max (TransformerEngine), else 0 * Inf = NaN
    s_enc_b = torch.where(s_b > 0, (1.0 / (s_b * s_dec)).clamp(max=F32_MAX), torch.zeros_like(s_b))
    # a zero block scale gives +0 elements (not -0 from x * 0)
    p = torch.where(s_b[:, None] > 0, xb32 * s_enc_b[:, None], torch.zeros_like(xb32))
    pq = _q(p, fmt.element, mode, True, generator, sr_bits)
    return pq, s_b


def _encode_amax(xb, fmt, mode, generator, sr_bits):
    xb32 = float32_input(xb)   # float64 beyond float32's range saturates (not +-Inf)
    finite = torch.isfinite(xb32)
    bad = ~finite.all(dim=1)
    xa = torch.where(finite, xb32.abs(), torch.zeros_like(xb32))
    xb32 = torch.where(finite, xb32, torch.zeros_like(xb32))
    amax_b = xa.amax(dim=1)
    four_six = fmt.rule is ScaleRule.FOUR_OVER_SIX
    scale_max = 256.0 if four_six else fmt.scale.max_value
    t_amax = amax_b.max() if amax_b.numel() else torch.zeros(())   # over finite values only
    s_enc, s_dec = _tensor_scales(t_amax, fmt, scale_max)
    emax = fmt.element.max_value
    pq, s_b = _amax_candidate(xb32, amax_b, emax, s_enc, s_dec, fmt, mode, generator, sr_bits)
    if four_six:
        pq4, s_b4 = _amax_candidate(xb32, amax_b, emax * 4 / 6, s_enc, s_dec, fmt, mode, generator, sr_bits)
        err6 = ((_dequant_amax(pq, s_b, s_dec) - xb32.double()) ** 2).sum(dim=1)
        err4 = ((_dequant_amax(pq4, s_b4, s_dec) - xb32.double()) ** 2).sum(dim=1)
        pick4 = err4 < err6
        pq = torch.where(pick4[:, None], pq4, pq)
        s_b = torch.where(pick4, s_b4, s_b)
    scale_codes = fmt.scale.encode(torch.where(bad, torch.full_like(s_b, float("nan")), s_b).double())
    scales = {"scale": scale_codes.to(fmt.scale.code_dtype)}
    if fmt.tensor_scale:
        scales["tensor_scale"] = s_dec.reshape(1)
    return fmt.element.encode(pq), scales


def _dequant_amax(pq, s_b, s_dec):
    """``f32(q * s_b * s_dec)``: NVFP4's ``f32(f32(q * s_b) * s_dec)`` (``q * s_b`` is exact in
    float32 there), computed in float64 so that a wide scale format (E8M0 with a tensor scale)
    cannot overflow ``q * s_b`` to Inf on the way (the product is exact in float64)."""
    f64 = torch.float64
    return ((pq.to(f64) * s_b.to(f64)[:, None]) * s_dec.to(f64)).to(torch.float32)


def _decode_amax(codes, scales, fmt, meta):
    s_b = _f32(fmt.scale.decode(scales["scale"].to(torch.int64)))
    s_dec = scales.get("tensor_scale", torch.ones(1, dtype=torch.float32)).to(torch.float32)
    return _dequant_amax(fmt.element.decode(codes), s_b, s_dec.reshape(())).double()


_RULES = {
    ScaleRule.HIF4: (hif4_rule.encode_blocks, hif4_rule.decode_blocks),
    ScaleRule.AMAX: (_encode_amax, _decode_amax),
    ScaleRule.FOUR_OVER_SIX: (_encode_amax, _decode_amax),
}


def _rule(fmt: BlockFormat):
    return _RULES.get(fmt.rule, (_encode_pow2, _decode_pow2))


# ---- entry points ---------------------------------------------------------------------------
def block_encode(x: torch.Tensor, fmt: BlockFormat, mode: RoundingMode, generator=None,
                 sr_bits=None, axis: int = -1, pad: bool = True):
    """Encode ``x`` into the block format ``fmt``; blocks run along ``axis`` (or 2D tiles).

    Returns ``(codes, scales, meta)``: int64 element codes in the blocked layout
    ``(nblocks, block)``, the named scale tensors, and the JSON-able facts :func:`block_decode`
    needs (block axis and padded extents). The arguments are validated by the caller.
    """
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    encode_blocks, _ = _rule(fmt)
    codes, scales = encode_blocks(xb.to(torch.float64) if x.dtype != torch.float64 else xb, fmt,
                                  mode, generator, sr_bits)
    return codes, scales, {"axis": blocking.axis, "padded": list(blocking.padded)}


def blocking_of(fmt: BlockFormat, shape, meta: dict) -> Blocking:
    """The :class:`Blocking` that :func:`block_encode` used for a tensor of ``shape``."""
    return Blocking(tuple(shape), int(meta["axis"]), fmt.block, tuple(meta["padded"]))


def block_decode(codes: torch.Tensor, scales: dict, fmt: BlockFormat, shape, meta: dict) -> torch.Tensor:
    """float64 values of blocked element ``codes`` ``(nblocks, block)``, in the tensor's layout."""
    _, decode_blocks = _rule(fmt)
    return blocking_of(fmt, shape, meta).unblock(decode_blocks(codes, scales, fmt, meta))


def block_quantize(x: torch.Tensor, fmt: BlockFormat, mode: RoundingMode, generator=None,
                   sr_bits=None, axis: int = -1, pad: bool = True) -> torch.Tensor:
    """``block_decode(block_encode(x))`` in ``x``'s dtype: the plain pipeline's fake-quantize."""
    codes, scales, meta = block_encode(x, fmt, mode, generator, sr_bits, axis, pad)
    return block_decode(codes, scales, fmt, x.shape, meta).to(x.dtype)
