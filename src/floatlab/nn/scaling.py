"""Per-tensor scaling: power-of-two scales from the current amax or from an amax history.

The scale ``s = 2^floor(log2(target / amax))`` maps the tensor's amax to at most ``target``
(the format's max, or the element max of a block format). Because ``s`` is a power of two,
``quantize(x * s) / s`` is exact apart from the quantization itself, and a real low-precision
GEMM would apply ``1 / (s_a s_b)`` to its output with no extra rounding.
"""

from __future__ import annotations

import torch

from floatlab.formats.registry import get_format


def scale_target(fmt) -> float:
    """The value a tensor's amax is scaled to: the format's max (block formats: the element's)."""
    spec = get_format(fmt)
    elem = getattr(spec, "element", spec)
    return float(elem.max_value)


def pow2_scale(amax: torch.Tensor, target: float) -> torch.Tensor:
    """``2^floor(log2(target / amax))`` as a float32 scalar tensor; 1 where amax is 0 or not finite."""
    amax = amax.detach().to(torch.float64)
    ok = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(ok, amax, torch.ones_like(amax))
    e = torch.floor(torch.log2(target / safe))
    # log2 can be off by one ulp at exact powers of two: correct with an exact check
    e = torch.where(torch.ldexp(torch.ones_like(e), e.to(torch.int64)) * safe > target, e - 1, e)
    e = e.clamp(-126, 126)
    s = torch.ldexp(torch.ones_like(e), e.to(torch.int64))
    return torch.where(ok, s, torch.ones_like(s)).to(torch.float32)


def amax(x: torch.Tensor) -> torch.Tensor:
    """Largest finite magnitude of ``x`` (0 for an empty or all-non-finite tensor)."""
    if not x.numel():
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        # one pass when every value is finite (the usual case; a NaN or an inf makes the plain
        # amax non-finite, and then the masked one below is taken): the same value, 3x cheaper
        m = x.detach().abs().amax()
        if bool(torch.isfinite(m)):
            return m
    a = x.detach().abs()
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    return a.amax()


def delayed_amax(history: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The amax a delayed scale uses: the history's max, or ``current`` while the history is empty."""
    h = history.max()
    return torch.where(h > 0, h, current.to(history.dtype))


def push(history: torch.Tensor, current: torch.Tensor) -> None:
    """Roll ``history`` (in place) and store ``current`` as its newest entry."""
    with torch.no_grad():
        history.copy_(torch.roll(history, 1))
        history[0] = current.to(history.dtype)


__all__ = ["scale_target", "pow2_scale", "amax", "delayed_amax", "push"]
