"""Rounding float32 tensors by table lookup, for formats with at most 3 mantissa bits.

For a float32 value ``x``, keep its sign, exponent and top 4 mantissa bits (``idx``, 13 bits) and
whether any of the 19 bits below is set (``sticky``). Every value and rounding midpoint of a
format with at most 3 mantissa bits (e4m3, e3m2, e2m1, HiF8, whose finest binades carry 3 bits)
is a multiple of the 4-bit unit ``u`` of its binade, so the open interval ``(a, a + u)`` of the
values with one ``idx`` and ``sticky = 1`` holds no value and no midpoint of the format: every
deterministic rounding mode (monotone, a function of where ``x`` lies between two grid points)
gives one answer on it. :func:`table` holds the 2 x 2^13 answers, computed by
:func:`floatlab.quantize` itself at ``a`` (``sticky = 0``) and at both ends of the interval,
``a + 1 ulp`` and ``a + u - 1 ulp``; where the two ends disagree it returns None and the caller
keeps its own path, so the table never states an answer the quantizer did not give.

:func:`round_float32` looks every element up in one pass: a 10-line C++ loop (built like
:mod:`floatlab.kernels.native`, with the compiler torch.compile uses, into floatlab's cache;
vectorized gathers, about 0.5 ns per value) or, where no compiler is found or
``FLOATLAB_NATIVE=0``, five torch operations (about 4x slower). NaN inputs give a NaN (its
payload is not specified, as for the casts it replaces).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import torch

MANTISSA = 3                       # formats with at most this many mantissa bits
SHIFT = 23 - (MANTISSA + 1)        # bits below the kept ones: 19
SIZE = 1 << (9 + MANTISSA + 2)     # (sign, exponent, 4 mantissa bits, sticky): 16384 entries

SOURCE = r"""
#include <cstdint>
extern "C" void floatlab_lut_round(const uint32_t* __restrict x, float* __restrict y, int64_t n,
                                   const float* __restrict table, int shift) {
    const uint32_t low = (1u << shift) - 1u;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = x[i];
        y[i] = table[((u >> shift) << 1) | (uint32_t)((u & low) != 0u)];
    }
}
"""
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC")
_lock = threading.Lock()
_state: dict[str, object] = {}


@lru_cache(maxsize=64)
def table(spec, mode, saturate: bool) -> torch.Tensor | None:
    """The float32 lookup table of ``quantize(x, spec, mode, saturate)`` for float32 ``x``, or
    None where the answer is not constant on some interval (not a monotone rounding)."""
    from floatlab.ops.api import quantize
    idx = torch.arange(SIZE // 2, dtype=torch.int64) << SHIFT
    low = (1 << SHIFT) - 1
    reps = torch.stack([idx, idx + 1, idx + low]).to(torch.int32).view(torch.float32)
    q = quantize(reps.reshape(-1), spec, mode, saturate or None, None, None, grad="none").view(3, -1)
    q = q.to(torch.float32)
    at, above, top = q[0], q[1], q[2]
    same = (above == top) | (above.isnan() & top.isnan())
    if not bool(same.all()):
        return None
    return torch.stack([at, above], dim=1).reshape(-1).contiguous()


def round_float32(t: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``lut`` looked up for every element of the float32 CPU tensor ``t`` (same shape)."""
    lib = _library()
    if lib is not None:
        x = t.contiguous()
        y = torch.empty(t.shape, dtype=torch.float32)
        lib.floatlab_lut_round(x.data_ptr(), y.data_ptr(), x.numel(), lut.data_ptr(), SHIFT)
        return y
    u = t.view(torch.int32)
    k = (u >> (SHIFT - 1)) & (SIZE - 2)          # (sign, exponent, 4 mantissa bits) * 2
    k |= (u & ((1 << SHIFT) - 1)).ne_(0)          # + sticky
    return lut.index_select(0, k.reshape(-1)).view(t.shape)


# ---- the native loop ---------------------------------------------------------------------------
def _enabled() -> bool:
    return os.environ.get("FLOATLAB_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def _library():
    if not _enabled():
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _state["lib"] = _load()
    return _state["lib"]


def _load():
    from floatlab.kernels.native import _cpu_id, compiler
    cxx = compiler()
    if cxx is None:
        return None
    try:
        from floatlab.cache import cache_dir
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256("\0".join([SOURCE, cxx, version, " ".join(FLAGS), _cpu_id()]).encode()).hexdigest()[:16]
        path = cache_dir() / "native" / f"floatlab_lut_{key}.so"
        if not path.exists():
            _build(cxx, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"floatlab: the table-lookup rounding loop could not be built ({err}); using "
                      "torch operations instead (set FLOATLAB_NATIVE=0 to silence this)",
                      RuntimeWarning, stacklevel=4)
        return None
    fn = lib.floatlab_lut_round
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    fn.restype = None
    return lib


def _build(cxx: str, path: Path) -> None:
    """Compile :data:`SOURCE` to ``path`` atomically (a concurrent build of the same key is harmless)."""
    from floatlab.atomic import umask
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        src = Path(tmpdir) / "lut.cpp"
        src.write_text(SOURCE)
        out = Path(tmpdir) / "lut.so"
        res = subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{Path(cxx).name} failed: {(res.stderr or res.stdout).strip()[:500]}")
        os.chmod(out, 0o777 & ~umask())
        os.replace(out, path)

