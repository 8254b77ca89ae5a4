"""Binary and ternary weight quantizers with explicit straight-through gradients.

Small objects in the spirit of larq's and brevitas' quantizers, used by :class:`~floatlab.nn.QLinear`
and :class:`~floatlab.nn.QConv2d` alike when a recipe names ``"binary"`` or ``"ternary"`` as the
format of a weight operand, and usable on their own (``binarize(w)``, ``ternarize(w)``).

A weight ``W`` of ``C_out`` output channels is viewed as ``(C_out, K)`` (``K`` = in_features, or
``C_in/groups * kh * kw`` for a convolution); ``a`` is one positive scale per output channel:

============ ============================================================= ==========================
quantizer    values                                                        scale ``a`` (per channel)
============ ============================================================= ==========================
``binary``   ``a * sign(w)``, ``sign(0) = +1``                             ``mean |w|`` over ``K``
                                                                           (XNOR-Net, Rastegari et al.
                                                                           2016, arXiv 1603.05279)
``ternary``  ``a * sign(w)`` where ``|w| > t``, else ``0``;                ``mean |w|`` over the
             ``t = 0.7 * mean |w|`` over ``K`` (TWN's rule, Li, Zhang and  weights with ``|w| > t``
             Liu 2016, arXiv 1605.04711, eq. 9)                            (TWN eq. 10); ``0`` when
                                                                           none is (the channel is 0)
============ ============================================================= ==========================

Gradients (the latent full-precision weights are what the optimizer updates):

* ``"ste"``: ``dL/dw = dL/dq`` (BinaryConnect's straight-through estimator, Courbariaux et al.
  2015, arXiv 1511.00363); the scale is treated as a constant (no gradient flows through ``a``).
* ``"clipped"``: ``dL/dw = dL/dq * 1{|w| <= 1}`` (the hardtanh STE of BNN, Hubara et al. 2016,
  arXiv 1602.02830): a latent weight that has run beyond ``+-1`` stops moving outward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floatlab.ops.autograd import straight_through

CLIP = 1.0          # the clipped STE passes the gradient where |w| <= CLIP
TWN_RATIO = 0.7     # ternary threshold t = TWN_RATIO * mean|w|


def _per_channel_mean(x: torch.Tensor, axis: int) -> torch.Tensor:
    # accumulated in float64 (exact for float32 weights of any layer size in practice), so the
    # scale does not depend on the memory layout (W or W^T) the sum ran over
    return x.to(torch.float64).mean(dim=axis, keepdim=True).to(x.dtype)


@dataclass(frozen=True)
class BinaryWeight:
    """``{-a, +a}`` per output channel; ``axis`` is the reduction (input) axis of the weight."""

    name: str = "binary"
    bits: float = 1.0

    def values(self, w: torch.Tensor, axis: int = -1) -> torch.Tensor:
        a = _per_channel_mean(w.abs(), axis)
        return torch.where(w >= 0, a, -a)

    def __call__(self, w: torch.Tensor, axis: int = -1, grad: str = "ste") -> torch.Tensor:
        return _apply(self, w, axis, grad)


@dataclass(frozen=True)
class TernaryWeight:
    """``{-a, 0, +a}`` per output channel with TWN's threshold ``t = ratio * mean|w|``."""

    name: str = "ternary"
    bits: float = 1.58496250072   # log2(3)
    ratio: float = TWN_RATIO

    def threshold(self, w: torch.Tensor, axis: int = -1) -> torch.Tensor:
        return self.ratio * _per_channel_mean(w.abs(), axis)

    def values(self, w: torch.Tensor, axis: int = -1) -> torch.Tensor:
        mag = w.abs()
        keep = mag > self.threshold(w, axis)
        n = keep.sum(dim=axis, keepdim=True)
        total = (mag.to(torch.float64) * keep).sum(dim=axis, keepdim=True)
        a = torch.where(n > 0, total / n.clamp_min(1), torch.zeros_like(total)).to(w.dtype)
        return torch.where(keep, torch.where(w > 0, a, -a), torch.zeros_like(w))

    def __call__(self, w: torch.Tensor, axis: int = -1, grad: str = "ste") -> torch.Tensor:
        return _apply(self, w, axis, grad)


def clip_mask(w: torch.Tensor) -> torch.Tensor:
    """Where the clipped STE passes the gradient: ``|w| <= 1``."""
    return w.abs() <= CLIP


def _apply(q, w: torch.Tensor, axis: int, grad: str) -> torch.Tensor:
    if grad not in ("ste", "clipped", "none"):
        raise ValueError(f"grad must be 'ste', 'clipped' or 'none', got {grad!r}")
    if not w.is_floating_point():
        raise TypeError(f"{q.name} quantizes floating tensors, got {w.dtype}")
    return straight_through(w, lambda v: q.values(v, axis),
                            grad, lambda v: (q.values(v, axis), clip_mask(v)))


QUANTIZERS = {"binary": BinaryWeight(), "ternary": TernaryWeight()}


def get_quantizer(name: str):
    """The weight quantizer called ``name`` (``"binary"`` or ``"ternary"``)."""
    try:
        return QUANTIZERS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown weight quantizer {name!r}: choose from {', '.join(QUANTIZERS)}") from None


def binarize(w: torch.Tensor, axis: int = -1, grad: str = "ste") -> torch.Tensor:
    """``a * sign(w)`` with ``a = mean|w|`` along ``axis`` (keepdim); gradient ``grad``
    (``"ste"``, ``"clipped"``: zero where ``|w| > 1``, ``"none"``). Same shape and dtype."""
    return QUANTIZERS["binary"](w, axis, grad)


def ternarize(w: torch.Tensor, axis: int = -1, grad: str = "ste") -> torch.Tensor:
    """TWN: ``a * sign(w) * 1{|w| > 0.7 mean|w|}`` with ``a`` the mean magnitude of the kept
    weights, per slice along ``axis``; gradient ``grad`` as in :func:`binarize`."""
    return QUANTIZERS["ternary"](w, axis, grad)


__all__ = ["BinaryWeight", "TernaryWeight", "QUANTIZERS", "get_quantizer", "binarize", "ternarize",
           "clip_mask", "CLIP", "TWN_RATIO"]
