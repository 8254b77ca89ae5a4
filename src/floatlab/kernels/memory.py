"""Output buffers for the fast kernels: large CPU outputs are backed by transparent huge pages.

A fresh 64 MB output costs more in page faults (16,384 of them at 4 KiB) than the quantization
itself: on these machines ``x.clone()`` of 2^24 float32 values takes about 18 ms, of which about
14 ms are first-touch faults. Linux can back a region with 2 MiB pages when asked
(``madvise(MADV_HUGEPAGE)``, honoured when ``/sys/kernel/mm/transparent_hugepage/enabled`` is
``madvise`` or ``always``), which cuts the faults 512-fold. :func:`empty_output` asks for that on
the 2 MiB-aligned interior of every CPU output of at least :data:`HUGE_MIN_BYTES`; anywhere the
call is unavailable or refused it is an ordinary ``torch.empty``. Only the memory the kernel is
about to write is advised; nothing else in the process changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

HUGE_MIN_BYTES = 8 << 20
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux") or os.environ.get("FLOATLAB_HUGEPAGES", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def large_output(like: torch.Tensor) -> torch.Tensor | None:
    """A huge-page backed output for a result of ``like``'s shape and dtype, or None where the
    result is under :data:`HUGE_MIN_BYTES` or not on the CPU (an ordinary allocation is fine)."""
    if like.device.type != "cpu" or like.numel() * like.element_size() < HUGE_MIN_BYTES:
        return None
    return empty_output(like)


def empty_output(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized contiguous tensor of ``like``'s shape (and ``dtype``), on its device."""
    out = torch.empty(like.shape, dtype=dtype or like.dtype, device=like.device)
    if _madvise is not None and out.device.type == "cpu" and out.nbytes >= HUGE_MIN_BYTES:
        start = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (out.data_ptr() + out.nbytes) & ~(_HUGE_PAGE - 1)
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)   # advice only: a refusal changes nothing
    return out
