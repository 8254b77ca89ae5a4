"""Fused fast path for block formats: scales, element rounding and dequantization in one kernel
(for HiF4 a scale pass and an element kernel, see :func:`hif4_kernel`).

Covered: 1-D blocks along any axis and 2-D tiles, with or without padding (the tensor is cut
with the same :func:`floatlab.plain.blocking.to_blocks` as the plain pipeline, so blocks, padding
and stochastic draws line up), with the rules FLOOR (OCP MX: mxfp8/6/4, mxint8), AMAX (NVFP4,
with or without the FP32 tensor scale) and HIF4. Everything else goes to the plain pipeline
(:mod:`floatlab.plain.block`).

Each kernel gives the plain pipeline's results step by step: MX equal to the plain path's
float64 division by the power-of-two scale (done exactly on the shifted grid), NVFP4 in float32,
HiF4 in float32 with bf16 roundings (the plain path rounds every float64 product to float32,
which is what a float32 operation does). The element rounding is
:func:`floatlab.kernels.scalar.quantize_kernel`, so the stochastic modes take the same draws as
the plain path when a generator is given. ``encode(x).dequantize()`` of the plain pipeline is
returned; a non-finite value poisons its block with NaN, as there.

On float32 CPU tensors the backends ``auto`` and ``native`` run the native block kernel first
(:mod:`floatlab.kernels.native_block`: the same three rules in C++, every element mode, the same
bits), then these kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from floatlab.formats.block import BlockFormat, ScaleRule
from floatlab.formats.hifloat4 import E6M2, ONE_SEVENTH_BF16, SF_MAX, SF_MIN
from floatlab.kernels import compiler, dispatch, memory, native, native_block
from floatlab.kernels.scalar import F32, F64, Layout, Plan, pow2, quantize_kernel
from floatlab.plain.block import float64_elements_exact
from floatlab.plain.blocking import F32_MAX, check_blockable, float32_input, to_blocks
from floatlab.rounding import RoundingMode as M

_RULES = (ScaleRule.FLOOR, ScaleRule.AMAX, ScaleRule.HIF4)
_NEAREST = (M.RNE, M.RNA, M.RNZ)


@dataclass(frozen=True)
class BlockPlan:
    fmt: BlockFormat
    elem: Plan          # element rounding (saturating, as the plain pipeline)
    out_dtype: torch.dtype
    emax_elem: int      # floor(log2(element max))
    scale_lo: int       # log2 of the smallest and largest power-of-two scale (FLOOR)
    scale_hi: int
    scale: Plan | None  # rounding of the block scales (AMAX: to the scale format; HIF4: E6M2)
    scale_product: float  # AMAX with a tensor scale: element max * scale max
    elem_scaled: Plan | None = None  # FLOOR, float32, nearest modes: rounds x * 2^-e directly
    decode64: bool = False  # AMAX: q * s_b may not be exact in float32: multiply in float64


def _floor_log2(a: torch.Tensor, L: Layout) -> torch.Tensor:
    """floor(log2 a) for finite a >= 0 (subnormals included); a == 0 gives -100000."""
    bits = a.view(L.int_dtype)
    field = bits >> L.mbits
    mant = bits & ((1 << L.mbits) - 1)
    sub = ((mant.to(L.float_dtype).view(L.int_dtype) >> L.mbits) - L.bias) + L.min_exp
    e = torch.where(field == 0, sub, field - L.bias)
    return torch.where(a > 0, e, torch.full_like(e, -100000))


def _nan(t: torch.Tensor) -> torch.Tensor:
    return torch.full((), float("nan"), dtype=t.dtype, device=t.device)


def mx_kernel(x: torch.Tensor, rnd, p: BlockPlan) -> torch.Tensor:
    """OCP MX (FLOOR): X = 2^(floor(log2 amax) - emax_elem) clamped to the scale's range.

    The elements are rounded on the grid scaled by X (``quantize_kernel(shift=...)``), which
    equals rounding ``x / X`` and multiplying back, with no underflow of ``x / X``. Nearest modes
    on float32 round ``x * 2^-e`` itself (one multiply; exact wherever it matters).
    """
    L = p.elem.layout
    xb = x.to(L.float_dtype)
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1, keepdim=True)
    xf = torch.where(finite, xb, torch.zeros_like(xb))
    amax = xf.abs().amax(dim=1, keepdim=True)
    e = torch.clamp(_floor_log2(amax, L) - p.emax_elem, p.scale_lo, p.scale_hi)
    if p.elem_scaled is not None:
        # x * 2^-e is exact unless it falls below 2^-126, far under half the element format's
        # smallest step, where every nearest mode gives a (signed) zero either way; q * 2^e is exact
        y = quantize_kernel(xf * pow2(-e, L), None, p.elem_scaled) * pow2(e, L)
    else:
        y = quantize_kernel(xf, rnd, p.elem, shift=e)
    return torch.where(bad, _nan(y), y).to(p.out_dtype)


def tensor_scales(t_amax: torch.Tensor, p: BlockPlan):
    """NVFP4's FP32 tensor scales (s_enc, s_dec) from the tensor's largest finite magnitude, with
    the saturations of :mod:`floatlab.plain.block`; a zero amax gives 1 and 1."""
    one = torch.ones((), dtype=torch.float32, device=t_amax.device)
    pos = t_amax > 0
    # elem_max * scale_max / amax rounded to float32 once (the numerator may not fit float32)
    s_enc = (p.scale_product / torch.where(pos, t_amax, one).to(torch.float64)).to(torch.float32)
    s_enc = torch.where(pos, s_enc.clamp(max=F32_MAX), one)
    return s_enc, (1.0 / s_enc).clamp(max=F32_MAX)


def amax_kernel(x: torch.Tensor, rnd, p: BlockPlan) -> torch.Tensor:
    """NVFP4-style (AMAX): float32 block scales amax/elem_max rounded to the scale format.

    The saturations of :mod:`floatlab.plain.block` (float64 input beyond float32's range, s_enc,
    s_dec and 1 / (s_b * s_dec) at float32's max, a zero scale of a zero-less scale format at
    its smallest value), step by step."""
    fmt = p.fmt
    xb = float32_input(x)
    finite = torch.isfinite(xb)
    bad = ~finite.all(dim=1, keepdim=True)
    xb = torch.where(finite, xb, torch.zeros_like(xb))
    amax_b = xb.abs().amax(dim=1, keepdim=True)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    s_enc, s_dec = tensor_scales(amax_b.max(), p) if fmt.tensor_scale else (one, one)
    target = torch.full((), p.elem.max_value, dtype=torch.float32, device=x.device)
    s_in = (amax_b / target) * s_enc
    if not fmt.scale.has_zero:
        s_in = torch.where(s_in == 0, torch.full_like(s_in, fmt.scale.smallest_positive), s_in)
    s_b = quantize_kernel(s_in, None, p.scale)
    s_enc_b = torch.where(s_b > 0, (1.0 / (s_b * s_dec)).clamp(max=F32_MAX), torch.zeros_like(s_b))
    pp = torch.where(s_b > 0, xb * s_enc_b, torch.zeros_like(xb))
    pq = quantize_kernel(pp, rnd, p.elem)
    if p.decode64:   # the plain path's float64 products, rounded to float32 once
        y = ((pq.to(torch.float64) * s_b.to(torch.float64)) * s_dec.to(torch.float64)).to(torch.float32)
    else:            # q * s_b is exact in float32: the same value
        y = (pq * s_b) * s_dec
    return torch.where(bad, _nan(y), y).to(p.out_dtype)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Round finite float32 values to bfloat16 (RNE), kept in float32.

    Done on the bits: inductor may drop a ``.to(bfloat16).to(float32)`` round trip (it does not
    emulate precision casts by default), which would skip the rounding.
    """
    bits = t.view(torch.int32)
    mag = bits & 0x7FFFFFFF
    mag = (mag + (0x7FFF + ((mag >> 16) & 1))) & ~0xFFFF
    return (mag | (bits & ~0x7FFFFFFF)).view(torch.float32)


