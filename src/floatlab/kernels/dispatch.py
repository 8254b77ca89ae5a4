"""The fused fast path behind ``floatlab.quantize``: backend choice and dispatch.

Backends (``backend=`` argument of :func:`floatlab.quantize`, or the ``FLOATLAB_FAST``
environment variable when the argument is None):

========== ============================================================================
``auto``   default: the compiled fast kernel where it supports the case (tensors of fewer
           than 65536 elements run the same kernel uncompiled), the plain path otherwise
           (and everywhere once ``torch.compile`` failed, with one warning)
``compiled`` the compiled kernel; raises if the case is not supported or cannot compile
``eager``  the same kernel run op by op without a compiler (for tests and debugging)
``native`` the native C++ scalar kernel (:mod:`floatlab.kernels.native_scalar`: float32 CPU
           tensors, float formats, modes rne/rna/rnz/sr/sr_half) or, for block formats, the
           native block kernel (:mod:`floatlab.kernels.native_block`: float32 CPU tensors, MX,
           NVFP4 and HiF4, every mode); raises where it does not apply
``plain``  the plain reference path (:mod:`floatlab.plain.scalar`, :mod:`floatlab.plain.block`)
========== ============================================================================

``auto`` runs the native scalar (or block) kernel first wherever it applies (any size, with or without
``out=``; built on first use, ``FLOATLAB_NATIVE=0`` turns it off), then, for integer formats
(int8, int4, fixed point with ``frac_bits >= 0``) in rne/rtz/rup/rdn on float32/float64 CPU
tensors, a few vectorized ATen operations (:func:`quantize_int_aten`: no compilation, which
cost ``floatlab compare`` 5-15 s per integer format in a fresh process), then the compiled kernel.

``FLOATLAB_FAST=0`` (or ``plain``) selects ``plain``, ``FLOATLAB_FAST=eager`` selects ``eager``.

Every backend returns the same bits, with one documented exception: the stochastic modes with
``generator=None``. With a generator, the fast path consumes exactly the plain path's draws
(``torch.rand``/``torch.randint`` from that generator) and returns the same values. Without one,
the fast path hashes (seed, element index) inside the kernel (:mod:`floatlab.kernels.rng`),
seeded from torch's default generator: reproducible under ``torch.manual_seed``, with the same
probabilities (exact to 2^-32, 2^-62 for float64 inputs), but other draws than the plain path.
"""

from __future__ import annotations

import os
import threading
import time
from functools import lru_cache

import torch

from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.integer import IntFormat
from floatlab.kernels import compiler, memory, native_scalar
from floatlab.kernels.rng import draw_seed
from floatlab.kernels.scalar import F32, F64, Plan, quantize_kernel
from floatlab.rounding import RoundingMode as M

BACKENDS = ("auto", "compiled", "eager", "native", "plain")
COMPILE_MIN_NUMEL = 1 << 16   # "auto" runs smaller tensors through the same kernel uncompiled:
                              # compiling a new plan (0.3-10 s) only pays off on large tensors
_ENV = "FLOATLAB_FAST"
_SUPPORTED_TYPES = (FloatFormat, IntFormat, HiF8Format)
_F32_MAX = float(torch.finfo(torch.float32).max)


class FastPathUnsupported(ValueError):
    """The requested fast backend cannot serve this call (the plain path can)."""


def resolve_backend(backend: str | None) -> str:
    """``backend`` validated, or the one ``FLOATLAB_FAST`` selects when it is None."""
    if backend is None:
        env = os.environ.get(_ENV, "").strip().lower()
        if env in ("0", "plain", "off", "false", "no"):
            return "plain"
        if env == "eager":
            return "eager"
        return "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


@lru_cache(maxsize=4096)
def _exact_in(value: float, dtype: torch.dtype) -> bool:
    v = torch.tensor(value, dtype=torch.float64)
    if dtype is torch.float32 and abs(value) > _F32_MAX:
        return True   # beyond float32: becomes inf, which compares like the float64 value
    return float(v.to(dtype).to(torch.float64)) == value


@torch.compiler.disable   # plain Python bookkeeping: never traced into a caller's graph
def scalar_plan(fmt, mode: M, saturate: bool, dtype: torch.dtype, sr_bits: int | None,
                generator) -> Plan | None:
    """The kernel plan for this call, or None where the fast kernel does not apply."""
    if not isinstance(fmt, _SUPPORTED_TYPES):
        return None
    return _plan(fmt, mode, bool(saturate), dtype, sr_bits, generator is None)


@lru_cache(maxsize=1024)
def _plan(fmt, mode: M, saturate: bool, dtype: torch.dtype, sr_bits: int | None,
          no_generator: bool) -> Plan | None:
    layout = F64 if (dtype is torch.float64 and mode is not M.HYBRID) else F32
    consts = [fmt.max_value, fmt.max_negative] + ([] if fmt.has_zero else [fmt.smallest_positive])
    if not all(_exact_in(float(c), layout.float_dtype) for c in consts):
        return None
    rng = "none"
    if mode in (M.SR, M.SR_HALF):
        rng = "hash" if no_generator else "replay"
    return Plan.make(fmt, mode, bool(saturate), layout, dtype, sr_bits, rng)


