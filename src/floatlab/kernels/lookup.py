"""Deterministic rounding of float32 CPU tensors by table lookup, fused with a power-of-two scale.

The training layers fake-quantize each GEMM operand as ``quantize(t * s) / s`` (``s`` a power of
two, or no scale). For a format with at most 3 mantissa bits (e4m3, e5m2, HiF8...) this is one
table lookup per element, in one native pass (``native_lookup.cpp``), instead of the three to
eight tensor passes of the scale, the rounding (a native cast with its saturation checks, or the
compiled kernel) and the unscale.

Why one table entry is right for a whole key (the argument of :mod:`floatlab.emulation.lut`,
which this module shares its key layout with): a float32 value's key keeps its sign, exponent and
top 4 mantissa bits (``idx``, 13 bits) and whether any of the 19 bits below is set (``sticky``).
Every value and rounding midpoint of a format with at most 3 mantissa bits is a multiple of the
4-bit unit ``u`` of its binade, so the open interval ``(a, a + u)`` of the values with one ``idx``
and ``sticky = 1`` holds no value and no midpoint of the format, and a deterministic rounding
gives one answer on it. :func:`table` evaluates **the very function the table replaces** (passed
in by the caller) at ``a`` (``sticky = 0``) and at both ends of the interval, ``a + 1 ulp`` and
``a + u - 1 ulp``, and returns None where the ends differ (bit for bit, NaN payloads included):
the table never states an answer the replaced path did not give.

The scaled loop computes ``v = x * s`` and ``table[key(v)] / s`` with IEEE float32 operations
(built with ``-ffp-contract=off``, no fast-math), the very operations of ``t * s`` and ``q / s``
in torch (a division by a power of two equals torch's multiplication by its exact reciprocal).

Integer formats (int8, int4: spacing 1, saturating) have too many mantissa bits for a table;
:func:`int_round` rounds them in one branch-free loop instead, ties to even or stochastically
against the float64 draws ``floatlab.quantize`` itself would take from the layer's generator
(the caller takes them, at the same point of the stream), with the decisions of
:func:`floatlab.kernels.scalar.quantize_kernel`; it is tested against ``fake_quantize``.

Built like :mod:`floatlab.kernels.native` (``$FLOATLAB_CACHE/native``, the compiler
torch.compile uses); where it cannot be built or ``FLOATLAB_NATIVE=0``, :func:`available` is
False and callers keep their own path.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Hashable
from functools import lru_cache
from pathlib import Path

import torch

from floatlab.kernels import native

SOURCE = Path(__file__).with_name("native_lookup.cpp")
MANTISSA = 3                       # formats with at most this many mantissa bits
SHIFT = 23 - (MANTISSA + 1)        # bits below the kept ones: 19
SIZE = 1 << (9 + MANTISSA + 2)     # (sign, exponent, 4 mantissa bits, sticky): 16384 entries
FLAGS = (*native.FLAGS, "-fno-trapping-math")   # changes no value (see native_lookup.cpp)
_lock = threading.Lock()
_state: dict[str, object] = {}
_tables: dict[Hashable, torch.Tensor | None] = {}


_P, _L = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {                  # name -> (argtypes, restype)
    "floatlab_lookup_round": ([_P, _P, _L, _P, ctypes.c_int, ctypes.c_float, ctypes.c_int], None),
    "floatlab_unfold_rows": ([_P, _P] + [_L] * 21, None),
    "floatlab_fold_rows": ([_P, _P] + [_L] * 15, None),
    "floatlab_amax": ([_P, _L], ctypes.c_float),
    "floatlab_int_round": ([_P, _P, _L, _P, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                            ctypes.c_int], None),
}


def library() -> ctypes.CDLL | None:
    """The loaded lookup loop (built on first use), or None where it is unavailable."""
    return native.loaded_once(_state, _lock, lambda: native.build_and_load(
        SOURCE, "floatlab_lookup", FLAGS, "table-lookup rounding loop", _SIGNATURES, 6,
        instead="the other kernels"))


def available() -> bool:
    return library() is not None


def representatives() -> torch.Tensor:
    """(3, 8192) float32: per 13-bit ``idx``, the key's value ``a`` and both ends of its sticky
    interval, ``a + 1 ulp`` and ``a + u - 1 ulp``."""
    idx = torch.arange(SIZE // 2, dtype=torch.int64) << SHIFT
    low = (1 << SHIFT) - 1
    return torch.stack([idx, idx + 1, idx + low]).to(torch.int32).view(torch.float32)


def build_table(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """The 2 x 8192 lookup table of the float32 -> float32 rounding ``fn``, or None where ``fn``
    is not constant on some key's sticky interval (then no table can replace it)."""
    reps = representatives()
    q = fn(reps.reshape(-1).clone()).to(torch.float32).reshape(3, -1).contiguous()
    bits = q.view(torch.int32)
    if not bool((bits[1] == bits[2]).all()):
        return None
    return torch.stack([q[0], q[1]], dim=1).reshape(-1).contiguous()


