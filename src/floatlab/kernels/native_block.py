"""Native block kernels: mxfp4, nvfp4, hif4 (and their relatives) on float32 CPU tensors in one
pass, near copy speed.

The compiled block kernels (:mod:`floatlab.kernels.block`) reach 0.1-0.15x of ``dst.copy_(x)``:
inductor emits the per-block reductions and their broadcast back as scalar loops.
``native_block.cpp`` does a whole block at a time in C++ (its maximum, its scale, its elements),
with the decisions of those kernels step by step in the same float32 operations:

* MX (the FLOOR rule: mxfp4, mxfp6, mxfp8, mxint8): ``e = clamp(floor(log2 amax) - emax_elem)``,
  the elements rounded as ``t = x * 2^-e`` (exact except below 2^-126, far under half the
  element's smallest step, where +-2^-126 stands in and every mode decides the same) and
  multiplied back;
* AMAX (nvfp4, nvfp4_2d, user recipes with a scale format that has a zero): block scale
  ``scale_RNE((amax / elem_max) * s_enc)``; NVFP4's FP32 tensor scale from a first pass
  (:func:`tensor_amax`) and :func:`floatlab.kernels.block.tensor_scales`, the compiled kernel's
  own tensor operations;
* HIF4: the scale pass of ``native_hif4.cpp`` and the element rounding in the same loop.

The element rounding (:func:`plan` checks the element's spacing ``2^(max(E, emin) - mbits)``
against its ``quantum_exponent``) covers every mode the compiled block path has (rne, rna, rnz,
rtz, rup, rdn, rto, sr exact or with ``sr_bits``, sr_half): with a generator, the plain path's
own draws (taken by :func:`floatlab.kernels.dispatch.draws`, same calls, same order); without,
the compiled kernel's in-kernel hash of (seed, index in the blocks), the very same bits.

The same pass also writes codes instead of values (:func:`encode_into`, what
:func:`floatlab.encode` runs for these formats: element codes packed as the plain pipeline
stores them, 4-bit ones two per byte, and the scale codes: MX's E8M0 byte, NVFP4's E4M3 byte and
FP32 tensor scale, HiF4's E6M2 byte and E1_8/E1_16 bits). The element's rounded value becomes its
code by a :class:`CodeMap` (exponent field and top mantissa bits, or the multiple of the smallest
step), checked against the plain encoder on every value of the format first
(:func:`code_plan`); the plain path's draws are replayed, as for the values.

Built on first use with :mod:`floatlab.kernels.native`'s helpers (compiler, cache key, atomic
build, threads over slices of the blocks); where it cannot be built or ``FLOATLAB_NATIVE=0``,
:func:`available` is False and :func:`floatlab.kernels.block.quantize_block` runs the compiled
or plain path (same bits), with one warning when a compiler failed.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from floatlab.formats.block import ScaleRule
from floatlab.kernels import native
from floatlab.rounding import RoundingMode as M

SOURCE = Path(__file__).with_name("native_block.cpp")
FLAGS = (*native.FLAGS, "-fno-trapping-math", "-mprefer-vector-width=512")  # no value changes
BLOCKS = {ScaleRule.FLOOR: (32,), ScaleRule.AMAX: (16, 256), ScaleRule.HIF4: (64,)}  # compiled in
_MODES = {M.RNE: 0, M.RNA: 1, M.RNZ: 2, M.RTZ: 3, M.RUP: 4, M.RDN: 5, M.RTO: 6, M.SR: 7,
          M.SR_HALF: 9}
_SR_BITS = 8
_RNG = {"none": 0, "hash": 1, "replay": 2}
_lock = threading.Lock()
_state: dict[str, object] = {}

_I, _U, _P, _F = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_float
_COMMON = [_P, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _P, _I, _I, _I, ctypes.c_uint64,
           _I, _I, _U, _I]
_SIGNATURES = {                  # name -> (argtypes, restype)
    "floatlab_block_mx": (_COMMON + [_I, _I, _I], _I),
    "floatlab_block_amax": (_COMMON + [_I, _I, _U, _F, _F, _F], _I),
    "floatlab_block_hif4": ([_P, _P, ctypes.c_int64, ctypes.c_int64, _P, _I, _I, _I,
                             ctypes.c_uint64, _I, _I, _U, _I], None),
    "floatlab_block_absmax": ([_P, ctypes.c_int64, _P], None),
    "floatlab_block_mx_codes": ([_P, _P, _P, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _P,
                                 _I, _I, _I, _I, _I, _U, _I, _I, _I, _I], _I),
    "floatlab_block_amax_codes": ([_P, _P, _P, _P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                   _P, _I, _I, _I, _I, _I, _U, _I, _I, _I, _U, _F, _F, _F], _I),
    "floatlab_block_hif4_codes": ([_P, _P, _P, _P, ctypes.c_int64, ctypes.c_int64, _P, _I, _I, _I,
                                   _I, _I, _U, _I], _I),
    "floatlab_block_code_map": ([_P, _P, ctypes.c_int64, _P], None),
}


def library() -> ctypes.CDLL | None:
    """The loaded library (built on first use), or None where it is unavailable."""
    return native.loaded_once(_state, _lock, lambda: native.build_and_load(
        SOURCE, "floatlab_block", FLAGS, "native block kernel", _SIGNATURES, 7))


def available() -> bool:
    return library() is not None


@dataclass(frozen=True)
class Grid:
    """An element (or scale) format as the kernel sees it: spacing ``2^(max(E, emin) - mbits)``
    in the binade ``2^E`` up to its largest magnitude (float32 bits), where it saturates."""

    emin: int
    mbits: int
    max_bits: int
    neg_zero: bool


@dataclass(frozen=True)
class NativeBlockPlan:
    rule: ScaleRule
    block: int                # values per block (a 2-D tile counts its values)
    mode: int
    rng: int
    sr_bits: int
    elem: Grid
    extra: tuple = ()         # FLOOR: (emax_elem, lo, hi); AMAX: scale grid fields, target


def _bits(v: float) -> int:
    return int(torch.tensor(v, dtype=torch.float32).view(torch.int32)) & 0xFFFFFFFF


@lru_cache(maxsize=256)
def grid(fmt) -> Grid | None:
    """The kernel's grid for a scalar format, or None where its spacing does not have the form
    ``2^(max(E, emin) - mbits)`` below its max (checked binade by binade against the format's
    own ``quantum_exponent``), it is not symmetric with a zero, or its max is not a float32.
    Beyond the max every rounding saturates, so the spacing there does not matter."""
    largest = float(fmt.max_value)
    if not (getattr(fmt, "has_zero", False) and math.isfinite(largest) and largest > 0):
        return None
    if getattr(fmt, "signed", True) and float(fmt.max_negative) != largest:
        return None
    if float(torch.tensor(largest, dtype=torch.float32)) != largest:
        return None
    top = math.floor(math.log2(largest))
    if top > 127:
        return None
    e = torch.arange(-200, top + 1, dtype=torch.int64)
    qe = fmt.quantum_exponent(e).to(torch.int64)
    mbits = top - int(qe[-1])
    emin = int(qe.min()) + mbits
    if mbits < 0 or not -126 <= emin <= top or int(qe.min()) < -100:
        return None
    if not bool((qe == torch.clamp(e, min=emin) - mbits).all()):
        return None
    return Grid(emin, mbits, _bits(largest), bool(getattr(fmt, "neg_zero", True)))


@lru_cache(maxsize=256)
def _plan(bp) -> NativeBlockPlan | None:
    fmt, elem_plan = bp.fmt, bp.elem
    mode = elem_plan.mode
    if mode not in _MODES or bp.out_dtype is not torch.float32:
        return None
    code = _MODES[mode]
    if mode is M.SR and elem_plan.sr_bits is not None:
        if elem_plan.rng == "hash" and elem_plan.sr_bits > 32:   # 62-bit words there
            return None
        code = _SR_BITS
    n = fmt.block_numel
    if n not in BLOCKS.get(fmt.rule, ()):
        return None
    g = grid(fmt.element)
    if g is None:
        return None
    # t = x * 2^-e below 2^-126 stands in for a value far under half the smallest step
    if fmt.rule is ScaleRule.FLOOR and g.emin - g.mbits < -64:
        return None
    if fmt.rule is ScaleRule.FLOOR:
        if bp.scale_lo < -127 or bp.scale_hi > 127:
            return None
        extra = (bp.emax_elem, bp.scale_lo, bp.scale_hi)
    elif fmt.rule is ScaleRule.AMAX:
        sg = grid(fmt.scale)
        if sg is None or bp.decode64 or not fmt.scale.has_zero:
            return None
        extra = (sg.emin, sg.mbits, sg.max_bits, float(bp.elem.max_value))
    elif fmt.rule is ScaleRule.HIF4:
        extra = ()
    else:
        return None
    return NativeBlockPlan(fmt.rule, n, code, _RNG[elem_plan.rng], int(elem_plan.sr_bits or 0), g, extra)


def plan(bp) -> NativeBlockPlan | None:
    """The native plan for a :class:`floatlab.kernels.block.BlockPlan` on float32 inputs, or
    None where this kernel does not apply (the compiled or plain path serves the call)."""
    return None if bp is None else _plan(bp)


def tensor_amax(xb: torch.Tensor) -> torch.Tensor:
    """The largest finite magnitude of the contiguous float32 blocks ``xb`` (0-d float32; 0 for
    no finite nonzero value): NVFP4's tensor amax, one native pass over the blocks."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native block kernel is not available (check available())")
    flat = xb.view(-1)
    nu, tail = divmod(flat.numel(), 4096)
    amax = torch.zeros(nu + 1, dtype=torch.float32)
    if tail:                              # the last partial unit in torch (finite values only)
        rest = flat[nu * 4096:].abs()
        amax[nu] = torch.where(torch.isfinite(rest), rest, torch.zeros_like(rest)).max()
    px, pa = flat.data_ptr(), amax.data_ptr()
    native._parallel(lib.floatlab_block_absmax, nu, lambda s, c: (px + 4 * 4096 * s, c, pa + 4 * s))
    return amax.max()


