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