def hif4_scales(x: torch.Tensor, p: BlockPlan):
    """HiFloat4's scales for the (nb, 64) blocks: (poisoned, 1/s1, s1, per-4-group shift int8)."""
    nb = x.shape[0]
    mc = float32_input(x).abs().view(nb, 16, 4).amax(dim=2)    # NaN and Inf propagate
    finite = torch.isfinite(mc)
    bad = ~finite.all(dim=1, keepdim=True)               # a non-finite value poisons its block
    mc = torch.where(finite, mc, torch.zeros_like(mc))   # (the poisoned blocks' scales are unused)
    mb = mc.view(nb, 8, 2).amax(dim=2)
    ma = mb.amax(dim=1, keepdim=True)
    sf = _bf16(ma * ONE_SEVENTH_BF16).clamp(SF_MIN, SF_MAX)
    s1 = quantize_kernel(sf, None, p.scale)
    r = _bf16(1.0 / s1)
    e1_8 = ((mb * r) >= 4).to(torch.int32)
    e1_8_sub = e1_8[:, :, None].expand(nb, 8, 2).reshape(nb, 16)
    e1_16 = (((mc * r) * (0x3F800000 - (e1_8_sub << 23)).view(torch.float32)) >= 2).to(torch.int32)
    return bad, r, s1, (e1_8_sub + e1_16).to(torch.int8)


