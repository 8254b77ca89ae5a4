"""Learnable weight clipping (LWC), OmniQuant's weight quantizer (Shao et al. 2024, arXiv
2308.13137), learned by block-wise reconstruction (:mod:`floatlab.ptq.reconstruct`).

Per row (or per group of input columns, as the format says) two logits ``gamma`` and ``beta``,
initialized at 4.0 as in OmniQuant's code (``sigmoid(4) = 0.982``), clip the range:

* asymmetric integer grids (``int{b}_asym[_g{G}]``, :class:`floatlab.codecs.AffineInt`):
  ``hi = sigmoid(gamma) * max(w_max, 0)``, ``lo = sigmoid(beta) * min(w_min, 0)``,
  ``s = (hi - lo) / (2^b - 1)``, ``z = round(-lo / s)`` (no gradient through ``z``, as
  OmniQuant's ``round``), ``w_q = (clamp(round(w / s) + z, 0, 2^b - 1) - z) * s``;
* symmetric scaled scalar formats (``int4``, ``int3``, ``int2``, and any other narrow scalar format
  with an absmax scale): ``s = max(sigmoid(gamma) * max(w_max, 0), sigmoid(beta) * |min(w_min, 0)|)
  / target`` (OmniQuant's symmetric mode, with floatlab's scale target), ``w_q = q(w / s) * s``.

The rounding is :func:`floatlab.quantize` with the clipped straight-through gradient (zero
where the clamp acts, as OmniQuant's ``clamp(round_ste(.))``); the gradient reaching the logits
comes from autograd through ``s``. For the asymmetric integer grids the training step computes
the same fake-quantized weight and the same gradient with :class:`AffineFakeQuant`, one autograd
node that rounds with ``torch.round`` (ties to even, as ``floatlab.quantize`` onto the integers)
and writes autograd's own backward formulas out: its values and its gradient are equal bit for
bit to ``AffineInt.quantize(..., grad="clipped")`` (tested), in ~1/4 of the time (most of a
training step was this weight's element-wise work, not the block's matmuls). The loss is the block output's mean squared error against the
full-precision block on full-precision inputs (OmniQuant's). Learning rate 1e-2 (OmniQuant's
``lwc_lr``), AdamW without weight decay, 20 epochs. When frozen, the scale is rounded to the
format's storage (fp16 for ``int*_asym``; float32 for the symmetric formats) and the zero point
recomputed from it, so the stored weight is exactly what the model computes with.
"""

from __future__ import annotations

import torch
from torch import nn

import floatlab
from floatlab.codecs import AffineInt, FormatCodec
from floatlab.codecs.base import grouped, ungrouped
from floatlab.kernels import native_recon
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec
from floatlab.ptq.reconstruct import mse_loss
from floatlab.ptq.weights import QWeight, codec_weight

#: OmniQuant's initial clipping logit and learning rate
INIT_LOGIT = 4.0
LR = 1e-2


class AffineFakeQuant(torch.autograd.Function):
    """``(clamp(round(w / s) + z, 0, qmax) - z) * s`` on a grouped weight with the gradient of
    ``AffineInt.quantize(w, {"scale", "zero"}, grad="clipped")`` with respect to ``s``, bit for bit.

    Inputs: ``wg`` ``(rows, groups, g)`` float32, constant; ``s`` ``(rows, groups, 1)`` float32,
    positive, the only input with a gradient; ``z`` ``(rows, groups, 1)`` float32 integers in
    ``[0, qmax]``, detached. The rounding is ``torch.round`` (ties to even) saturated to int16,
    which is what the codec's ``floatlab.quantize(wg / s, int16, saturate=True)`` returns for a
    finite input. The backward spells out autograd's formulas for the codec's graph in its order:
    ``mul`` (``g * s`` and ``g * (q - z)``), ``clamp`` (gradient where ``0 <= x <= qmax``),
    the rounding's straight-through, ``div`` (``-g * ((w / s) / s)``), each summed over the
    group as autograd's broadcast reduction does. (Outside the clamp's range autograd adds
    ``-0 * u``, here ``g s * 0``: a zero either way.)

    On float32 CPU tensors with the native kernel built (:mod:`floatlab.kernels.native_recon`),
    forward and backward are one pass each: the same values bit for bit, and the gradient's
    same products summed in float64 (equal to this torch backward's to float32 rounding of the
    sums, not bit for bit).
    """

    @staticmethod
    def forward(ctx, wg, s, z, qmax):
        ctx.native = native_recon.usable(wg, s, z)
        if ctx.native:
            ctx.qmax = qmax
            ctx.save_for_backward(wg, s, z)
            return native_recon.affine_fq_forward(wg, s, z, qmax)
        d = wg / s
        x = torch.round(d).clamp_(-32768.0, 32767.0).add_(z)
        outside = (x < 0).logical_or_(x > qmax)
        qz = x.clamp_(0, qmax).sub_(z)
        # the division's gradient factor -(w / s) / s where the clamp passes the gradient, else 0
        # (autograd forms -(g s) ((w / s) / s) there: the same product, the sign moved)
        neg_dds = d.div_(s).neg_().masked_fill_(outside, 0.0)
        ctx.save_for_backward(s, qz, neg_dds)
        return qz * s

    @staticmethod
    def backward(ctx, g):
        if ctx.native:
            wg, s, z = ctx.saved_tensors
            return None, native_recon.affine_fq_backward(wg, s, z, ctx.qmax, g.contiguous()), None, None
        s, qz, neg_dds = ctx.saved_tensors
        return None, (g * qz).sum(-1, keepdim=True) + (g * s).mul_(neg_dds).sum(-1, keepdim=True), None, None


