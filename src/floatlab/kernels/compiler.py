"""Compiling the fast kernels: one ``torch.compile``'d function per plan, with a safe fallback.

* Each plan (format, mode, dtypes, ...) gets its own Python code object, so that dynamo's
  per-code-object cache (``recompile_limit``, 8 by default) never fills up across formats and a
  cache hit costs one guard check. The kernels see 1-D views whose size is marked dynamic
  (``mark_dynamic``) while the plan's constants stay static, so a new shape never recompiles.
* Inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``)
  make the first call of a plan in a fresh process cheap once any process has compiled it.
* If compiling fails (no C++ compiler, an unsupported platform), :func:`run` raises
  :class:`CompileUnavailable`; the dispatcher warns once and uses the plain path from then on.
"""

from __future__ import annotations

import os
import threading
import time
import types
import warnings
from collections.abc import Callable, Hashable

import torch

_lock = threading.Lock()
_compiled: dict[Hashable, Callable] = {}
_failed: list[str] = []          # the first failure's message; non-empty disables compilation
_first_calls: list[tuple[str, float]] = []   # (kernel, seconds of its first call: the compile)


class CompileUnavailable(RuntimeError):
    """torch.compile could not build a kernel on this machine."""


def compile_available() -> bool:
    """False once a compilation failed in this process (or ``FLOATLAB_NO_COMPILE=1``)."""
    return not _failed and os.environ.get("FLOATLAB_NO_COMPILE", "0") in ("", "0")


def _fresh_function(fn: Callable, key: Hashable) -> Callable:
    """A copy of ``fn`` with its own code object (dynamo caches compiled code per code object)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{abs(hash(key)) % 10 ** 12}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def compiled(key: Hashable, make: Callable[[], Callable]) -> Callable:
    """The compiled version of ``make()`` for ``key`` (built on first use, then cached)."""
    fn = _compiled.get(key)
    if fn is None:
        with _lock:
            fn = _compiled.get(key)
            if fn is None:
                fn = torch.compile(_fresh_function(make(), key), fullgraph=True)
                _compiled[key] = fn
    return fn


def run(key: Hashable, make: Callable[[], Callable], *args):
    """Call the compiled kernel for ``key``; :class:`CompileUnavailable` if compiling fails.

    Inside a caller's own ``torch.compile`` region the kernel body is traced into the caller's
    graph instead (no nested compilation).
    """
    if torch.compiler.is_compiling():
        return make()(*args)
    if not compile_available():
        raise CompileUnavailable(_failed[0] if _failed else "FLOATLAB_NO_COMPILE is set")
    first = key not in _compiled
    fn = compiled(key, make)
    for a in args:   # the leading size is symbolic (plan constants and block sizes stay static)
        if isinstance(a, torch.Tensor) and a.ndim:
            torch._dynamo.mark_dynamic(a, 0)
    t0 = time.perf_counter()
    try:
        y = fn(*args)
        if first:
            _first_calls.append((describe(key), time.perf_counter() - t0))
        return y
    except Exception as err:  # noqa: BLE001 - any backend failure means: no compiler here
        if _is_compile_error(err):
            _failed.append(f"{type(err).__name__}: {err}".splitlines()[0][:300])
            warnings.warn(f"floatlab: torch.compile is unavailable ({_failed[0]}); using the "
                          "plain path from now on (set FLOATLAB_FAST=0 to silence this)",
                          RuntimeWarning, stacklevel=3)
            raise CompileUnavailable(_failed[0]) from err
        raise


def _is_compile_error(err: Exception) -> bool:
    """A missing or broken toolchain (not a bug in a kernel, which must surface in tests)."""
    from torch._dynamo.exc import BackendCompilerFailed
    names = {type(e).__name__ for e in (err, err.__cause__) if e is not None}
    toolchain = {"CppCompileError", "InvalidCxxCompiler", "CalledProcessError", "FileNotFoundError"}
    return isinstance(err, BackendCompilerFailed) or bool(names & toolchain)


def describe(key: Hashable) -> str:
    """A short name for a kernel key: its formats and modes, ``out=`` where it writes into one
    (``"int8 rne out="``, ``"hif4 rne hif4 elements"``)."""
    out = []
    for part in key if isinstance(key, tuple) else (key,):
        fmt = getattr(part, "fmt", None)
        if fmt is not None:
            mode = getattr(part, "mode", None) or getattr(getattr(part, "elem", None), "mode", None)
            out.append(" ".join([str(getattr(fmt, "name", fmt))] + ([mode.value] if mode is not None else [])))
        elif part is True:
            out.append("out=")
        elif part is not False:
            out.append(str(part))
    return " ".join(out)


def first_calls() -> list[tuple[str, float]]:
    """``(kernel, seconds)`` of each kernel compiled in this process, in order: the seconds of
    its first call, which traces and compiles it (or loads it from inductor's cache) and runs it
    once (``floatlab compare --profile`` prints them)."""
    return list(_first_calls)


def reset() -> None:
    """Forget compiled kernels and earlier failures (tests use it)."""
    with _lock:
        _compiled.clear()
        _failed.clear()
        _first_calls.clear()