def hif4_spread(shift: torch.Tensor) -> torch.Tensor:
    """(nb, 16) group shifts -> (nb, 64) element shifts, materialized (an ATen copy)."""
    nb = shift.shape[0]
    return shift[:, :, None].expand(nb, 16, 4).reshape(nb, 64).contiguous()


def hif4_elements(x, rnd, bad, r, s1, shift, p: BlockPlan) -> torch.Tensor:
    """HiFloat4's elements given the scales (``shift`` per element): a flat elementwise loop.

    Blocks holding NaN or Inf (``bad``) become NaN at the end, so their values need no masking."""
    xb = float32_input(x)
    sh = shift.to(torch.int32) << 23          # shifts are 0..2: 2^+-sh built on the exponent field
    v = _bf16((xb.abs() * r) * (0x3F800000 - sh).view(torch.float32))
    c = quantize_kernel(v, rnd, p.elem)
    # copysign, not -c: Triton negates as 0 - c, which turns -0.0 into +0.0 on CUDA
    c = torch.where(xb < 0, torch.copysign(c, torch.full((), -1.0, dtype=c.dtype, device=c.device)), c)
    y = (c * s1) * (0x3F800000 + sh).view(torch.float32)
    return torch.where(bad, _nan(y), y).to(p.out_dtype)


def hif4_kernel(x: torch.Tensor, rnd, p: BlockPlan) -> torch.Tensor:
    """HiFloat4 (:mod:`floatlab.plain.hif4`) in float32 with bf16 roundings.

    Compiled (see :func:`_compiled`), the scale pass runs apart from the element kernel:
    inductor cannot vectorize the 4-element subgroup maxima nor their broadcast back to the
    elements (a fused single kernel took 172 ms for 2^24 values). On contiguous float32 CPU
    blocks the pass is native C++ with lane shuffles (:mod:`floatlab.kernels.native`, 7 ms);
    elsewhere two compiled kernels around the ATen copy :func:`hif4_spread` (20 ms)."""
    bad, r, s1, shift = hif4_scales(x, p)
    return hif4_elements(x, rnd, bad, r, s1, hif4_spread(shift), p)


_KERNELS = {ScaleRule.FLOOR: mx_kernel, ScaleRule.AMAX: amax_kernel, ScaleRule.HIF4: hif4_kernel}


@torch.compiler.disable   # plain Python bookkeeping: never traced into a caller's graph
def block_plan(fmt, mode: M, dtype: torch.dtype, sr_bits, generator) -> BlockPlan | None:
    """The kernel plan for a block format, or None where the plain pipeline must run."""
    if not isinstance(fmt, BlockFormat) or fmt.rule not in _RULES:
        return None
    return _block_plan(fmt, mode, dtype, sr_bits, generator is None)


