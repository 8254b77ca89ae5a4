"""The one place where a format enters the training code: fake-quantize one GEMM operand.

Everything goes through :func:`floatlab.quantize` (the exact path), except a few casts that
PyTorch performs natively and that are *tested bit-exact* against ``floatlab.quantize``
(``tests/test_nn_quantizer.py``): bf16 and fp16 with ties-to-even, and e4m3 / e5m2 with
ties-to-even and saturation. They only save time; the numbers are the same.
"""

from __future__ import annotations

import torch

import floatlab
from floatlab.formats.registry import get_format

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
                  generator: torch.Generator | None = None, native: bool = True) -> torch.Tensor:
    """``floatlab.quantize(x, fmt, rounding, saturate, generator, axis=axis)`` (block options only
    for block formats), through a native cast where one is exactly equal."""
    if native and x.dtype != torch.float64:  # torch casts float64 through float32: double rounding
        dt, mx = _native_dtype(fmt, rounding, saturate)
        if dt is not None:
            y = x.to(dt).to(x.dtype)
            # saturate: overflow and +-Inf become +-max (as floatlab.quantize(saturate=True))
            over = ~torch.isnan(x) & ~torch.isfinite(y)
            if bool(over.any()):
                y = torch.where(over, torch.copysign(torch.full_like(y, mx), x), y)
            return y
    spec = get_format(fmt)
    kw = {"axis": axis} if spec.kind == "block" else {}
    stochastic = rounding in ("sr", "sr_half", "hybrid")
    return floatlab.quantize(x, spec, rounding=rounding, saturate=saturate,
                             generator=generator if stochastic else None, **kw)