def table(key: Hashable, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """:func:`build_table` of ``fn``, built once per ``key`` (the caller names what ``fn`` does:
    format, rounding, saturation, path)."""
    if key not in _tables:
        with _lock:
            if key not in _tables:
                _tables[key] = build_table(fn)
    return _tables[key]


def round_scaled(t: torch.Tensor, lut: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``lut`` looked up for every element of the float32 CPU tensor ``t`` (a new contiguous
    tensor of ``t``'s shape); with ``scale`` (a power of two), ``lookup(t * scale) / scale``."""
    lib = library()
    if lib is None:
        raise RuntimeError("the table-lookup loop is not available (check lookup.available())")
    x = t.contiguous()
    y = torch.empty(t.shape, dtype=torch.float32)
    n = x.numel()
    if n:
        px, py = x.data_ptr(), y.data_ptr()
        native._parallel(lib.floatlab_lookup_round, -(-n // 64),
                         lambda s, c: (px + 256 * s, py + 256 * s, min(64 * c, n - 64 * s),
                                       lut.data_ptr(), SHIFT, float(scale or 1.0), scale is not None))
    return y


# ---- integer formats ---------------------------------------------------------------------------
INT_MODES = ("rne", "sr")


@lru_cache(maxsize=256)
def int_format_fits(fmt) -> bool:
    """Is ``fmt`` an integer format the native integer loop implements: signed, spacing 1 in
    every binade, a zero and no -0, saturating overflow, limits exact in float32?"""
    from floatlab.formats.base import Overflow
    from floatlab.formats.integer import IntFormat
    from floatlab.kernels.scalar import F32, _uniform_qe
    from floatlab.rounding import RoundingMode as M
    if not isinstance(fmt, IntFormat) or not fmt.signed or not fmt.has_zero or fmt.neg_zero:
        return False
    if fmt.overflow is not Overflow.SATURATE or _uniform_qe(fmt, M.RNE, F32, (0, 0)) != 0:
        return False
    lim = (float(fmt.max_value), float(fmt.max_negative))
    return all(float(torch.tensor(v, dtype=torch.float32)) == v and 0 < v < 2 ** 24 for v in lim)


def int_round(t: torch.Tensor, fmt, draws: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """``quantize(t * scale, fmt) / scale`` for a float32 CPU tensor and a format that
    :func:`int_format_fits`, saturating: ties to even, or stochastic rounding with ``draws``
    (float64 uniforms in [0, 1), one per element in row-major order: the very draws
    ``floatlab.quantize`` takes from its generator)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native loop is not available (check lookup.available())")
    x = t.contiguous()
    y = torch.empty(t.shape, dtype=torch.float32)
    n = x.numel()
    if draws is not None:
        draws = draws.contiguous()
        if draws.dtype is not torch.float64 or draws.numel() != n:
            raise ValueError("draws must be float64 with one value per element")
    if n:
        px, py = x.data_ptr(), y.data_ptr()
        pu = draws.data_ptr() if draws is not None else None
        native._parallel(lib.floatlab_int_round, -(-n // 64),
                         lambda s, c: (px + 256 * s, py + 256 * s, min(64 * c, n - 64 * s),
                                       None if pu is None else pu + 512 * s,
                                       float(fmt.max_value), float(fmt.max_negative),
                                       float(scale or 1.0), scale is not None))
    return y


DRAW_CHUNK = 1 << 15     # float64 draws per slice of int_round_drawn: 256 KiB, cache-resident


def int_round_drawn(t: torch.Tensor, fmt, draw: Callable[[torch.Tensor], object],
                    buffer: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """:func:`int_round` with stochastic rounding against draws made slice by slice: ``draw(d)``
    fills ``d`` (a float64 slice of ``buffer``, at most ``buffer.numel()`` values) with the
    draws of the next ``d.numel()`` elements, in row-major order, and the slice is rounded at
    once, while its draws are still in the cache, instead of writing all draws and reading them
    back. The caller's ``draw`` must give the same values slice by slice as in one call
    (``uniform_`` on a CPU generator does: one 64-bit draw per float64 value, in order; tested
    in tests/test_kernels_lookup.py)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native loop is not available (check lookup.available())")
    if buffer.dtype is not torch.float64 or not buffer.is_contiguous() or buffer.numel() < 1:
        raise ValueError("buffer must be a contiguous float64 tensor of at least one value")
    x = t.contiguous()
    y = torch.empty(t.shape, dtype=torch.float32)
    n, chunk = x.numel(), buffer.numel()
    px, py, pu = x.data_ptr(), y.data_ptr(), buffer.data_ptr()
    hi, lo, sc = float(fmt.max_value), float(fmt.max_negative), float(scale or 1.0)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        draw(buffer[:k])
        lib.floatlab_int_round(px + 4 * s, py + 4 * s, k, pu, hi, lo, sc, scale is not None)
    return y


# ---- per-tensor amax ---------------------------------------------------------------------------
def _dense(t: torch.Tensor) -> bool:
    """Do ``t``'s elements fill ``numel`` consecutive storage slots (any order of dimensions)?"""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def amax(t: torch.Tensor) -> float | None:
    """The largest finite magnitude of a float32 CPU tensor as a Python float (0.0 when it has
    none), the value of ``float(floatlab.nn.scaling.amax(t))``, in one native pass over its
    storage; None where the loop is unavailable or ``t`` is not float32 on the CPU with its
    elements in ``numel`` consecutive slots (contiguous in some order of its dimensions)."""
    if t.dtype is not torch.float32 or t.device.type != "cpu" or not _dense(t):
        return None
    lib = library()
    if lib is None:
        return None
    return float(lib.floatlab_amax(t.data_ptr(), t.numel())) if t.numel() else 0.0


# ---- the implicit GEMM's unfolded input -------------------------------------------------------
def unfold_rows(x: torch.Tensor, kernel, stride, padding, dilation, groups: int) -> torch.Tensor | None:
    """``F.unfold(x, ...)`` laid out as the implicit GEMM's rows, ``(G, N*L, Kg)`` contiguous
    (what :func:`floatlab.nn.functional._rows` makes of it), in one native gather reading ``x``
    in its own layout (contiguous or channels-last; any other is copied to contiguous first);
    None where the loop is unavailable or ``x`` is not a float32 CPU tensor of shape (N, C, H, W)."""
    lib = library()
    if lib is None or x.dtype is not torch.float32 or x.device.type != "cpu" or x.ndim != 4:
        return None
    if not x.is_contiguous(memory_format=torch.channels_last):   # read through either layout
        x = x.contiguous()
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if OH < 1 or OW < 1 or C % groups:
        return None
    Kg = C // groups * kh * kw
    out = torch.empty((groups, N * OH * OW, Kg), dtype=torch.float32)
    if out.numel():
        px, po = x.data_ptr(), out.data_ptr()
        lib.floatlab_unfold_rows(px, po, 0, N, N, C, H, W, groups, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW,
                                 *x.stride())
    return out


def fold_rows(rows: torch.Tensor, n: int, size, kernel, stride, padding, dilation,
              groups: int) -> torch.Tensor | None:
    """``F.fold(_unrows(rows, n), size, ...)`` (col2im of the implicit GEMM's rows ``(G, N*L,
    Kg)``) in one native pass with ATen's addition order, so the same bits; None where the loop
    is unavailable or ``rows`` is not float32 on the CPU."""
    lib = library()
    if lib is None or rows.dtype is not torch.float32 or rows.device.type != "cpu" or rows.ndim != 3:
        return None
    rows = rows.contiguous()
    (H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = size, kernel, stride, padding, dilation
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    G, NL, Kg = rows.shape
    if G != groups or NL != n * OH * OW or Kg % (kh * kw) or OH < 1 or OW < 1:
        return None
    C = G * Kg // (kh * kw)
    out = torch.empty((n, C, H, W), dtype=torch.float32)
    if out.numel():
        lib.floatlab_fold_rows(rows.data_ptr(), out.data_ptr(), n, C, H, W, G, kh, kw, sh, sw, ph, pw,
                               dh, dw, OH, OW)
    return out


__all__ = ["amax", "fold_rows", "unfold_rows", "available", "build_table", "table", "round_scaled", "representatives", "int_format_fits",
           "int_round", "int_round_drawn", "DRAW_CHUNK"]