@lru_cache(maxsize=256)
def _block_plan(fmt, mode: M, dtype: torch.dtype, sr_bits, no_generator: bool) -> BlockPlan | None:
    generator = None if no_generator else True
    layout = F64 if (fmt.rule is ScaleRule.FLOOR and dtype is torch.float64) else F32
    if layout is F64 and not float64_elements_exact(fmt.element):
        return None     # the plain pipeline refuses the inputs it cannot round exactly
    elem = dispatch.scalar_plan(fmt.element, mode, True, layout.float_dtype, sr_bits, generator)
    lo = round(math.log2(fmt.scale.smallest_positive))
    hi = math.floor(math.log2(fmt.scale.max_value))
    elem_scaled = None
    if elem is not None and fmt.rule is ScaleRule.FLOOR:
        if layout is F32 and mode in _NEAREST and fmt.element.max_value < 2.0 ** 127:
            elem_scaled = elem      # x * 2^-e < 2 * element max: no float32 overflow
        elem = Plan.make(elem.fmt, elem.mode, True, layout, layout.float_dtype, elem.sr_bits,
                         elem.rng, shifts=(lo, hi))
    scale = None
    if fmt.rule is ScaleRule.AMAX:
        scale = dispatch.scalar_plan(fmt.scale, M.RNE, True, torch.float32, None, None)
        if scale is None:
            return None
    elif fmt.rule is ScaleRule.HIF4:
        scale = Plan.make(E6M2, M.RNE, True, F32, torch.float32)
    if elem is None:
        return None
    e, sc = fmt.element, fmt.scale
    exact32 = (e.bits + sc.bits <= 24 and e.max_value * sc.max_value <= F32_MAX
               and e.smallest_positive * sc.smallest_positive >= 2.0 ** -149)
    return BlockPlan(fmt, elem, dtype, math.floor(math.log2(e.max_value)), lo, hi, scale,
                     float(e.max_value * sc.max_value), elem_scaled,
                     decode64=fmt.rule is ScaleRule.AMAX and not exact32)


def _fn(body, plan: BlockPlan, with_out: bool):
    """``body(*args, plan)`` as a function of tensors; ``with_out``: the last argument receives it."""
    if with_out:
        def quantize_blocks_into(*args):
            args[-1].copy_(body(*args[:-1], plan))
        return quantize_blocks_into

    def quantize_blocks(*args):
        return body(*args, plan)
    return quantize_blocks


def _compiled(plan: BlockPlan, xb: torch.Tensor, rnd, out_rows: torch.Tensor | None):
    """Run the compiled kernel(s); with ``out_rows`` the result is written there (returns None)."""
    if plan.fmt.rule is ScaleRule.HIF4:
        scales = native.hif4_scales(xb)   # the scale pass as one vectorized C++ loop, where built
        if scales is None:
            bad, r, s1, shift = compiler.run((plan, "hif4 scales"), lambda: _fn(hif4_scales, plan, False), xb)
            scales = bad, r, s1, hif4_spread(shift)
        args, body, key = (xb, rnd, *scales), hif4_elements, "hif4 elements"
    else:
        args, body, key = (xb, rnd), _KERNELS[plan.fmt.rule], "blocks"
    if out_rows is not None:
        compiler.run((plan, key, True), lambda: _fn(body, plan, True), *args, out_rows)
        return None
    return compiler.run((plan, key), lambda: _fn(body, plan, False), *args)


def _unsupported_reason(fmt: BlockFormat, dtype: torch.dtype) -> str:
    if fmt.rule not in _RULES:
        return f" (no fused kernel for the scale rule {fmt.rule.value!r})"
    if dtype is torch.float64 and not float64_elements_exact(fmt.element):
        return f" (element {fmt.element.name!r} has steps below 2^-969)"
    return ""