def draws(p: Plan, shape, device, generator) -> torch.Tensor | None:
    """The random input of the kernel: the plain path's draws (same calls, same order), a seed
    for the in-kernel hash, or None for the deterministic modes."""
    if p.rng == "hash":
        return draw_seed(device)
    if p.rng == "none":
        return None
    if p.mode is M.SR and p.sr_bits is None:
        return torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    if p.mode is M.SR:
        return torch.randint(0, 2 ** p.sr_bits, shape, device=device, generator=generator)
    return torch.randint(0, 2, shape, device=device, generator=generator)


class _AnyDraws:
    rng = "replay"


STOCHASTIC_PLAN = _AnyDraws()     # rng_snapshot's plan where the caller does not know the plan's


def rng_snapshot(p: Plan, generator, device):
    """The random state :func:`draws` is about to consume, for :func:`rng_restore`; None for the
    deterministic modes. A ``backend="compiled"`` call that fails to compile after drawing puts
    it back, so a caller that falls back to another backend draws the same numbers (the bits
    then equal the plain path's, as every backend's must)."""
    if p.rng == "none":
        return None
    if generator is not None:
        return generator, generator.get_state()
    device = torch.device(device)
    if device.type == "cuda":
        return device, torch.cuda.get_rng_state(device)
    return None, torch.random.get_rng_state()


def rng_restore(saved) -> None:
    """Undo the draws since :func:`rng_snapshot` (``saved`` None: nothing was drawn)."""
    if saved is None:
        return
    owner, state = saved
    if isinstance(owner, torch.Generator):
        owner.set_state(state)
    elif isinstance(owner, torch.device):
        torch.cuda.set_rng_state(state, owner)
    else:
        torch.random.set_rng_state(state)


def _kernel(plan: Plan, with_out: bool):
    if with_out:
        def quantize_into(x, rnd, out):
            out.copy_(quantize_kernel(x, rnd, plan))
        return quantize_into

    def quantize_fast(x, rnd):
        return quantize_kernel(x, rnd, plan)
    return quantize_fast


def quantize_scalar(x: torch.Tensor, fmt, mode: M, saturate: bool, generator, sr_bits,
                    out: torch.Tensor | None, backend: str) -> torch.Tensor | None:
    """The fast path for a scalar format, or None when the caller must use the plain path."""
    if backend == "plain":
        return None
    plan = scalar_plan(fmt, mode, saturate, x.dtype, sr_bits, generator)
    if backend in ("auto", "native"):
        y = _quantize_native(x, plan, fmt, mode, saturate, generator, sr_bits, out)
        if y is not None:
            return y
        if backend == "native":
            raise FastPathUnsupported(f"the native kernel does not support {fmt.name!r} with "
                                      f"{mode.value!r} for {x.dtype} inputs on {x.device} "
                                      "(float32 CPU tensors and float formats only), or it "
                                      "could not be built")
    if backend == "auto":
        y = quantize_int_aten(x, fmt, mode, out)
        if y is not None:
            return y
    use_compiler = (backend == "compiled" and x.numel() >= 2) or \
        (backend == "auto" and x.numel() >= COMPILE_MIN_NUMEL)
    if plan is None or (backend == "auto" and not compiler.compile_available()):
        if backend in ("compiled", "eager"):
            raise FastPathUnsupported(f"the fast path does not support {fmt.name!r} with "
                                      f"{mode.value!r} for {x.dtype} inputs")
        return None
    flat = x.reshape(-1)
    saved = rng_snapshot(plan, generator, x.device) if backend == "compiled" else None
    rnd = draws(plan, x.shape, x.device, generator)
    rnd = rnd.reshape(-1) if rnd is not None and rnd.ndim else rnd
    direct = out is not None and out.is_contiguous()
    if use_compiler and out is None:
        out = memory.large_output(x)                  # huge-page backed (see ops/memory.py)
        direct = out is not None
    if not use_compiler:
        y = quantize_kernel(flat, rnd, plan)
    else:
        try:
            if direct:
                compiler.run((plan, True), lambda: _kernel(plan, True), flat, rnd, out.view(-1))
                return out
            y = compiler.run((plan, False), lambda: _kernel(plan, False), flat, rnd)
        except compiler.CompileUnavailable:
            if backend == "compiled":
                rng_restore(saved)                 # the caller's fallback draws these again
                raise
            y = quantize_kernel(flat, rnd, plan)   # same bits; the draws are already taken
    y = y.view(x.shape)
    if out is not None:
        return out.copy_(y)
    return y


