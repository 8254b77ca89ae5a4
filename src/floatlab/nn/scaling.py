"""Per-tensor scaling: power-of-two scales from the current amax or from an amax history.

The scale ``s = 2^floor(log2(target / amax))`` maps the tensor's amax to at most ``target``
(the format's max, or the element max of a block format). Because ``s`` is a power of two,
``quantize(x * s) / s`` is exact apart from the quantization itself, and a real low-precision
GEMM would apply ``1 / (s_a s_b)`` to its output with no extra rounding.
"""

from __future__ import annotations

import math
from array import array

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


def pow2_scale_value(amax: float, target: float) -> float:
    """:func:`pow2_scale` on a Python float, exactly: the largest ``2^e`` with ``2^e * amax <=
    target``, ``e`` clamped to [-126, 126]; 1.0 where amax is 0 or not finite.

    With ``amax = ma * 2^ea`` and ``target = mt * 2^et`` (``frexp``: ``ma, mt`` in [0.5, 1)),
    ``target / amax = (mt / ma) * 2^(et - ea)`` where ``mt / ma`` lies in (0.5, 2): its floor
    log2 is ``et - ea`` when ``mt >= ma``, one less otherwise. No rounding anywhere, so this is
    :func:`pow2_scale`'s value (its float64 ``log2`` with the exact correction step) on every
    input; a training step calls it per operand, and the tensor version costs a dozen small
    operations there."""
    if not (math.isfinite(amax) and amax > 0):
        return 1.0
    ma, ea = math.frexp(amax)
    mt, et = math.frexp(target)
    e = et - ea - (0 if mt >= ma else 1)
    return math.ldexp(1.0, min(max(e, -126), 126))


def amax(x: torch.Tensor) -> torch.Tensor:
    """Largest finite magnitude of ``x`` (0 for an empty or all-non-finite tensor)."""
    if not x.numel():
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if x.device.type == "cpu":
        # one pass when every value is finite (the usual case; a NaN or an inf makes the plain
        # amax non-finite, and then the masked one below is taken): the same value, 3x cheaper.
        # max(-min, max) is max |x| without the abs() temporary (2.5x cheaper again); abs() of it
        # only turns a -0.0 (every value a zero) into abs().amax()'s +0.0
        mn, mx = x.detach().aminmax()
        m = torch.maximum(-mn, mx).abs()
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


def delayed_amax_and_push(history: torch.Tensor, current: torch.Tensor | float) -> float:
    """``float(delayed_amax(history, current))`` followed by ``push(history, current)``, on
    Python floats for a CPU history (the same values: a max over float32 numbers and a copy;
    a NaN in the history makes its max NaN, as ``history.max()`` does). One small tensor
    operation instead of six per operand. ``current`` may be a Python float (a CPU history only),
    taken as rounded to the history's dtype."""
    if history.device.type != "cpu":
        current = torch.as_tensor(current, device=history.device)
        ref = float(delayed_amax(history, current))
        push(history, current)
        return ref
    if isinstance(current, torch.Tensor):
        cur = float(current.to(history.dtype))
    elif history.dtype is torch.float32:
        cur = array("f", [current])[0]      # the C cast: round to nearest even, as .to(float32)
    else:
        cur = float(torch.tensor(current, dtype=torch.float64).to(history.dtype))
    old = history.tolist()
    h = math.nan if any(v != v for v in old) else max(old)
    with torch.no_grad():
        history.copy_(torch.tensor([cur, *old[:-1]], dtype=history.dtype))
    return h if h > 0 else cur


__all__ = ["scale_target", "pow2_scale", "pow2_scale_value", "amax", "delayed_amax", "push",
           "delayed_amax_and_push"]