def quantize_into(xb: torch.Tensor, yb: torch.Tensor, p: NativeBlockPlan,
                  rnd: torch.Tensor | None, tensor_scales: tuple[float, float] = (1.0, 1.0)) -> None:
    """Write the blocks ``xb`` (contiguous float32 CPU, (nb, block)) fake-quantized into ``yb``
    (same shape, contiguous; may be ``xb`` itself). ``rnd``: the draws of
    :func:`floatlab.kernels.dispatch.draws` for ``xb``'s shape (the plain path's, a 0-d seed
    for the hash, or None); ``tensor_scales``: the AMAX rule's (s_enc, s_dec) (NVFP4: from
    :func:`tensor_amax`, see :func:`floatlab.kernels.block.tensor_scales`)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native block kernel is not available (check available())")
    nb, B = xb.shape
    if nb == 0:
        return
    seed, draws, step = 0, None, 0
    if p.rng == _RNG["hash"]:
        seed = int(rnd) & 0xFFFFFFFFFFFFFFFF
    elif p.rng == _RNG["replay"]:
        draws = rnd.contiguous()
        if draws.numel() != xb.numel():
            raise ValueError("one draw per element is needed")
        step = draws.element_size()
    px, py = xb.data_ptr(), yb.data_ptr()
    pd = draws.data_ptr() if draws is not None else None
    g = p.elem
    tail = (p.mode, p.rng, p.sr_bits, seed, g.emin, g.mbits, g.max_bits, int(g.neg_zero))
    if p.rule is ScaleRule.HIF4:
        def chunk(s, c):
            return (px + 256 * s, py + 256 * s, c, 64 * s,
                    None if pd is None else pd + step * 64 * s, *tail)
        native._parallel(lib.floatlab_block_hif4, nb, chunk)
        return
    if p.rule is ScaleRule.FLOOR:
        fn, extra = lib.floatlab_block_mx, p.extra
    else:
        fn, extra = lib.floatlab_block_amax, (*p.extra, *tensor_scales)

    def chunk(s, c):
        return (px + 4 * B * s, py + 4 * B * s, c, B, B * s,
                None if pd is None else pd + step * B * s, *tail, *extra)
    native._parallel(fn, nb, chunk)


# ---- encode: codes from the same pass --------------------------------------------------------
# The element's rounded value o (float32 bits, sign in bit 31) becomes its code by a CodeMap
# (native_block.cpp's code_vec): |o| at or above 2^emin is (|o| >> (23 - mbits)) - off (the
# exponent field re-biased and the top mantissa bits), below it the multiple |o| * 2^(mbits - emin)
# of the smallest step; the sign as a sign bit, or two's complement for integers. Each map is
# checked against the plain encoder on every value of its format before it is used.
_NO_NORMAL = 0xFFFFFFFF             # integers: every magnitude is a multiple of the step


@dataclass(frozen=True)
class CodeMap:
    norm_bits: int
    shift: int
    off: int
    sub_mul: float
    sign_bit: int
    twos: bool
    mask: int

    def words(self) -> tuple[int, ...]:
        return (self.norm_bits, self.shift, self.off & 0xFFFFFFFF, _bits(self.sub_mul),
                self.sign_bit, int(self.twos), self.mask)


@dataclass(frozen=True)
class NativeCodePlan:
    """A :class:`NativeBlockPlan` and the 18 code words ``native_block.cpp``'s ``codes_of``
    reads: the element's and the scale's CodeMap, element bits, the scale's NaN code (MX,
    AMAX), MX's scale code ``(e + bias) << mbits``."""

    plan: NativeBlockPlan
    words: tuple[int, ...]
    ebits: int
    scale_bytes: int          # per block: 1, HiF4 4