def quantize_block(x: torch.Tensor, fmt: BlockFormat, mode: M, generator, sr_bits,
                   out: torch.Tensor | None, backend: str, axis: int, pad: bool) -> torch.Tensor | None:
    """The fast path for a block format, or None when the plain pipeline must run.

    The arguments are validated by the caller (:func:`floatlab.quantize`)."""
    if backend == "plain":
        return None
    check_blockable(x.shape, fmt.block, axis, pad)   # a shape error is the same on every backend
    plan = block_plan(fmt, mode, x.dtype, sr_bits, generator)
    if backend in ("auto", "native"):
        y = _quantize_native(x, fmt, plan, generator, out, axis, pad)
        if y is not None:
            return y
        if backend == "native":
            raise dispatch.FastPathUnsupported(
                f"the native block kernel does not support {fmt.name!r} with {mode.value!r} for "
                f"{x.dtype} inputs on {x.device} (float32 CPU tensors; the MX, AMAX and HiF4 "
                "rules), or it could not be built; backend='auto' runs it on another path")
    if plan is None or (backend == "auto" and not compiler.compile_available()):
        if backend in ("compiled", "eager"):
            why = "" if plan is not None else _unsupported_reason(fmt, x.dtype)
            raise dispatch.FastPathUnsupported(
                f"the fast path does not support {fmt.name!r} with these options for {x.dtype} "
                f"inputs{why}; backend='auto' or 'plain' runs it on the plain pipeline")
        return None
    if x.numel() == 0:                                 # nothing to round (no blocks, no draws)
        return x.new_empty(x.shape) if out is None else out
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    saved = dispatch.rng_snapshot(plan.elem, generator, x.device) if backend == "compiled" else None
    rnd = dispatch.draws(plan.elem, xb.shape, x.device, generator)
    y = None
    if (backend == "compiled" and xb.shape[0] >= 2) or \
            (backend == "auto" and x.numel() >= dispatch.COMPILE_MIN_NUMEL and xb.shape[0] >= 2):
        # blocks that are plain rows of x (last axis, no padding) are written straight into the
        # output: the caller's contiguous ``out`` or a huge-page backed buffer (kernels/memory.py)
        rows = _rows(x, fmt, blocking)
        if rows and out is None:
            out = memory.large_output(x)
        try:
            if rows and out is not None and out.is_contiguous():
                _compiled(plan, xb, rnd, out.view(xb.shape))
                return out
            y = _compiled(plan, xb, rnd, None)
        except compiler.CompileUnavailable:
            if backend == "compiled":
                dispatch.rng_restore(saved)    # the caller's fallback draws these again
                raise
    if y is None:
        y = _KERNELS[fmt.rule](xb, rnd, plan)
    y = blocking.unblock(y)
    return y if out is None else out.copy_(y)


def _rows(x: torch.Tensor, fmt: BlockFormat, blocking) -> bool:
    """Blocks that are plain rows of ``x`` (last axis, no padding): the output is written
    straight into the caller's contiguous ``out`` or a fresh buffer."""
    return len(fmt.block) == 1 and blocking.axis == x.ndim - 1 and blocking.padded[0] == x.shape[-1]


def _quantize_native(x, fmt, plan, generator, out, axis, pad):
    """The native block kernel's result (written into ``out`` where given), or None where it
    does not apply: not float32 on the CPU, a format, block or mode it lacks, inside
    torch.compile's tracing, or no library (``FLOATLAB_NATIVE=0``, no compiler, a failed build)."""
    if (plan is None or x.dtype is not torch.float32 or x.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return None
    nplan = native_block.plan(plan)
    if nplan is None or not native_block.available():
        return None
    if x.numel() == 0:
        return x.new_empty(x.shape) if out is None else out
    xb, blocking = to_blocks(x, fmt.block, axis, pad)
    xb = xb.contiguous()
    rnd = dispatch.draws(plan.elem, xb.shape, x.device, generator)   # the plain path's draws
    scales = (1.0, 1.0)
    if fmt.rule is ScaleRule.AMAX and fmt.tensor_scale:
        scales = tuple(float(s) for s in tensor_scales(native_block.tensor_amax(xb), plan))
    if _rows(x, fmt, blocking):
        dst = out if out is not None and out.is_contiguous() else None
        if dst is None and out is None:
            dst = memory.large_output(x)
        if dst is None:
            dst = torch.empty(x.shape, dtype=x.dtype)
        native_block.quantize_into(xb, dst.view(xb.shape), nplan, rnd, scales)
        return dst if out is None or dst is out else out.copy_(dst)
    yb = torch.empty_like(xb)
    native_block.quantize_into(xb, yb, nplan, rnd, scales)
    y = blocking.unblock(yb)
    return y if out is None else out.copy_(y)
