"""Fast ``encode``/``decode``: packed codes from the fused rounding kernels, values by lookup.

``floatlab.encode`` used to round in float64 and then compute every code with float64 tensor
arithmetic (about a million values a second). Here the value is rounded by the fused kernels of
:mod:`floatlab.kernels.scalar` / :mod:`floatlab.kernels.block` (the same bits as the plain path,
tested), and the code is read off the rounded float's bits in the same compiled kernel:

* IEEE-style minifloats: the exponent field and the top mantissa bits of the float32 (float64 for
  float64 inputs) pattern, re-biased; subnormals of the format as ``|q| * 2^(mbits - emin)``;
  Inf, NaN, the sign and negative zero as :meth:`FloatFormat.encode` decides them.
* fp16/bf16: the value cast to that dtype, viewed as int16 (NaN as the format's one NaN code).
* HiFloat8: the dot/exponent/mantissa fields from the float's exponent and top mantissa bits.
* integers: ``q * 2^frac_bits`` (exact), two's complement.
* block formats: element codes as above and the scale codes from the same pass (OCP MX: E8M0 of
  ``2^e``; NVFP4: the E4M3 code of ``s_b`` and the FP32 tensor scale; HiF4: the E6M2 byte and the
  E1_8/E1_16 bits recovered from the per-subgroup shifts); 4-bit codes are packed two per byte in
  the kernel (even element in the low nibble, :mod:`floatlab.plain.packing`).

Decoding gathers from a table built by the plain decoder itself: ``2^bits`` values for scalar
formats of at most 8 bits, ``(scale code, element code)`` products for the block formats (HiF4:
``(E6M2 byte, shift, element code)``). Each table entry is computed by the plain path's own
arithmetic, so the gathered values are its bits by construction.

Scalar formats on float32/bfloat16/float16 CPU tensors go first to the native kernel
(:func:`floatlab.kernels.native_scalar.encode_into`, backend ``auto``): the rounding of
:mod:`~floatlab.kernels.native_scalar` and the code of the rounded bits in one pass (4-bit codes
packed in it, NaN into a format without NaN reported from it), for every format and mode that
kernel rounds and whose code mapping it checked against the plain encoder on every value of the
format (:func:`~floatlab.kernels.native_scalar.code_spec`); decode gathers from the same tables
natively, or widens fp16/bf16 codes to float32 on their bits. Elsewhere (float64 inputs, other
modes, ``eager``/``compiled`` backends, no compiler, ``FLOATLAB_NATIVE=0``) the compiled kernels
below serve the call, with the same bits.

Block formats (MX, NVFP4 and HiF4 with 4-, 6- or 8-bit elements) on float32/bfloat16/float16 CPU
tensors go first to the native block kernel (:func:`floatlab.kernels.native_block.encode_into`,
backend ``auto``): the rounding pass of :mod:`~floatlab.kernels.native_block` writes the packed
element codes and the scale codes itself (half inputs widened to float32 first, exactly). A
HiF4 block holding NaN/Inf sends the call to the plain pipeline, as below.

Everything not covered (the stochastic modes without a generator, whose plain draws come from
``torch.rand``; other scale rules; 6-bit block codes off the native kernel; formats whose values a float32/float64 pattern
cannot spell) returns None and the caller runs the plain path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat4 import E6M2
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.integer import IntFormat
from floatlab.kernels import block as kblock
from floatlab.kernels import compiler, dispatch, memory, native, native_block, native_scalar
from floatlab.kernels.scalar import F32, Layout, pow2, quantize_kernel
from floatlab.plain.blocking import Blocking, float32_input, to_blocks
from floatlab.rounding import RoundingMode as M


# ---- codes of already rounded values ---------------------------------------------------------
@dataclass(frozen=True)
class CodePlan:
    """How the rounded values of one scalar format (in ``layout``'s float) become its codes."""

    kind: str                 # "float", "half" (fp16/bf16 by cast), "hif8", "int"
    layout: Layout
    bits: int
    signed: bool = True
    shift: int = 0            # float: layout mantissa bits dropped
    offset: int = 0           # float: (layout bias - format bias) << mbits
    emin_value: float = 0.0   # float: 2^emin (below: the format's subnormals)
    sub_scale: float = 1.0    # float: 2^(mbits - emin)
    inf_code: int = -1        # magnitude code of Inf, -1 if none
    nan_code: int = -1        # the NaN code, -1 if none
    neg_zero: bool = False
    half_dtype: torch.dtype | None = None
    frac_scale: float = 1.0   # int: 2^frac_bits
    mask: int = 0


_HALVES = {(5, 10): torch.float16, (8, 7): torch.bfloat16}


@lru_cache(maxsize=256)
def code_plan(fmt, layout: Layout) -> CodePlan | None:
    """The :class:`CodePlan` of ``fmt`` on ``layout``, or None where the bits cannot be read off."""
    if isinstance(fmt, HiF8Format):
        return CodePlan("hif8", layout, 8)
    if isinstance(fmt, IntFormat):
        if fmt.nbits > (24 if layout is F32 else 53) or fmt.nbits > 31 \
                or not -1022 <= fmt.frac_bits <= 1023:     # 2^frac_bits must be a float64 number
            return None
        return CodePlan("int", layout, fmt.nbits, fmt.signed, frac_scale=2.0 ** fmt.frac_bits,
                        mask=(1 << fmt.nbits) - 1)
    if not isinstance(fmt, FloatFormat):
        return None
    nan = -1 if fmt.nan_code is None else fmt.nan_code
    half = _HALVES.get((fmt.ebits, fmt.mbits))
    if (half is not None and fmt.nan.value == "ieee" and fmt.signed and fmt.subnormals
            and fmt.bias == 2 ** (fmt.ebits - 1) - 1 and not fmt.top_inf):
        return CodePlan("half", layout, 16, half_dtype=half, nan_code=nan)
    if fmt.bits > 16:
        return None
    emin = fmt.emin
    if (fmt.mbits > layout.mbits or emin < 1 - layout.bias or fmt.mbits - emin > layout.max_exp
            or math.log2(fmt.max_value) >= layout.max_exp + 1):
        return None
    inf = -1 if fmt.inf_code is None else fmt.inf_code
    return CodePlan("float", layout, fmt.bits, fmt.signed, layout.mbits - fmt.mbits,
                    (layout.bias - fmt.bias) << fmt.mbits, 2.0 ** emin, 2.0 ** (fmt.mbits - emin),
                    inf, nan, fmt.neg_zero)


def value_codes(q: torch.Tensor, cp: CodePlan) -> torch.Tensor:
    """Codes (in the layout's int dtype) of ``q``: values of the format (or its NaN/Inf) in the
    layout's float dtype."""
    L = cp.layout
    it = L.int_dtype
    if cp.kind == "half":
        c = q.to(cp.half_dtype).view(torch.int16).to(it) & 0xFFFF
        return torch.where(q != q, torch.full_like(c, cp.nan_code), c)
    bits = q.view(it)
    mag_bits = bits & ((1 << (8 * q.element_size() - 1)) - 1)
    a = mag_bits.view(L.float_dtype)
    negative = bits < 0
    if cp.kind == "int":
        i = (q * cp.frac_scale).to(it)
        return i & cp.mask
    if cp.kind == "hif8":
        e = (mag_bits >> L.mbits) - L.bias
        ae = e.abs()
        m = torch.where(ae <= 3, 3, torch.where(ae <= 7, 2, 1)).to(it)
        mant = (mag_bits >> (L.mbits - m)) & ((1 << m) - 1)
        esign = (e < 0).to(it)
        code = torch.where(
            ae == 0, 0x08 | mant,
            torch.where(ae == 1, 0x10 | (esign << 3) | mant,
            torch.where(ae <= 3, 0x20 | (esign << 4) | ((ae - 2) << 3) | mant,
            torch.where(ae <= 7, 0x40 | (esign << 4) | ((ae - 4) << 2) | mant,
                        0x60 | (esign << 4) | ((ae - 8) << 1) | mant))))
        code = torch.where(e < -15, e + 23, code)
        code = torch.where(a == 0, torch.zeros_like(code), code)
        code = torch.where(a == math.inf, torch.full_like(code, 0x6F), code)
        code = code | ((negative & (a > 0)).to(it) << 7)
        return torch.where(q != q, torch.full_like(code, 0x80), code)
    normal = (mag_bits >> cp.shift) - cp.offset
    sub = (a * cp.sub_scale).to(it)
    mag = torch.where(a >= cp.emin_value, normal, sub)
    if cp.inf_code >= 0:
        mag = torch.where(a == math.inf, torch.full_like(mag, cp.inf_code), mag)
    if cp.signed:
        neg = negative & (a > 0) if not cp.neg_zero else negative
        mag = mag | (neg.to(it) << (cp.bits - 1))
    if cp.nan_code >= 0:
        mag = torch.where(q != q, torch.full_like(mag, cp.nan_code), mag)
    return mag


def _pack4_kernel(pairs: torch.Tensor) -> torch.Tensor:
    """int16 view of byte pairs (even code low byte) -> one byte each, the even code in the low
    nibble: ``(v | v >> 4) & 0xFF``."""
    return ((pairs | (pairs >> 4)) & 0xFF).to(torch.uint8)


def pack4(codes: torch.Tensor, eager: bool) -> torch.Tensor:
    """An even number of 4-bit codes in uint8 -> :func:`floatlab.plain.packing.pack`'s bytes.

    A pass of its own over the byte codes: packing inside the rounding kernel (reading pairs
    of elements with stride 2) kept inductor from vectorizing it (mxfp4 encode 38 ms -> 17 ms
    for 2^22 values)."""
    pairs = codes.reshape(-1).view(torch.int16)    # little-endian: the even code in the low byte
    if eager:
        return _pack4_kernel(pairs)
    return compiler.run("pack4", lambda: _pack4_kernel, pairs)


def _store(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in their storage dtype (4-bit ones as one byte each: :func:`pack4` packs them)."""
    if bits == 16:
        return codes.to(torch.int16)   # 16-bit patterns wrap, as pack's int16 container
    return codes.to(torch.uint8)


def _packable(bits: int) -> bool:
    return bits in (4, 8, 16)


# ---- scalar encode ---------------------------------------------------------------------------
def _scalar_fn(plan, cp: CodePlan, with_out: bool):
    def encode_codes(x, rnd):
        return _store(value_codes(quantize_kernel(x, rnd, plan), cp), cp.bits)

    if with_out:
        def encode_codes_into(x, rnd, out):
            out.copy_(encode_codes(x, rnd))
        return encode_codes_into
    return encode_codes


def _run(key, make, eager: bool, *args):
    """The compiled kernel (or the same function run op by op when ``eager``)."""
    if eager:
        return make()(*args)
    return compiler.run(key, make, *args)


def _use_compiler(backend: str, numel: int) -> bool:
    if backend == "eager":
        return False
    if backend == "compiled":
        return numel >= 2
    return numel >= dispatch.COMPILE_MIN_NUMEL and compiler.compile_available()


def encode_scalar(x: torch.Tensor, fmt, mode: M, saturate: bool, generator, sr_bits,
                  backend: str) -> torch.Tensor | None:
    """Packed storage of ``x``'s codes in the scalar format ``fmt`` (what
    :func:`floatlab.plain.packing.pack` returns for the plain path's codes), or None where the
    plain path must run. Raises ValueError for NaN into a format without NaN, as the plain path."""
    if backend == "plain" or x.numel() == 0:
        return None
    x = x.detach()            # codes carry no gradient
    plan = dispatch.scalar_plan(fmt, mode, saturate, x.dtype, sr_bits, generator)
    if plan is None or plan.rng == "hash":
        return None           # the plain path's torch.rand draws (no generator) stay the plain path's
    if backend == "auto":
        data = _encode_native(x, fmt, mode, saturate, generator, sr_bits, plan)
        if data is not None:
            return data
    cp = code_plan(fmt, plan.layout)
    if cp is None or not _packable(cp.bits) or (cp.bits == 4 and x.numel() % 2):
        return None
    plan = dataclasses.replace(plan, out_dtype=plan.layout.float_dtype)
    flat = x.reshape(-1)
    rnd = dispatch.draws(plan, x.shape, x.device, generator)
    rnd = rnd.reshape(-1) if rnd is not None and rnd.ndim else rnd
    if not fmt.has_nan:
        # the plain path refuses NaN results; check the rounded values before coding them
        q = None
        if _use_compiler(backend, flat.numel()):
            try:
                q = compiler.run((plan, False, "encode values"), lambda: dispatch._kernel(plan, False), flat, rnd)
            except compiler.CompileUnavailable:
                if backend == "compiled":
                    raise
        if q is None:                 # the same draws, op by op
            q = quantize_kernel(flat, rnd, plan)
        if bool(torch.isnan(q).any()):
            raise _nan_refused(fmt, x)
        flat, rnd = q, None
        plan = dataclasses.replace(plan, mode=M.RNE, rng="none", sr_bits=None)   # exact already
    eager = not _use_compiler(backend, x.numel())
    out = memory.empty_output(flat, torch.int16 if cp.bits == 16 else torch.uint8) \
        if not eager and cp.bits != 4 else None
    try:
        if out is not None:
            _run((plan, cp, "encode", True), lambda: _scalar_fn(plan, cp, True), False, flat, rnd, out)
            return out
        codes = _run((plan, cp, "encode"), lambda: _scalar_fn(plan, cp, False), eager, flat, rnd)
        return pack4(codes, eager) if cp.bits == 4 else codes
    except compiler.CompileUnavailable:
        if backend == "compiled":
            raise
        codes = _scalar_fn(plan, cp, False)(flat, rnd)
        return pack4(codes, True) if cp.bits == 4 else codes


def _nan_refused(fmt, x: torch.Tensor) -> ValueError:
    return ValueError(f"format {fmt.name!r} has no NaN code, but the input holds NaN "
                      f"({int(torch.isnan(x).sum())} values); fake-quantize with "
                      "floatlab.quantize keeps NaN, encode cannot")


def _encode_native(x, fmt, mode: M, saturate: bool, generator, sr_bits, plan) -> torch.Tensor | None:
    """The packed codes from the native kernel (:func:`native_scalar.encode_into`: rounding and
    codes in one pass, 4-bit codes packed in it), or None where it does not serve the call:
    not a float32/bfloat16/float16 CPU tensor, a format or mode it lacks, inside torch.compile's
    tracing, no library. The draws are the plain path's (``plan.rng`` is never the hash here)."""
    if (x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or x.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return None
    nplan = native_scalar.plan(fmt, mode, bool(saturate), sr_bits, plan.rng)
    if nplan is None:
        return None
    cs = native_scalar.code_spec(fmt)
    if cs is None:
        return None
    rnd = dispatch.draws(plan, x.shape, x.device, generator)
    src = x.contiguous()
    size = native_scalar.encoded_size(x.numel(), cs.bits)
    out = memory.empty_output(torch.empty(()).expand(size), torch.int16 if cs.bits == 16 else torch.uint8)
    if native_scalar.encode_into(src, out, nplan, cs, rnd):
        raise _nan_refused(fmt, x)
    return out


# ---- block encode ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockCodePlan:
    bp: kblock.BlockPlan
    elem: CodePlan
    scale: CodePlan | None    # NVFP4: the scale format's codes (HiF4: E6M2); None for MX
    scale_nan: int
    scale_field: tuple[int, int] = (0, 0)   # MX: a scale 2^e has the code (e + bias) << mbits


def _block_code_plan(fmt: BlockFormat, mode: M, dtype, sr_bits, generator) -> BlockCodePlan | None:
    bp = kblock.block_plan(fmt, mode, dtype, sr_bits, generator)
    if bp is None or bp.elem.rng == "hash":
        return None
    L = bp.elem.layout
    elem = code_plan(fmt.element, L)
    if elem is None or elem.bits not in (4, 6, 8) or fmt.scale.nan_code is None:
        return None         # 6-bit codes: the native kernel only (_compiled_codes)
    if fmt.rule is ScaleRule.FLOOR:
        # q * 2^e must be a float of the layout (true for every OCP MX element with E8M0), and
        # every scale 2^e a normal number of the scale format (E8M0: e + 127)
        sc = fmt.scale
        if (fmt.element.smallest_positive * 2.0 ** bp.scale_lo < 2.0 ** L.min_exp
                or not isinstance(sc, FloatFormat) or bp.scale_lo < sc.emin or sc.bits > 8):
            return None
        return BlockCodePlan(bp, elem, None, sc.nan_code, (sc.bias, sc.mbits))
    elif fmt.rule is ScaleRule.AMAX:
        scale = code_plan(fmt.scale, F32)
    else:
        scale = code_plan(E6M2, F32)
    if scale is None or scale.bits != 8:
        return None
    return BlockCodePlan(bp, elem, scale, fmt.scale.nan_code)


def _mx_codes(x, rnd, cp: BlockCodePlan):
    p = cp.bp
    L = p.elem.layout
    xb = x.to(L.float_dtype)
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1, keepdim=True)
    xf = torch.where(finite, xb, torch.zeros_like(xb))
    amax = xf.abs().amax(dim=1, keepdim=True)
    e = torch.clamp(kblock._floor_log2(amax, L) - p.emax_elem, p.scale_lo, p.scale_hi)
    if p.elem_scaled is not None:
        q = quantize_kernel(xf * pow2(-e, L), None, p.elem_scaled)
    else:
        q = quantize_kernel(xf, rnd, p.elem, shift=e) * pow2(-e, L)
    s = (e + cp.scale_field[0]) << cp.scale_field[1]
    s = torch.where(bad, torch.full_like(s, cp.scale_nan), s)
    return _store(value_codes(q, cp.elem), cp.elem.bits), s.to(torch.uint8).reshape(-1)


def _amax_scales(x, cp: BlockCodePlan):
    """NVFP4-style scales: (1 / (s_b * s_dec) per block (nb, 1), scale codes (nb,), s_dec (1,))."""
    p = cp.bp
    fmt = p.fmt
    xb = float32_input(x)
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1, keepdim=True)
    xb = torch.where(finite, xb, torch.zeros_like(xb))
    amax_b = xb.abs().amax(dim=1, keepdim=True)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    s_enc, s_dec = one, one
    if fmt.tensor_scale:
        t_amax = amax_b.max()
        pos = t_amax > 0
        s_enc = (p.scale_product / torch.where(pos, t_amax, one).to(torch.float64)).to(torch.float32)
        s_enc = torch.where(pos, s_enc.clamp(max=kblock.F32_MAX), one)
        s_dec = (1.0 / s_enc).clamp(max=kblock.F32_MAX)
    target = torch.full((), p.elem.max_value, dtype=torch.float32, device=x.device)
    s_in = (amax_b / target) * s_enc
    if not fmt.scale.has_zero:
        s_in = torch.where(s_in == 0, torch.full_like(s_in, fmt.scale.smallest_positive), s_in)
    s_b = quantize_kernel(s_in, None, p.scale)
    s_enc_b = torch.where(s_b > 0, (1.0 / (s_b * s_dec)).clamp(max=kblock.F32_MAX), torch.zeros_like(s_b))
    s = value_codes(s_b, cp.scale)
    s = torch.where(bad, torch.full_like(s, cp.scale_nan), s)
    return s_enc_b, s.to(torch.uint8).reshape(-1), s_dec.reshape(1)


def _amax_element_codes(x, rnd, s_enc_b, cp: BlockCodePlan):
    """NVFP4-style element codes given ``1 / (s_b * s_dec)`` per block (0 where s_b is 0).

    A kernel of its own: fused behind the scale reductions, inductor materialized the scaled
    elements in a float32 buffer and read it back (nvfp4 encode 1.7x its quantize kernel)."""
    xb = float32_input(x)
    xb = torch.where(torch.isfinite(xb), xb, torch.zeros_like(xb))
    pp = torch.where(s_enc_b > 0, xb * s_enc_b, torch.zeros_like(xb))
    return _store(value_codes(quantize_kernel(pp, rnd, cp.bp.elem), cp.elem), cp.elem.bits)


def _hif4_element_codes(x, rnd, r, shift, cp: BlockCodePlan):
    """HiF4 element codes given 1/S1 ``r`` (nb, 1) and the per-element shifts (nb, 64)."""
    p = cp.bp
    xb = float32_input(x)
    sh = shift.to(torch.int32) << 23
    v = kblock._bf16((xb.abs() * r) * (0x3F800000 - sh).view(torch.float32))
    c = quantize_kernel(v, rnd, p.elem)
    code = value_codes(c, cp.elem) | ((xb < 0).to(torch.int32) << (cp.elem.bits - 1))
    return _store(code, cp.elem.bits)


def _msb_first(bits: torch.Tensor, stride: int, count: int) -> torch.Tensor:
    """Bit 0 of bytes 0, stride, 2*stride, ... of int64 ``bits`` -> one value, the first in its
    bit ``count - 1``."""
    out = torch.zeros_like(bits)
    for k in range(count):
        out = out | (((bits >> (8 * stride * k)) & 1) << (count - 1 - k))
    return out


def _hif4_scale_bytes(s1: torch.Tensor, sub_shift: torch.Tensor, cp: BlockCodePlan) -> torch.Tensor:
    """The 4 scale bytes of each block from S1 (nb, 1) float32 and the subgroup shifts (nb, 16)
    int8 (contiguous).

    E1_8 is recovered from the shifts: E1_8 = 1 makes the larger subgroup of its pair reach
    ``f32(mc * r) >= 4``, so its shift is 2; E1_8 = 0 leaves every shift at most 1. Done on the
    shifts as two int64 words of 8 bytes per block (reductions over 8 and 2 entries made
    inductor emit scalar loops: 77 ms for 2^24 values)."""
    nb = s1.shape[0]
    v = sub_shift.view(torch.int64)                       # (nb, 2): byte j = subgroup 8w + j
    hi = (v >> 1) & 0x0101010101010101                    # shift == 2
    pair = (hi | (hi >> 8)) & 0x0001000100010001          # E1_8 of each pair, at its even byte
    e1_16 = v - (pair | (pair << 8))
    e1_8 = (_msb_first(pair[:, 0], 2, 4) << 4) | _msb_first(pair[:, 1], 2, 4)
    e6m2 = value_codes(s1.reshape(nb).to(torch.float32), cp.scale).to(torch.int64)
    return torch.stack([e6m2, e1_8, _msb_first(e1_16[:, 0], 1, 8),
                        _msb_first(e1_16[:, 1], 1, 8)], dim=1).to(torch.uint8)


# bit j of a byte, most significant first: _BITS[byte, j] = (byte >> (7 - j)) & 1
_BITS = (torch.arange(256, dtype=torch.int32)[:, None] >> (7 - torch.arange(8, dtype=torch.int32))) & 1
_BITS_TWICE = _BITS.repeat_interleave(2, dim=1)        # (256, 16): E1_8 bit g // 2 of subgroup g


def _hif4_rows(s: torch.Tensor) -> torch.Tensor:
    """(nb, 4) scale bytes -> (nb, 16) ``3 * E6M2 byte + E1_8 + E1_16`` of every subgroup (E1_8's
    bit ``7 - g // 2`` of byte 1; E1_16's bit ``7 - g % 8`` of byte 2 for g < 8, of byte 3 after),
    by table lookups: run eagerly (compiling it cost a first ``floatlab compare`` of packed HiF4
    layers ~39 s; the lookups are ~1.5x faster than the shifts eagerly)."""
    si = s.to(torch.int64)
    row = _BITS_TWICE.to(s.device)[si[:, 1]]
    bits = _BITS.to(s.device)
    row[:, :8] += bits[si[:, 2]]
    row[:, 8:] += bits[si[:, 3]]
    row += si[:, :1].to(torch.int32) * 3
    return row


def _block_fn(body, cp):
    def encode_blocks(*args):
        return body(*args, cp)
    return encode_blocks


def _compiled_codes(cp: BlockCodePlan | None) -> bool:
    """Whether the compiled kernels pack these codes (4 or 8 bits; 6-bit ones: native only)."""
    return cp is not None and cp.elem.bits in (4, 8)


def covers(fmt: BlockFormat, mode: M, dtype: torch.dtype, sr_bits=None, generator=None) -> bool:
    """Whether :func:`encode_block`'s compiled kernels run for these options (HiF4: unless a
    block holds NaN/Inf); the native kernel may serve more (6-bit codes)."""
    return _compiled_codes(_block_code_plan(fmt, mode, dtype, sr_bits, generator))


def encode_block(x: torch.Tensor, fmt: BlockFormat, mode: M, generator, sr_bits, backend: str,
                 axis: int, pad: bool):
    """``(packed element codes, scales, meta)`` as the plain pipeline stores them, or None."""
    if backend == "plain" or x.numel() == 0:
        return None
    cp = _block_code_plan(fmt, mode, x.dtype, sr_bits, generator)
    if cp is None:
        return None
    x = x.detach()            # codes carry no gradient
    if backend == "auto":
        res = _encode_block_native(x, fmt, mode, generator, sr_bits, cp, axis, pad)
        if res is not None:
            return res or None     # False: a HiF4 block holds NaN/Inf, the plain pipeline runs
    if not _compiled_codes(cp):
        return None
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    meta = {"axis": blocking.axis, "padded": list(blocking.padded)}
    eager = not (_use_compiler(backend, x.numel()) and xb.shape[0] >= 2)
    # a compile that fails after the stochastic draws: the retry must draw the same numbers
    saved = None if eager else dispatch.rng_snapshot(dispatch.STOCHASTIC_PLAN, generator, x.device)
    try:
        res = _encode_block_run(xb, generator, cp, fmt, eager)
    except compiler.CompileUnavailable:
        dispatch.rng_restore(saved)
        if backend == "compiled":
            raise
        res = _encode_block_run(xb, generator, cp, fmt, True)
    return None if res is None else res + (meta,)


def _encode_block_native(x, fmt, mode: M, generator, sr_bits, cp: BlockCodePlan, axis: int, pad: bool):
    """``(packed element codes, scales, meta)`` from the native block kernel
    (:func:`native_block.encode_into`: the rounding pass writes the codes and scale codes), False
    where a HiF4 block holds NaN/Inf (the generator's state restored: the plain pipeline draws
    the same numbers), or None where it does not serve the call: not a float32/bfloat16/float16
    CPU tensor (the half types are widened to float32, exactly), a format, mode or code map it
    lacks, inside torch.compile's tracing, no library."""
    if (x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or x.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return None
    bp = cp.bp if x.dtype is torch.float32 else kblock.block_plan(fmt, mode, torch.float32, sr_bits, generator)
    ncp = native_block.code_plan(bp, *cp.scale_field, cp.scale_nan)
    if ncp is None:
        return None
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    xb = xb.to(torch.float32).contiguous()
    nb, b = xb.shape
    data = memory.empty_output(torch.empty(()).expand(nb * b * ncp.ebits // 8), torch.uint8)
    scales = torch.empty((nb, 4) if fmt.rule is ScaleRule.HIF4 else (nb,), dtype=torch.uint8)
    out = {"scale": scales}
    tensor_scales = (1.0, 1.0)
    if fmt.rule is ScaleRule.AMAX and fmt.tensor_scale:
        s_enc, s_dec = kblock.tensor_scales(native_block.tensor_amax(xb), bp)
        tensor_scales = (float(s_enc), float(s_dec))
        out["tensor_scale"] = s_dec.reshape(1)
    saved = dispatch.rng_snapshot(bp.elem, generator, x.device) if fmt.rule is ScaleRule.HIF4 else None
    rnd = dispatch.draws(bp.elem, xb.shape, x.device, generator)   # the plain path's draws
    if native_block.encode_into(xb, data, scales, ncp, rnd, tensor_scales):
        dispatch.rng_restore(saved)
        return False
    return data, out, {"axis": blocking.axis, "padded": list(blocking.padded)}


def _call(body, cp, key, eager, *args):
    # the compiled kernels return fresh tensors: a preallocated 2-D ``out`` beside the blocks'
    # own dynamic size was written wrongly by inductor (HiF4, torch 2.13: rows past the first
    # garbled), and a flat one made dynamo specialize the block count; caught by the tests
    return _run(key, lambda: _block_fn(body, cp), eager, *args)


def _encode_block_run(xb, generator, cp: BlockCodePlan, fmt, eager):
    """Codes and scales; None for HiF4 blocks holding NaN/Inf (checked before any draw)."""
    rule = fmt.rule
    rnd = None
    if rule is not ScaleRule.HIF4:
        rnd = dispatch.draws(cp.bp.elem, xb.shape, xb.device, generator)
    if rule is ScaleRule.FLOOR:
        data, s = _call(_mx_codes, cp, (cp, "mx codes"), eager, xb, rnd)
        return _block_data(data, cp, eager), {"scale": s}
    if rule is ScaleRule.AMAX:
        s_enc_b, s, s_dec = _call(_amax_scales, cp, (cp, "amax scales"), eager, xb)
        data = _call(_amax_element_codes, cp, (cp, "amax codes"), eager, xb, rnd, s_enc_b)
        scales = {"scale": s}
        if fmt.tensor_scale:
            scales["tensor_scale"] = s_dec
        return _block_data(data, cp, eager), scales
    # HIF4: the scale pass (native where built), then the element codes
    scales = None if eager else native.hif4_scales(xb)
    if scales is not None:
        bad, r, s1, shift = scales
        sub_shift = shift[:, ::4]
    else:
        fn = lambda: kblock._fn(kblock.hif4_scales, cp.bp, False)  # noqa: E731
        bad, r, s1, sub_shift = _run((cp.bp, "hif4 scales"), fn, eager, xb)
        shift = kblock.hif4_spread(sub_shift)
    if bool(bad.any()):
        return None              # poisoned blocks: the plain pipeline's scales differ there
    rnd = dispatch.draws(cp.bp.elem, xb.shape, xb.device, generator)
    data = _call(_hif4_element_codes, cp, (cp, "hif4 codes"), eager, xb, rnd, r, shift)
    sub_shift = sub_shift.to(torch.int8).contiguous()
    scale = _run((cp, "hif4 scale bytes"), lambda: lambda a, b: _hif4_scale_bytes(a, b, cp), eager,
                 s1, sub_shift)
    return _block_data(data, cp, eager), {"scale": scale}


def _block_data(codes: torch.Tensor, cp: BlockCodePlan, eager: bool) -> torch.Tensor:
    return pack4(codes, eager) if cp.elem.bits == 4 else codes.reshape(-1)


# ---- decode ----------------------------------------------------------------------------------
def scalar_table(fmt, dtype: torch.dtype, device) -> torch.Tensor:
    """The plain decoder's value of every code (``2^bits`` of them) as ``dtype``."""
    return _scalar_table_cpu(fmt, dtype).to(device)


@lru_cache(maxsize=256)
def _scalar_table_cpu(fmt, dtype):
    return fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int64)).to(dtype)


@lru_cache(maxsize=64)
def _block_table_cpu(fmt: BlockFormat, dtype):
    """Values of every (scale code, [shift,] element code) as the plain decoder computes them."""
    elem = fmt.element.decode(torch.arange(2 ** fmt.element_bits, dtype=torch.int64))
    if fmt.rule is ScaleRule.HIF4:
        s1 = E6M2.decode(torch.arange(256, dtype=torch.int64))
        shift = torch.arange(3, dtype=torch.float64)
        t = elem[None, None, :] * s1[:, None, None] * torch.exp2(shift)[None, :, None]
    else:
        X = fmt.scale.decode(torch.arange(2 ** fmt.scale.bits, dtype=torch.int64))
        t = elem[None, :] * X[:, None]
    return t.reshape(-1).to(dtype)


def _gather_fn(nibble: bool):
    def gather(data, base, table):
        c = data.to(torch.int32)
        if not nibble:
            return table[base + c]
        lo = table[base + (c & 15)]
        hi = table[base + (c >> 4)]
        return torch.stack([lo, hi], dim=-1)
    return gather


def decode(qt, dtype: torch.dtype, backend: str | None = None) -> torch.Tensor | None:
    """Values of the QTensor ``qt`` as ``dtype``: the plain decoder's bits, or None."""
    backend = dispatch.resolve_backend(backend)
    try:
        return _decode(qt, dtype, backend)
    except compiler.CompileUnavailable:
        if backend == "compiled":
            raise
        return _decode(qt, dtype, "eager")      # no compiler here: the same code op by op


def _decode(qt, dtype: torch.dtype, backend: str) -> torch.Tensor | None:
    if backend == "plain":
        return None
    fmt = qt.format
    n = qt.numel
    if n == 0:
        return None
    bits = qt.element_bits
    if backend in ("auto", "native"):
        y = _decode_native(qt, dtype)
        if y is not None:
            return y
    if bits not in (4, 8):
        if isinstance(fmt, FloatFormat) and code_plan(fmt, F32) is not None \
                and code_plan(fmt, F32).kind == "half":
            half = code_plan(fmt, F32).half_dtype
            v = qt.data.reshape(-1)[:n].view(half)
            nan = torch.full((), float("nan"), dtype=dtype, device=v.device)
            return torch.where(v != v, nan, v.to(dtype)).reshape(qt.shape)
        return None
    if isinstance(fmt, BlockFormat):
        return _decode_block(qt, dtype, backend)
    if getattr(fmt, "kind", None) != "scalar":
        return None
    table = scalar_table(fmt, dtype, qt.data.device)
    data = qt.data.reshape(-1)
    eager = not _use_compiler(backend, n)
    zero = torch.zeros((), dtype=torch.int32, device=data.device)
    y = _run((fmt, dtype, "decode", bits), lambda: _gather_fn(bits == 4), eager, data, zero, table)
    return y.reshape(-1)[:n].reshape(qt.shape)


def _decode_native(qt, dtype: torch.dtype) -> torch.Tensor | None:
    """Values of a scalar QTensor by the native kernels (:mod:`native_scalar`): a gather from
    :func:`scalar_table` (the plain decoder's values) for 4/6/8-bit codes, fp16/bf16 codes widened
    to float32 on their bits (NaN as the plain path's); None where they do not apply."""
    fmt = qt.format
    data = qt.data
    if (data.device.type != "cpu" or getattr(fmt, "kind", None) != "scalar"
            or torch.compiler.is_compiling() or not native_scalar.available()):
        return None
    bits = qt.element_bits
    if bits in (4, 6, 8):
        table = scalar_table(fmt, dtype, data.device).contiguous()
        out = memory.empty_output(torch.empty(()).expand(qt.shape), dtype)
        native_scalar.decode_table_into(data.reshape(-1).contiguous(), out, table, bits)
        return out
    cp = code_plan(fmt, F32) if isinstance(fmt, FloatFormat) else None
    if cp is None or cp.kind != "half" or dtype is not torch.float32 or data.dtype is not torch.int16:
        return None
    out = memory.empty_output(torch.empty(()).expand(qt.shape), torch.float32)
    native_scalar.decode_half_into(data.reshape(-1)[: qt.numel].contiguous(), out,
                                   cp.half_dtype is torch.float16)
    return out


def element_values(c: torch.Tensor, cp: CodePlan) -> torch.Tensor:
    """float32 values of int32 codes of a minifloat without NaN/Inf (E2M1, E1M2, E3M2, E2M3):
    the inverse of :func:`value_codes`, on the bits (no table, so the loop vectorizes)."""
    mbits = cp.layout.mbits - cp.shift
    magbits = cp.bits - 1 if cp.signed else cp.bits
    mag = c & ((1 << magbits) - 1)
    normal = ((mag + cp.offset) << cp.shift).view(torch.float32)
    sub = mag.to(torch.float32) * (1.0 / cp.sub_scale)
    v = torch.where(mag >= (1 << mbits), normal, sub)
    if cp.signed:
        v = torch.where((c >> magbits) != 0, -v, v)
    return v


def _values_fn(cp: CodePlan, acc: torch.dtype, out_dtype: torch.dtype, nibble: bool):
    def block_values(data, mult, t):
        c = data.to(torch.int32)
        if nibble:
            v = torch.stack([element_values(c & 15, cp), element_values(c >> 4, cp)], dim=-1)
        else:
            v = element_values(c, cp)[..., None]
        y = (v.to(acc) * mult[..., None]) * t
        return y.to(out_dtype)
    return block_values


@lru_cache(maxsize=64)
def _arith_plan(elem) -> CodePlan | None:
    """Element formats :func:`element_values` computes (None: decode by table)."""
    cp = code_plan(elem, F32)
    if cp is None or cp.kind != "float" or elem.has_nan or elem.has_inf or cp.bits not in (4, 8):
        return None
    return cp


def _arith_matches(cp, table_values: torch.Tensor, mults: torch.Tensor, t: torch.Tensor,
                   acc: torch.dtype, dtype: torch.dtype, shape) -> bool:
    """Whether ``(element * mult) * t`` in ``acc``, cast to ``dtype``, equals the plain decoder's
    table (``shape``: (mult count, element count)) at every combination (NaN matches NaN)."""
    codes = torch.arange(2 ** cp.bits, dtype=torch.int32)
    y = ((element_values(codes, cp).to(acc)[None, :] * mults[:, None]) * t).to(dtype)
    ref = table_values.reshape(shape)
    yn, rn = torch.isnan(y), torch.isnan(ref)
    if not torch.equal(yn, rn):
        return False
    it = _INT_OF[dtype]
    return torch.equal(y.masked_fill(yn, 0).view(it), ref.masked_fill(rn, 0).view(it))


_INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
           torch.float64: torch.int64}


@lru_cache(maxsize=64)
def _static_arith(fmt: BlockFormat, dtype: torch.dtype):
    """(acc dtype, mult table) for MX/HiF4 where the arithmetic decode equals the plain table
    at every (scale, [shift,] element) combination, else None (checked once per format)."""
    cp = _arith_plan(fmt.element)
    if cp is None:
        return None
    acc = torch.float64 if dtype is torch.float64 else torch.float32
    if fmt.rule is ScaleRule.HIF4:
        s1 = E6M2.decode(torch.arange(256, dtype=torch.int64))
        mults64 = s1[:, None] * torch.exp2(torch.arange(3, dtype=torch.float64))[None, :]
    else:
        mults64 = fmt.scale.decode(torch.arange(2 ** fmt.scale.bits, dtype=torch.int64))
    mults = mults64.to(acc).reshape(-1)
    one = torch.ones((), dtype=acc)
    table = _block_table_cpu(fmt, dtype)
    if not _arith_matches(cp, table, mults, one, acc, dtype, (mults.numel(), 2 ** cp.bits)):
        return None
    return acc, mults


def _decode_block(qt, dtype, backend):
    fmt = qt.format
    if fmt.rule not in (ScaleRule.FLOOR, ScaleRule.AMAX, ScaleRule.HIF4) or \
            fmt.rule is ScaleRule.FLOOR and fmt.scale.bits > 8 or fmt.element_bits not in (4, 8) or \
            fmt.rule is not ScaleRule.HIF4 and fmt.scale.bits > 16:
        return None       # the tables hold every scale code: wide scales (e8m23) take the plain path
    dev = qt.data.device
    s = qt.scales["scale"].to(torch.int64)
    nb = s.shape[0]
    b = math.prod(fmt.block)
    per_byte = 2 if fmt.element_bits == 4 else 1
    eager = not (_use_compiler(backend, qt.numel) and nb >= 2)
    # the native gather of the plain decoder's (scale, element) table where it is built
    native_rows = (backend in ("auto", "native") and dev.type == "cpu"
                   and not torch.compiler.is_compiling() and native_scalar.available())
    arith = None if native_rows else _block_arith(fmt, qt, dtype, s, dev)
    if fmt.rule is ScaleRule.HIF4:
        row = _hif4_rows(s)                                                  # (nb, 16)
        data = qt.data.reshape(nb, 16, 4 // per_byte)
    else:
        row = s.reshape(nb, 1)
        data = qt.data.reshape(nb, b // per_byte)
    if native_rows:
        table = _block_table(fmt, qt, dtype).contiguous()
        base = (row * 2 ** fmt.element_bits).to(torch.int32).reshape(-1).contiguous()
        y = memory.empty_output(torch.empty(()).expand(base.numel(), b * nb // base.numel()), dtype)
        native_scalar.decode_rows_into(qt.data.reshape(-1).contiguous(), y, table, base, fmt.element_bits)
    elif arith is not None:
        cp, acc, mults, t = arith
        mult = mults.to(dev)[row]
        mult = mult[:, :, None] if fmt.rule is ScaleRule.HIF4 else mult      # one per byte row
        key = (cp, acc, dtype, "block values", per_byte)
        y = _run(key, lambda: _values_fn(cp, acc, dtype, per_byte == 2), eager, data, mult, t.to(dev))
    else:
        table = _block_table(fmt, qt, dtype).to(dev)
        base = (row * 2 ** fmt.element_bits).to(torch.int32)
        base = base[:, :, None] if fmt.rule is ScaleRule.HIF4 else base
        y = _run((fmt, dtype, "block decode", per_byte), lambda: _gather_fn(per_byte == 2), eager,
                 data, base, table)
    y = y.reshape(nb, b)
    blocking = Blocking(tuple(qt.shape), int(qt.meta["axis"]), fmt.block, tuple(qt.meta["padded"]))
    return blocking.unblock(y)


def _amax_table(fmt, qt, dtype):
    from floatlab.plain.block import _dequant_amax
    elem = fmt.element.decode(torch.arange(2 ** fmt.element_bits, dtype=torch.int64))
    s_b = fmt.scale.decode(torch.arange(2 ** fmt.scale.bits, dtype=torch.int64)).to(torch.float32)
    s_dec = _tensor_scale(qt)
    return _dequant_amax(elem[None, :].expand(s_b.numel(), -1), s_b, s_dec).double().reshape(-1).to(dtype), s_b, s_dec


def _tensor_scale(qt) -> torch.Tensor:
    return qt.scales.get("tensor_scale", torch.ones(1, dtype=torch.float32)).to(torch.float32).cpu().reshape(())


def _block_table(fmt, qt, dtype):
    if fmt.rule is ScaleRule.AMAX:
        return _amax_table(fmt, qt, dtype)[0]
    return _block_table_cpu(fmt, dtype)


def _block_arith(fmt, qt, dtype, s, dev):
    """(element plan, acc dtype, mult table, t) for the arithmetic decode, or None (table)."""
    cp = _arith_plan(fmt.element)
    if cp is None:
        return None
    if fmt.rule is ScaleRule.AMAX:
        # f32((q * s_b) * s_dec), then the plain path's f32 -> dtype cast; checked per tensor scale
        table, s_b, s_dec = _amax_table(fmt, qt, dtype)
        if not _arith_matches(cp, table, s_b, s_dec, torch.float32, dtype, (s_b.numel(), 2 ** cp.bits)):
            return None
        return cp, torch.float32, s_b, s_dec
    static = _static_arith(fmt, dtype)
    if static is None:
        return None
    acc, mults = static
    return cp, acc, mults, torch.ones((), dtype=acc)