def _quantize_native(x, plan, fmt, mode, saturate, generator, sr_bits, out):
    """The native scalar kernel's result (written into ``out`` where given), or None where it
    does not apply: not float32 on the CPU, a format or mode it lacks, inside torch.compile's
    tracing, or no library (``FLOATLAB_NATIVE=0``, no compiler, a failed build)."""
    if (plan is None or x.dtype is not torch.float32 or x.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return None
    nplan = native_scalar.plan(fmt, mode, bool(saturate), sr_bits, plan.rng)
    if nplan is None or not native_scalar.available():
        return None
    rnd = draws(plan, x.shape, x.device, generator)       # the compiled/plain path's draws
    src = x.contiguous()
    direct = out is not None and out.is_contiguous()
    dst = out if direct else memory.large_output(x)
    if dst is None:
        dst = torch.empty(x.shape, dtype=x.dtype)
    native_scalar.round_into(src, dst, nplan, rnd if rnd is None or not rnd.ndim else rnd.reshape(-1))
    if out is not None and not direct:
        return out.copy_(dst)
    return dst


_INT_ATEN_MODES = {M.RNE: torch.round, M.RTZ: torch.trunc, M.RUP: torch.ceil, M.RDN: torch.floor}
_INT_ATEN_MAX_FRAC = 64           # 2^frac_bits and 2^-frac_bits are float32 values: scaling is exact


def quantize_int_aten(x: torch.Tensor, fmt, mode: M, out: torch.Tensor | None) -> torch.Tensor | None:
    """An integer format by vectorized ATen operations, or None where this does not apply.

    ``x`` (any shape, float32 or float64, on the CPU; any strides) rounded into an
    :class:`IntFormat` with ``0 <= frac_bits <= 64`` in rne/rtz/rup/rdn: ``clamp(round(x * 2^f),
    imin, imax) * 2^-f + 0``, bit for bit the plain path's values (tests/test_dispatch_int.py):
    the scalings by powers of two are exact (an overflow to +-inf only happens far beyond the
    range and clamps like any overflow; integer formats always saturate), ``torch.round``
    rounds ties to even, ``+ 0`` turns -0 into +0 (integer formats have no negative zero) and a
    NaN stays NaN. Returns ``out`` (written, any strides) or a new tensor of ``x``'s shape."""
    op = _INT_ATEN_MODES.get(mode)
    if (op is None or type(fmt) is not IntFormat or not 0 <= fmt.frac_bits <= _INT_ATEN_MAX_FRAC
            or x.dtype not in (torch.float32, torch.float64) or x.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return None
    f = fmt.frac_bits
    lo, hi = -fmt.max_negative * 2.0 ** f, fmt.max_value * 2.0 ** f     # the integer range
    y = torch.empty_like(x) if out is None else out
    if f:
        torch.mul(x, 2.0 ** f, out=y)
        op(y, out=y)
    else:
        op(x, out=y)
    y.clamp_(lo, hi)
    if f:
        y.mul_(2.0 ** -f)
    return y.add_(0.0)


_prepared: dict[str, float] = {}        # native library -> seconds its background build/load took


def prepare_native(formats) -> threading.Thread | None:
    """Build (or load) the native libraries that quantizing float32 CPU tensors into ``formats``
    (format objects or names) will run, in one background thread, in the order the formats
    first need them: the scalar kernel (float formats, HiF8), the block kernel (MX, NVFP4,
    HiF4). On a fresh machine each is a C++ build of seconds (:mod:`floatlab.kernels.native`),
    which then runs on a free core while the caller loads its model, instead of at its first
    quantize call; later processes only load the cached files (milliseconds). A quantize call
    that needs a library meanwhile waits for it (the library's own lock), so results are the
    same with or without this. Returns the started thread (not a daemon: a process that ends
    early, e.g. on a refused input, finishes the build and caches it rather than leave a
    half-written file); None when there is nothing
    to build (no such format, ``FLOATLAB_NATIVE=0``, or ``FLOATLAB_FAST`` selects another
    backend). :func:`native_preparation` says how long each took. Names that are not floatlab
    formats (weight codecs) are skipped."""
    from floatlab.formats.block import BlockFormat
    from floatlab.formats.registry import get_format
    from floatlab.kernels import native, native_block

    if resolve_backend(None) != "auto" or not native.enabled():
        return None
    wanted = []
    for f in formats:
        try:
            fmt = get_format(f)
        except (ValueError, KeyError, TypeError):     # a weight codec's name: nothing to build here
            continue
        lib = ("native block kernel", native_block.library) if isinstance(fmt, BlockFormat) else \
            ("native scalar kernel", native_scalar.library) if isinstance(fmt, (FloatFormat, HiF8Format)) else None
        if lib is not None and lib not in wanted:
            wanted.append(lib)
    if not wanted:
        return None

    def build() -> None:
        for name, library in wanted:
            t0 = time.perf_counter()
            library()
            _prepared[name] = time.perf_counter() - t0
    thread = threading.Thread(target=build, name="floatlab-native-build")
    thread.start()
    return thread


def native_preparation() -> dict[str, float]:
    """Seconds each library of :func:`prepare_native` took to build or load (in this process)."""
    return dict(_prepared)
