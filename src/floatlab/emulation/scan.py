"""Which float32 results the emulation's float32 lane must redo in float64, found in one pass.

:meth:`floatlab.emulation.mode.Emulation._verified` rounds a float32 result directly where that
provably gives the float64 path's answer, and redoes the other elements. The tests here select
those elements (a superset is always safe: a redone element gets the float64 path's answer):

* :func:`bits`: elements whose float32 bits satisfy ``bits & mask == value`` (a rounding
  midpoint's candidates) and differ from their rounding, or, optionally, whose magnitude is
  below float32's normal range;
* :func:`grid`: elements within ``t`` float32 units of a multiple of ``2^(E - p)`` (``E`` the
  element's binade): for a format whose rounding is constant between consecutive multiples
  (checked once per format and mode by :func:`grid_bits`), an element farther away than its
  error bound rounds like the exact value; plus zeros, float32 subnormals, infinities and NaNs.

:func:`round_to_odd` is the float64 -> float32 round-to-odd cast of
:func:`~floatlab.emulation.rounding.round_to_odd_float32` as one loop, and :func:`nudge` decides the flagged elements of ``+ - * /`` without a float64 redo (the
argument is :meth:`~floatlab.emulation.mode.Emulation._nudged`'s).

Each is a small C++ loop (``native_scan.cpp``, built on first use like
:mod:`floatlab.kernels.native`; about 0.2 ns per element) with a NumPy fallback where no compiler
is found or ``FLOATLAB_NATIVE=0``. Both return flat (C-order) positions as an int64 NumPy array.
"""

from __future__ import annotations

import ctypes
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_name("native_scan.cpp")
MIN_NORMAL = 2.0 ** -126
_lock = threading.Lock()
_local = threading.local()
_state: dict[str, object] = {}


def _load():
    from floatlab.kernels import native
    cxx = native.compiler()
    if cxx is None:
        return None
    try:
        path = native.library_path(cxx, SOURCE, "floatlab_scan")
        if not path.exists():
            native._build(cxx, path, SOURCE)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"floatlab: the emulation's scan loop could not be built ({err}); using NumPy "
                      "instead (set FLOATLAB_NATIVE=0 to silence this)", RuntimeWarning, stacklevel=4)
        return None
    fn = lib.floatlab_scan_bits
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint32,
                   ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int64
    fn = lib.floatlab_scan_grid
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
    fn.restype = ctypes.c_int64
    fn = lib.floatlab_nudge
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double,
                   ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int64
    fn = lib.floatlab_round_to_odd
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    return lib


def library():
    """The loaded scan loops (built on first use), or None where unavailable or disabled."""
    from floatlab.kernels import native
    if not native.enabled():
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]


def _native_ok(*ts) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype is torch.float32 and t.is_contiguous()
                             and t.dim() > 0) for t in ts)