class LWCLearner:
    """The clipping logits of one linear layer (see the module docstring)."""

    def __init__(self, name: str, linear: nn.Linear, spec: QuantSpec, lr: float):
        codec = spec.codec
        self.spec, self.codec, self.lr = spec, codec, lr
        self.fast = isinstance(codec, AffineInt)   # AffineFakeQuant; False: the codec's own path
        self.w = linear.weight.detach().to(torch.float32)
        if isinstance(codec, AffineInt):
            self.symmetric, group = False, codec.group_size
        elif isinstance(codec, FormatCodec) and codec.scaled:
            self.symmetric, group = True, codec.group_size
        else:
            raise ValueError(f"layer {name!r}: lwc learns the clipping range of a scaled grid: an asymmetric integer "
                             f"codec (int2_asym_g128, int3_asym, ...) or a narrow scalar format with an absmax scale "
                             f"(int4, int3, int2, e2m1, ...); {spec.format!r} is neither")
        if self.symmetric:       # FormatCodec groups divide the row exactly
            wg = self.w.reshape(self.w.shape[0], -1, group or self.w.shape[1])
        else:
            wg = grouped(self.w, group)
            self.codec.check_shape(self.w.shape)
            self.wg = wg                   # the constant weight, grouped (and padded) once
        self.hi = wg.amax(-1).clamp(min=0)
        self.lo = wg.amin(-1).clamp(max=0)
        self.gamma = nn.Parameter(torch.full_like(self.hi, INIT_LOGIT))
        self.beta = nn.Parameter(torch.full_like(self.lo, INIT_LOGIT))

    def param_groups(self) -> list[dict]:
        return [{"params": [self.gamma, self.beta], "lr": self.lr}]

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.gamma) * self.hi, torch.sigmoid(self.beta) * self.lo

    def _sym_scale(self, hi, lo) -> torch.Tensor:
        s = torch.maximum(hi, -lo) / self.codec.target
        s = torch.where(s > 0, s, torch.ones_like(s))[..., None]          # (rows, groups, 1)
        return s if self.codec.group_size else s[:, 0]                     # per row: (rows, 1)

    def weight(self) -> torch.Tensor:
        hi, lo = self._range()
        if self.symmetric:
            return self.codec.quantize(self.w, {"scale": self._sym_scale(hi, lo)}, grad="clipped")
        s = ((hi - lo) / self.codec.qmax).clamp(min=1e-8)
        z = torch.round(-lo / s).clamp(0, self.codec.qmax).detach()
        if not self.fast:
            return self.codec.quantize(self.w, {"scale": s, "zero": z}, grad="clipped")
        q = AffineFakeQuant.apply(self.wg, s[..., None], z[..., None], float(self.codec.qmax))
        return ungrouped(q, self.w.shape[1])

    @torch.no_grad()
    def freeze(self) -> QWeight:
        hi, lo = self._range()
        if self.symmetric:
            s = self._sym_scale(hi, lo)
            fmt = self.codec.format
            x = self.w.reshape(self.w.shape[0], -1, self.codec.group_size) if self.codec.group_size else self.w
            values = floatlab.quantize(x / s, fmt, self.codec.rounding, saturate=True).reshape(self.w.shape)
            return QWeight(self.spec, tuple(self.w.shape), values, None, s)
        return codec_weight(self.spec, self.codec.encode(self.w, self.codec.from_range(lo, hi)))


class LWC:
    """OmniQuant's learnable weight clipping as a reconstruction method."""

    name = "lwc"
    uses_quantized_target = False

    def can_learn(self, spec) -> bool:
        codec = spec.codec
        return isinstance(codec, AffineInt) or (isinstance(codec, FormatCodec) and codec.scaled)

    def learner(self, name, linear, spec, stats, generator, config: PTQConfig) -> LWCLearner:
        return LWCLearner(name, linear, spec, config.recon.lr or LR)

    def loss(self, out, fp_out, fpq_out, mask) -> torch.Tensor:
        return mse_loss(out, fp_out, mask)
