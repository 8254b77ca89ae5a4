"""Native kernels: small C++ sources compiled on first use, for what inductor cannot vectorize.

Today this is HiFloat4's scale pass (:func:`hif4_scales`, source ``native_hif4.cpp``). Its
maxima over 4-element subgroups and pairs of them, and their broadcast back to the elements,
are sub-vector work: inductor emits scalar loops for it (about 15 ms of scales and 5 ms of
spreading for 2^24 values on these machines), while lane shuffles do it in one vectorized pass.
The element rounding stays in the compiled kernel (:func:`floatlab.kernels.block.hif4_elements`),
so every rounding mode keeps a single implementation.

* Built with the C++ compiler torch.compile itself uses on CPU (``$CXX``, else ``g++``, ``c++``
  or ``clang++``), ``-O3 -march=native -ffp-contract=off``, once per source, compiler and CPU
  into ``$FLOATLAB_CACHE/native`` (:mod:`floatlab.cache`); later processes load the file
  (milliseconds). The first build takes about half a second.
* Called through ``ctypes`` (which releases the GIL) on slices of the blocks in
  ``torch.get_num_threads()`` threads.
* Anywhere the build or load fails, or with ``FLOATLAB_NATIVE=0``, :func:`hif4_scales` returns
  None and the caller runs its compiled kernels instead (same results, slower), with one warning
  when a compiler was found but failed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from floatlab.atomic import umask
from floatlab.cache import cache_dir
from floatlab.kernels import memory

SOURCE = Path(__file__).with_name("native_hif4.cpp")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c++17",
         "-shared", "-fPIC", "-Wno-psabi")
MIN_BLOCKS_PER_THREAD = 2048      # smaller calls run on the calling thread
_lock = threading.Lock()
_state: dict[str, object] = {}    # "lib": the library or None; "pool", "pid", "workers": threads


def enabled() -> bool:
    return os.environ.get("FLOATLAB_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def compiler() -> str | None:
    """The C++ compiler to build with, or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _sources(source: Path) -> list[str]:
    """The text of ``source`` and of the headers beside it that it includes (``#include "x"``),
    so a header's change rebuilds every library that uses it."""
    text = source.read_text()
    headers = re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.MULTILINE)
    return [text] + [(source.parent / h).read_text() for h in sorted(set(headers))]


def library_path(cxx: str, source: Path = SOURCE, stem: str = "floatlab_native",
                 flags: tuple[str, ...] = FLAGS) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([*_sources(source), cxx, version, " ".join(flags),
                                    _cpu_id()]).encode()).hexdigest()[:16]
    return cache_dir() / "native" / f"{stem}_{key}.so"


def _build(cxx: str, path: Path, source: Path = SOURCE, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile ``source`` to ``path`` (atomically: a concurrent build of the same key is harmless),
    with the mode a compiler gives its output (``0o777`` minus the umask: 0755 by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *flags, str(source), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{Path(cxx).name} failed: {(res.stderr or res.stdout).strip()[:500]}")
        os.chmod(tmp, 0o777 & ~umask())      # as a compiler's own output (mkstemp made it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_and_load(source: Path, stem: str, flags: tuple[str, ...], what: str,
                   signatures: dict, stacklevel: int = 5,
                   instead: str = "the compiled kernels") -> ctypes.CDLL | None:
    """``source`` compiled on first use (cached, see :func:`library_path`) and loaded, each
    function of ``signatures`` (name -> (argtypes, restype)) declared; None without a compiler,
    or with one warning naming ``what`` (and ``instead``, what runs then) where the build or
    load fails."""
    cxx = compiler()
    if cxx is None:
        return None
    try:
        path = library_path(cxx, source, stem, flags)
        if not path.exists():
            _build(cxx, path, source, flags)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"floatlab: the {what} could not be built ({err}); using "
                      f"{instead} instead (set FLOATLAB_NATIVE=0 to silence this)",
                      RuntimeWarning, stacklevel=stacklevel)
        return None
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def loaded_once(state: dict, lock: threading.Lock, load) -> ctypes.CDLL | None:
    """``state["lib"]``, set by ``load()`` on the first call (once, under ``lock``); None with
    ``FLOATLAB_NATIVE=0``."""
    if not enabled():
        return None
    if "lib" not in state:
        with lock:
            if "lib" not in state:
                state["lib"] = load()
    return state["lib"]


_SIGNATURES = {"floatlab_hif4_scales": ([ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4, None)}


def library() -> ctypes.CDLL | None:
    """The loaded native library (built on first use), or None where it is unavailable."""
    return loaded_once(_state, _lock, lambda: build_and_load(SOURCE, "floatlab_native", FLAGS,
                                                             "native kernels", _SIGNATURES, 6))


def _pool(workers: int) -> ThreadPoolExecutor:
    """Worker threads, recreated after a fork (a child inherits the object but not its threads)."""
    with _lock:
        if _state.get("pid") != os.getpid() or _state.get("workers", 0) < workers:
            _state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floatlab-native")
            _state["pid"], _state["workers"] = os.getpid(), workers
        return _state["pool"]  # type: ignore[return-value]


def _parallel(fn, nb: int, chunk_args) -> bool:
    """Run ``fn(*chunk_args(start, count))`` over slices of ``nb`` blocks, in threads; whether
    any call returned a true value (a kernel's flag: NaN refused, a poisoned block)."""
    threads = max(1, min(torch.get_num_threads(), nb // MIN_BLOCKS_PER_THREAD))
    step = -(-nb // threads)
    if threads == 1:
        return bool(fn(*chunk_args(0, nb)))
    futures = [_pool(threads).submit(fn, *chunk_args(s, min(step, nb - s))) for s in range(0, nb, step)]
    return any([bool(f.result()) for f in futures])


def hif4_scales(xb: torch.Tensor):
    """HiFloat4's scales for contiguous float32 CPU blocks ``xb`` (nb, 64):
    (poisoned (nb, 1) bool, r (nb, 1), S1 (nb, 1), per-element shift (nb, 64) int8), the values
    of ``hif4_spread`` over :func:`floatlab.kernels.block.hif4_scales` on every block that is
    not poisoned. None where the native library is unavailable or ``xb`` does not qualify."""
    if (xb.device.type != "cpu" or xb.dtype is not torch.float32 or xb.ndim != 2
            or xb.shape[1] != 64 or not xb.is_contiguous() or torch.compiler.is_compiling()):
        return None
    lib = library()
    if lib is None:
        return None
    nb = xb.shape[0]
    bad = torch.empty((nb, 1), dtype=torch.bool)
    r = torch.empty((nb, 1), dtype=torch.float32)
    s1 = torch.empty((nb, 1), dtype=torch.float32)
    shift = memory.empty_output(xb, torch.int8)
    ptr = [t.data_ptr() for t in (xb, bad, r, s1, shift)]
    _parallel(lib.floatlab_hif4_scales, nb,
              lambda s, n: (ptr[0] + 256 * s, n, ptr[1] + s, ptr[2] + 4 * s, ptr[3] + 4 * s, ptr[4] + 64 * s))
    return bad, r, s1, shift