def _buffer(n: int) -> np.ndarray:
    """A per-thread int64 scratch array of at least ``n`` elements (reused: the scans return copies)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(max(n, 1 << 12), dtype=np.int64)
    return buf


def bits(x: torch.Tensor, y: torch.Tensor | None, mask: int, value: int, tiny: bool) -> np.ndarray:
    """Flat positions of the float32 CPU tensor ``x`` where ``bits & mask == value`` and (when
    ``y``, of ``x``'s shape, is given) ``x != y``, or (``tiny``) ``not |x| >= 2^-126``."""
    x = x.detach()
    y = None if y is None else y.detach()
    lib = library()
    if lib is not None and _native_ok(x, y):
        pos = _buffer(x.numel())
        k = lib.floatlab_scan_bits(x.data_ptr(), None if y is None else y.data_ptr(), x.numel(), mask, value,
                                   int(tiny), pos.ctypes.data)
        return pos[:k].copy()
    o = x.numpy()
    with np.errstate(all="ignore"):
        flag = (o.view(np.int32) & mask) == value
        if y is not None:
            flag &= o != y.numpy()
        if tiny:
            flag |= ~(np.abs(o) >= MIN_NORMAL)
    return np.flatnonzero(flag)


def grid(x: torch.Tensor, shift: int, t: int) -> np.ndarray:
    """Flat positions of the float32 CPU tensor ``x`` whose low ``shift`` significand bits ``r``
    satisfy ``r < t`` or ``r >= 2^shift - t``, or whose exponent field is 0 or 255."""
    x = x.detach()
    lib = library()
    if lib is not None and _native_ok(x):
        pos = _buffer(x.numel())
        k = lib.floatlab_scan_grid(x.data_ptr(), x.numel(), shift, t, pos.ctypes.data)
        return pos[:k].copy()
    u = x.numpy().view(np.uint32)
    e = (u >> 23) & 0xFF
    flag = (((u + np.uint32(t)) & np.uint32((1 << shift) - 1)) < 2 * t) | (e == 0) | (e == 0xFF)
    return np.flatnonzero(flag)


def grid_bits(rounder) -> int | None:
    """``p`` when ``rounder`` (a :class:`~floatlab.emulation.rounding.Rounder` with ``p`` significant
    bits, a deterministic mode) rounds every float32 number of each open interval between
    consecutive multiples of ``2^(E - p)`` alike, in every normal float32 binade ``[2^E, 2^(E+1))``
    and both signs; else None.

    Checked, not assumed: by monotonicity it suffices that the numbers 1 float32 ulp above each
    multiple and 1 ulp below the next round alike (2^(p+3) * 254 values; 2.1 million for fp16,
    a few milliseconds). It holds for every ExMy format (values are multiples of 2^(E-p+1), round-
    to-nearest boundaries of 2^(E-p), the overflow threshold included) and for HiF8 (p = 4, its
    coarser binades are sub-grids); the check would catch a format where it does not.
    """
    p = rounder.p
    if p is None or rounder.mode.is_stochastic or not 1 <= p <= 17:
        return None
    key = (rounder.spec, rounder.mode, rounder.saturate, rounder.backend)
    if key not in _GRID:
        _GRID[key] = p if _grid_holds(rounder, p) else None
    return _GRID[key]


_GRID: dict = {}


def _grid_holds(rounder, p: int) -> bool:
    """The check of :func:`grid_bits` (run with floatlab's dispatch modes off)."""
    shift = 23 - p
    e = np.arange(1, 255, dtype=np.uint32)[:, None] << np.uint32(23)
    j = np.arange(1 << p, dtype=np.uint32)[None, :] << np.uint32(shift)
    start = (e | j).reshape(-1)
    lo, hi = start + np.uint32(1), start + np.uint32((1 << shift) - 1)
    sign = np.uint32(0x80000000)
    pts = np.concatenate([lo, hi, lo | sign, hi | sign]).view(np.float32)
    y = rounder(torch.from_numpy(pts)).numpy()
    n = lo.size
    a = np.concatenate([y[:n], y[2 * n:3 * n]])
    b = np.concatenate([y[n:2 * n], y[3 * n:]])
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return bool(same.all())


NUDGE_OPS = {"add": 0, "sub": 1, "rsub": 2, "mul": 3, "square": 4, "div": 5, "reciprocal": 6}


def nudge(name: str, out: torch.Tensor, operands, pos: np.ndarray):
    """The native loop of :meth:`Emulation._nudged <floatlab.emulation.mode.Emulation._nudged>`
    for the contiguous float32 CPU result ``out`` of ``name`` (a key of :data:`NUDGE_OPS`) at the
    flat positions ``pos`` (int64).

    ``operands``: one entry per operand, a Python float or 0-dim float32 tensor (a scalar), or a
    contiguous float32 CPU tensor of ``out``'s shape or of a trailing part of it, leading size-1
    dimensions allowed (a broadcast row). Returns ``(moved,
    stepped)``: the positions whose exact result differs from ``out`` and there ``out``'s float32
    neighbour on the exact result's side (NumPy int64 and float32); ``False`` where an operand or
    result at ``pos`` is not finite; ``None`` where the loop is unavailable or an operand has
    another layout (the caller takes the NumPy path)."""
    lib = library()
    if lib is None or not _native_ok(out) or len(operands) not in (1, 2):
        return None
    out = out.detach()
    desc = []
    for a in operands:
        if isinstance(a, torch.Tensor) and a.dim() == 0 and a.device.type == "cpu" \
                and a.dtype is torch.float32:
            a = float(a)
        if isinstance(a, float):
            desc += [0, None, 1, a]
            continue
        if not _native_ok(a):
            return None
        a = a.detach()
        if a.shape == out.shape:
            desc += [1, a.data_ptr(), a.numel(), 0.0]
            continue
        trailing = tuple(a.shape)
        while trailing and trailing[0] == 1:
            trailing = trailing[1:]
        if len(trailing) > out.dim() or tuple(out.shape[out.dim() - len(trailing):]) != trailing:
            return None
        desc += [2, a.data_ptr(), a.numel(), 0.0]      # a row broadcast over the leading dimensions
    if len(operands) == 1:
        desc += [0, None, 1, 0.0]
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    moved = np.empty(pos.size, dtype=np.int64)
    stepped = np.empty(pos.size, dtype=np.float32)
    k = lib.floatlab_nudge(NUDGE_OPS[name], out.data_ptr(), pos.ctypes.data, pos.size, *desc,
                           moved.ctypes.data, stepped.ctypes.data)
    if k < 0:
        return False
    return moved[:k], stepped[:k]


def round_to_odd(x: torch.Tensor) -> torch.Tensor | None:
    """:func:`~floatlab.emulation.rounding.round_to_odd_float32` of the contiguous float64 CPU
    tensor ``x`` in one native loop (a new float32 tensor of ``x``'s shape), or None where the loop
    is unavailable or ``x`` is another kind of tensor."""
    lib = library()
    if lib is None or x.dtype is not torch.float64 or x.device.type != "cpu" or not x.is_contiguous():
        return None
    x = x.detach()
    out = torch.empty(x.shape, dtype=torch.float32)
    lib.floatlab_round_to_odd(x.data_ptr(), out.data_ptr(), x.numel())
    return out
