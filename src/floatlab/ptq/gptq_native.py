"""GPTQ's column loop in C++ for table-rounded formats: the same float32 operations, one call per group.

:func:`floatlab.ptq.gptq.gptq_weight` rounds the columns of a scaled scalar format of 8 bits or
fewer through a table (:class:`floatlab.ptq.gptq._TableRounder`); per column it runs eight
small tensor operations, and their per-call cost (not the arithmetic) is most of a warm GPTQ
call. :func:`run_columns` does those columns of one lazy block in one native call, element for
element the same IEEE float32 operations in the same order (built with
``-ffp-contract=off``, no fast-math: no fused multiply-add, no reciprocal for a division), so
the bits are the Python loop's (tested against it and the verbatim reference loop):

* ``x = w / s`` (the row's scale), ``k`` = the number of table bounds below ``x``
  (``torch.searchsorted``), ``v = values[k]`` (``copysign(v, x)`` where the format has -0),
  ``q = v * s``, ``e = (w - q) / Hinv[i, i]``;
* every later column ``j`` of the block: ``w_j -= Hinv[i, j] * e`` (the product rounded, then
  the difference: ``torch.outer`` then ``-=``).

Built on first use with floatlab's native-kernel builder (:mod:`floatlab.kernels.native`: the
compiler torch.compile uses, into ``$FLOATLAB_CACHE/native``, about a second once per machine).
Where there is no compiler, the build fails, or ``FLOATLAB_NATIVE=0``, :func:`available` is
False and GPTQ runs its Python loop (same bits, slower), with one warning when a compiler was
found but failed.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = r"""
#include <cstdint>
#include <cmath>

// GPTQ's columns [c0, c1) of one lazy block held transposed: W, Q, V, E are (width, rows)
// row-major float32 (column i of the block is row i here); H the block's inverse-Hessian factor
// (width x width, strides hs, ht); s the per-row scales; values (nv) and bounds (nv - 1) the
// format's table. Columns after c1 up to `width` receive their rank-1 updates too.
extern "C" void floatlab_gptq_columns(float* W, float* Q, float* V, float* E, const float* H, int64_t hs, int64_t ht,
                                      int64_t width, int64_t rows, int64_t c0, int64_t c1, const float* s,
                                      const float* values, const float* bounds, int64_t nb, int signed_zero) {
    for (int64_t i = c0; i < c1; ++i) {
        float* w = W + i * rows;
        float* q = Q + i * rows;
        float* v = V + i * rows;
        float* e = E + i * rows;
        const float d = H[i * hs + i * ht];
        for (int64_t r = 0; r < rows; ++r) {
            const float x = w[r] / s[r];
            int64_t lo = 0, hi = nb;                 // the number of bounds strictly below x
            while (lo < hi) {
                const int64_t mid = (lo + hi) >> 1;
                if (bounds[mid] < x) lo = mid + 1; else hi = mid;
            }
            float val = values[lo];
            if (signed_zero) val = std::copysign(val, x);
            v[r] = val;
            const float qq = val * s[r];
            q[r] = qq;
            e[r] = (w[r] - qq) / d;
        }
        for (int64_t j = i + 1; j < width; ++j) {
            const float h = H[i * hs + j * ht];
            float* wj = W + j * rows;
            for (int64_t r = 0; r < rows; ++r) {
                const float p = h * e[r];
                wj[r] = wj[r] - p;
            }
        }
    }
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {}


def _source_path() -> Path:
    from floatlab.cache import cache_dir

    import hashlib
    key = hashlib.sha256(_SOURCE.encode()).hexdigest()[:16]
    path = cache_dir() / "native" / f"gptq_columns_{key}.cpp"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(_SOURCE)
        tmp.replace(path)
    return path


def _load():
    from floatlab.kernels import native

    cxx = native.compiler()
    if cxx is None:
        return None
    try:
        src = _source_path()
        path = native.library_path(cxx, src, "floatlab_gptq")
        if not path.exists():
            native._build(cxx, path, src)
        lib = ctypes.CDLL(str(path))
    except Exception as err:       # noqa: BLE001  (any failure: the Python loop gives the same bits)
        warnings.warn(f"floatlab: GPTQ's native column loop could not be built ({err}); using the Python "
                      "loop instead (same results; set FLOATLAB_NATIVE=0 to silence this)", RuntimeWarning, stacklevel=4)
        return None
    fn = lib.floatlab_gptq_columns
    i64, p = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i64, p, p, p, i64, ctypes.c_int]
    fn.restype = None
    return fn


def available() -> bool:
    """The native loop is built (on first call) and enabled (``FLOATLAB_NATIVE`` not 0)."""
    from floatlab.kernels import native

    if not native.enabled():
        return False
    if "fn" not in _state:
        with _lock:
            if "fn" not in _state:
                _state["fn"] = _load()
    return _state["fn"] is not None


def run_columns(W1: torch.Tensor, Q1: torch.Tensor, V1: torch.Tensor, E1: torch.Tensor, Hinv1: torch.Tensor,
                c0: int, c1: int, s: torch.Tensor, values: torch.Tensor, bounds: torch.Tensor,
                signed_zero: bool) -> None:
    """GPTQ's columns ``c0:c1`` of one block, in place (see the module docstring for the
    arithmetic). ``W1``, ``Q1``, ``V1``, ``E1``: ``(width, rows)`` contiguous float32 CPU
    tensors (the block transposed); ``Hinv1``: ``(width, width)`` float32, any strides; ``s``: ``(rows,)`` scales; ``values``/``bounds``: the table (float32, contiguous).
    Call only where :func:`available` is True."""
    width, rows = W1.shape
    for t in (W1, Q1, V1, E1):
        assert t.dtype == torch.float32 and t.is_contiguous() and t.shape == (width, rows) and t.device.type == "cpu"
    assert Hinv1.dtype == torch.float32 and Hinv1.shape == (width, width) and Hinv1.device.type == "cpu"
    # float32 scales only: the Python loop divides by the scale in its own dtype (no silent cast here)
    assert s.dtype == values.dtype == bounds.dtype == torch.float32, (s.dtype, values.dtype, bounds.dtype)
    s, values, bounds = s.contiguous(), values.contiguous(), bounds.contiguous()
    assert s.shape == (rows,) and bounds.numel() == values.numel() - 1
    _state["fn"](W1.data_ptr(), Q1.data_ptr(), V1.data_ptr(), E1.data_ptr(), Hinv1.data_ptr(), Hinv1.stride(0), Hinv1.stride(1),
                 width, rows, c0, c1, s.data_ptr(), values.data_ptr(), bounds.data_ptr(), bounds.numel(),
                 int(signed_zero))
