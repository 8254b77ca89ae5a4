"""The one place where a format enters the training code: fake-quantize one GEMM operand.

Everything goes through :func:`floatlab.quantize`, except a few casts that PyTorch performs
natively and that are *tested bit-exact* against ``floatlab.quantize``
(``tests/test_nn_quantizer.py``): bf16 and fp16 with ties-to-even, and e4m3 / e5m2 with
ties-to-even and saturation. They only save time; the numbers are the same.

A training loop quantizes the same shapes thousands of times, so operands of
:data:`COMPILE_MIN_NUMEL` elements or more ask for the compiled kernel (``backend="compiled"``)
even below the size where ``floatlab.quantize``'s default starts compiling; a case the fast path
does not cover (or a machine without a compiler) falls back to the default, once per case.
``FLOATLAB_FAST`` set to ``0``/``plain`` or ``eager`` is respected.
"""

from __future__ import annotations

import torch

import floatlab
from floatlab.formats.registry import get_format
from floatlab.kernels.dispatch import FastPathUnsupported, resolve_backend
from floatlab.kernels.compiler import CompileUnavailable
from floatlab.ops.autograd import check_grad, straight_through
from floatlab.rounding import parse_rounding

COMPILE_MIN_NUMEL = 1024
_NOT_COMPILED: set = set()      # (format, rounding, saturate, dtype, generator?) without a compiled kernel
_NATIVE = {"bf16": torch.bfloat16, "fp16": torch.float16,
           "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _native_dtype(fmt: str, rounding, saturate: bool):
    name = get_format(fmt).name
    dt = _NATIVE.get(name)
    if dt is None or rounding not in (None, "rne"):
        return None, None
    if not saturate:
        return None, None
    return dt, float(get_format(name).max_value)


def fake_quantize(x: torch.Tensor, fmt: str, rounding=None, saturate: bool = True, axis: int = -1,
                  generator: torch.Generator | None = None, native: bool = True,
                  grad: str = "ste") -> torch.Tensor:
    """``floatlab.quantize(x, fmt, rounding, saturate, generator, axis=axis, grad=grad)`` (block
    options only for block formats), through a native cast where one is exactly equal.

    The gradient follows :func:`floatlab.quantize`'s contract (:mod:`floatlab.ops.autograd`) on
    every path, the native casts included."""
    if rounding is not None:   # one spelling per mode: "SR"/"stochastic" draw from `generator` too
        rounding = parse_rounding(rounding).value
    if native and x.dtype != torch.float64:  # torch casts float64 through float32: double rounding
        dt, mx = _native_dtype(fmt, rounding, saturate)
        if dt is not None:
            def cast(v):
                # saturate: overflow and +-Inf become +-max (as floatlab.quantize(saturate=True)).
                # Clamping first gives the same bits as casting and then replacing the non-finite
                # results of non-NaN inputs by copysign(max, v): +-max is exact in the format,
                # values in [-max, max] and NaN pass the clamp unchanged (checked on all 2^32
                # float32 inputs for bf16, fp16, e4m3, e5m2); one pass instead of six
                return v.clamp(-mx, mx).to(dt).to(v.dtype)

            def clipped(v):
                return cast(v), (v >= -mx) & (v <= mx)
            return straight_through(x, cast, check_grad(grad), clipped)
    spec = get_format(fmt)
    kw = {"axis": axis} if spec.kind == "block" else {}
    stochastic = rounding in ("sr", "sr_half", "hybrid")
    gen = generator if stochastic else None
    key = (spec, rounding, saturate, x.dtype, gen is None)
    if x.numel() >= COMPILE_MIN_NUMEL and key not in _NOT_COMPILED and resolve_backend(None) == "auto":
        try:
            return floatlab.quantize(x, spec, rounding=rounding, saturate=saturate, generator=gen,
                                     backend="compiled", grad=grad, **kw)
        except (FastPathUnsupported, CompileUnavailable):
            _NOT_COMPILED.add(key)
    return floatlab.quantize(x, spec, rounding=rounding, saturate=saturate, generator=gen, grad=grad, **kw)