def _code_map_of(fmt, sign_bit: bool) -> CodeMap | None:
    """The CodeMap of ``fmt`` (a FloatFormat or IntFormat), or None where it has no such form."""
    from floatlab.formats.floating import FloatFormat
    from floatlab.formats.integer import IntFormat
    bits = int(fmt.bits)
    mask = (1 << bits) - 1
    if isinstance(fmt, IntFormat):
        if not -126 <= fmt.frac_bits <= 127:
            return None
        return CodeMap(_NO_NORMAL, 0, 0, 2.0 ** fmt.frac_bits, 0, bool(fmt.signed), mask)
    if not isinstance(fmt, FloatFormat):
        return None
    emin, mbits = int(fmt.emin), int(fmt.mbits)
    if not -126 <= emin <= 127 or mbits > 23 or mbits - emin > 127:
        return None
    at_emin = int(fmt.encode(torch.tensor([2.0 ** emin], dtype=torch.float64))[0])
    sign = 1 << (bits - 1) if sign_bit and fmt.signed else 0
    return CodeMap(_bits(2.0 ** emin), 23 - mbits, ((127 + emin) << mbits) - at_emin,
                   2.0 ** (mbits - emin), sign, False, mask)


def map_codes(values: torch.Tensor, cm: CodeMap) -> torch.Tensor:
    """The codes ``native_block.cpp`` writes for the float32 ``values`` under ``cm`` (int64)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native block kernel is not available (check available())")
    v = values.to(torch.float32).contiguous()
    out = torch.zeros(v.numel(), dtype=torch.int32)
    words = (ctypes.c_uint32 * 7)(*cm.words())
    lib.floatlab_block_code_map(v.data_ptr(), out.data_ptr(), v.numel(), ctypes.addressof(words))
    return out.to(torch.int64) & 0xFFFFFFFF


def _checked_map(fmt, magnitudes: bool) -> CodeMap | None:
    """:func:`_code_map_of` where ``native_block.cpp`` gives the plain encoder's code
    (``fmt.encode``) of every finite value of ``fmt`` (``magnitudes``: of every value >= +0,
    whose sign the kernel then sets as bit ``bits - 1``), else None."""
    cm = _code_map_of(fmt, sign_bit=True)
    if cm is None or fmt.bits > 16:
        return None
    if magnitudes and cm.twos:
        return None
    v = fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int64)).to(torch.float64)
    v = v[torch.isfinite(v)]
    if magnitudes:
        v = v[~torch.signbit(v)]
    if v.numel() == 0 or not torch.equal(v.to(torch.float32).to(torch.float64), v):
        return None
    want = fmt.encode(v).to(torch.int64) & ((1 << fmt.bits) - 1)
    return cm if torch.equal(map_codes(v, cm), want) else None


@lru_cache(maxsize=256)
def _code_plan(bp, scale_bias: int, scale_mbits: int, scale_nan: int) -> NativeCodePlan | None:
    p = _plan(bp)
    fmt = bp.fmt
    if p is None or p.rng == _RNG["hash"] or fmt.element_bits not in (4, 6, 8) or p.block % 16:
        return None
    from floatlab.formats.hifloat4 import E6M2
    elem = _checked_map(fmt.element, magnitudes=fmt.rule is ScaleRule.HIF4)
    if elem is None:
        return None
    if fmt.rule is ScaleRule.HIF4:
        if elem.sign_bit != 1 << (fmt.element_bits - 1):
            return None          # the plain pipeline's code: magnitude | (x < 0) << (bits - 1)
        scale = _checked_map(E6M2, magnitudes=True)
    elif fmt.rule is ScaleRule.AMAX:
        scale = _checked_map(fmt.scale, magnitudes=True)
    else:
        scale = CodeMap(0, 0, 0, 0.0, 0, False, 0)                 # MX: (e + bias) << mbits
    if scale is None or (fmt.rule is not ScaleRule.FLOOR and fmt.scale.bits > 8):
        return None
    words = (*elem.words(), *scale.words(), fmt.element_bits, scale_nan & 0xFFFFFFFF,
             scale_bias & 0xFFFFFFFF, scale_mbits)
    return NativeCodePlan(p, words, fmt.element_bits, 4 if fmt.rule is ScaleRule.HIF4 else 1)


def code_plan(bp, scale_bias: int = 0, scale_mbits: int = 0, scale_nan: int = 0) -> NativeCodePlan | None:
    """The native encode plan for a float32 :class:`floatlab.kernels.block.BlockPlan`, or None
    where this kernel does not encode it (no library, the hash draws, codes other than 4/6/8 bits, a
    code map that does not match the plain encoder). MX: the scale code ``(e + scale_bias) <<
    scale_mbits`` (checked by the caller), ``scale_nan`` that of a block holding NaN/Inf."""
    if bp is None or not available():
        return None
    return _code_plan(bp, scale_bias, scale_mbits, scale_nan)


def encode_into(xb: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, cp: NativeCodePlan,
                rnd: torch.Tensor | None, tensor_scales: tuple[float, float] = (1.0, 1.0)) -> bool:
    """Write the codes of the blocks ``xb`` (contiguous float32 CPU, (nb, block)) into ``data``
    (uint8, ``nb * block`` codes packed as :func:`floatlab.plain.packing.pack`: 8-bit ones one
    per byte, 4-bit ones two per byte, 6-bit ones four per three bytes)
    and their scale codes into ``scales`` (uint8, ``nb * cp.scale_bytes``), both contiguous:
    what the plain pipeline stores. ``rnd``: the plain path's draws or None;
    ``tensor_scales`` as :func:`quantize_into`'s. Returns True where a HiF4 block holds NaN or
    Inf (its plain scales differ: the caller runs the plain pipeline; the outputs are then
    incomplete)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native block kernel is not available (check available())")
    p = cp.plan
    nb, B = xb.shape
    if nb == 0:
        return False
    draws, step = None, 0
    if p.rng == _RNG["replay"]:
        draws = rnd.contiguous()
        if draws.numel() != xb.numel():
            raise ValueError("one draw per element is needed")
        step = draws.element_size()
    words = (ctypes.c_uint32 * 18)(*cp.words)
    pw = ctypes.addressof(words)
    px, pd_, ps = xb.data_ptr(), data.data_ptr(), scales.data_ptr()
    pr = draws.data_ptr() if draws is not None else None
    g = p.elem
    tail = (p.mode, p.rng, p.sr_bits, g.emin, g.mbits, g.max_bits, int(g.neg_zero))
    per = B * cp.ebits // 8

    def head(s):
        return (px + 4 * B * s, pd_ + per * s, ps + cp.scale_bytes * s, pw)

    if p.rule is ScaleRule.HIF4:
        def chunk(s, c):
            return (*head(s), c, 64 * s, None if pr is None else pr + step * 64 * s, *tail)
        return native._parallel(lib.floatlab_block_hif4_codes, nb, chunk)
    if p.rule is ScaleRule.FLOOR:
        fn, extra = lib.floatlab_block_mx_codes, p.extra
    else:
        fn, extra = lib.floatlab_block_amax_codes, (*p.extra, *tensor_scales)

    def chunk(s, c):
        return (*head(s), c, B, B * s, None if pr is None else pr + step * B * s, *tail, *extra)
    if native._parallel(fn, nb, chunk):
        raise RuntimeError(f"native_block.cpp has no {B}-value blocks for {p.rule.value}")
    return False

