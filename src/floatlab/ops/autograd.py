"""The gradient of :func:`floatlab.quantize`: a straight-through estimator, defined once.

Rounding is piecewise constant, so its true derivative is zero almost everywhere and useless for
training. floatlab defines the gradient of ``y = quantize(x, fmt)`` with respect to ``x`` by the
straight-through estimator (STE; Bengio, Leonard and Courville 2013, arXiv 1308.3432), the same for
every format, rounding mode and backend (plain, eager, compiled, native), because the rounding
runs outside autograd and only this module's rule is recorded:

========== ======================================================================================
``grad=``  ``dL/dx``
========== ======================================================================================
``"ste"``  ``dL/dy`` everywhere (the default): the rounding is treated as the identity
``"clipped"`` ``dL/dy`` where ``x`` lies in the range the format holds without clamping, ``0``
           elsewhere (and at NaN/Inf inputs): the clipped STE of LSQ (Esser et al. 2020, arXiv
           1902.08153) and PACT. For scalar formats the range is ``[-max_negative, max_value]``
           (:class:`~floatlab.FInfo`); for block formats it is per element,
           ``|x| <= s * elem_max`` with ``s`` the element's own block scale (all levels: NVFP4's
           tensor scale, HiF4's micro-exponents), so an element clipped by the OCP FLOOR rule gets
           no gradient. A value just above the limit that rounds down to the maximum counts as
           clipped, as in LSQ, where the clamp comes before the rounding.
``"none"`` no gradient: the result is detached (``requires_grad=False``)
========== ======================================================================================

Gradients with respect to a scale follow from ordinary autograd around the call: with
``y = quantize(x / s, "int4", grad="clipped") * s`` the gradient reaching ``s`` is LSQ's
(``q - x/s`` inside the range, ``+-max`` outside), which is what learned step sizes and
learnable clipping (OmniQuant's LWC) need.

The gradient is only recorded when ``x.requires_grad`` and grad mode is on; otherwise nothing
here runs. ``encode`` and ``decode`` produce and read integer codes and carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GRAD_MODES = ("ste", "clipped", "none")


def check_grad(grad) -> str:
    """``grad`` validated (one of :data:`GRAD_MODES`)."""
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {', '.join(map(repr, GRAD_MODES))}, got {grad!r} "
                         "(ste: straight-through; clipped: zero outside the format's range; "
                         "none: no gradient)")
    return grad


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantizer (outside autograd); backward: ``dL/dy`` (times the mask)."""

    @staticmethod
    def forward(ctx, x, forward, clip_mask):
        if clip_mask is None:
            ctx.has_mask = False
            return forward(x.detach())
        values, mask = clip_mask(x.detach())
        ctx.has_mask = True
        ctx.save_for_backward(mask)
        return values

    @staticmethod
    def backward(ctx, grad_y):
        if not ctx.has_mask:
            return grad_y, None, None
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad_y, torch.zeros_like(grad_y)), None, None


def straight_through(x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor],
                     grad: str, clip_mask: Callable[[torch.Tensor], tuple] | None = None
                     ) -> torch.Tensor:
    """Run ``forward(x)`` and attach the gradient rule ``grad`` to the result.

    Args:
        x: the input; the rule is recorded only if ``x.requires_grad`` and grad mode is on.
        forward: the quantizer without autograd: float tensor in, same shape and dtype out.
        grad: ``"ste"``, ``"clipped"`` or ``"none"`` (see the module docstring).
        clip_mask: for ``"clipped"``: ``x -> (values, mask)``, the quantized values and the boolean
            mask of the elements inside the format's range, from one rounding (it replaces
            ``forward``).
    """
    if grad == "none" or not (x.requires_grad and torch.is_grad_enabled()):
        with torch.no_grad():
            return forward(x.detach())
    return _StraightThrough.apply(x, forward, clip_mask if grad == "clipped" else None)
