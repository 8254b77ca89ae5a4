"""PTQ1.61 (Zhao et al., "PTQ1.61: Push the Real Limit of Extremely Low-Bit Post-Training
Quantization Methods for Large Language Models", ACL 2025), learned by block-wise
reconstruction (:mod:`floatlab.ptq.reconstruct`). Where the paper is silent this follows the
authors' public code (github.com/zjq0455/PTQ1.61: ``quantize/blockptq.py``,
``models/int_llama_layer.py``):

* **1-D structured mask**: the input channels with the largest calibration activation max
  (``max |x_j|`` over the block's full-precision calibration inputs), top 20% by default (the
  format names the share and the rule: ``binary_mean_cf_salient20`` = ``ptq161``; ``...wmag`` by
  weight magnitude, ``...rand`` at random), one bitmap per layer;
* **salient columns**: 4-bit asymmetric per-row round-to-nearest (``int4_asym``), fixed;
* **the other columns**: binarized around the row mean ``m`` (of those columns), ``b =
  sign(w - m)`` fixed, with a learnable per-row scale ``s`` (initialized at ``mean|w - m|``, the
  least-squares scale for these signs; the authors' code starts from ``mean|w|``) and the
  learnable rank-1 factor ``r1 (rows) x r2 (columns)`` (both initialized at 1), the paper's
  "angular bias" correction: ``w_q = r1_i r2_j (s_i b_ij + m_i)``;
* **loss** on the block's output ``y`` against the full-precision block on full-precision inputs
  (``y_fp``) and on the quantized model's inputs (``y_fpq``): ``MSE(y, y_fp) + MSE(y, y_fpq) -
  log|cos(y, y_fp)| - log|cos(y, y_fpq)|``, cosines over the hidden dimension averaged over
  tokens;
* AdamW without weight decay, learning rate 5e-4 for ``s`` and 1e-3 for ``r1``, ``r2`` (the
  authors' LLaMA settings), 20 epochs.

Stored (``Masked(Binary(mean=True, col_factor=True), AffineInt(4))``): the mask bitmap, 4-bit
codes with an fp16 scale and a 4-bit zero point per row for the salient columns, 1-bit signs for
the others with the per-row factor folded into an fp16 scale ``r1 s`` and mean ``r1 m``, and one
fp16 ``r2`` per non-salient column: every bit is in the bits-per-weight count.

Not implemented: the paper's optional "quantization preprocessing" (a restorative LoRA fine-tune
before a second PTQ pass).
"""

from __future__ import annotations

import torch
from torch import nn

from floatlab.codecs import Binary, Masked
from floatlab.codecs.base import stored
from floatlab.kernels import native_recon
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec
from floatlab.ptq.reconstruct import cosine, mse_loss
from floatlab.ptq.weights import QWeight, codec_weight

#: the authors' learning rates (LLaMA): binary scales, rank-1 factors
LR_SCALE, LR_FACTOR = 5e-4, 1e-3


def check_codec(spec: QuantSpec, name: str = "") -> tuple[Masked | None, Binary]:
    """``(mask codec or None, its binary part)`` of a format PTQ1.61 can learn; ``ValueError``
    otherwise."""
    codec = spec.codec if spec.is_codec else None
    low = codec.low if isinstance(codec, Masked) else codec
    if not (isinstance(low, Binary) and low.mean and low.col_factor and low.group_size is None):
        where = f"layer {name!r}: " if name else ""
        raise ValueError(f"{where}ptq161 learns PTQ1.61's per-row scale and rank-1 factors of a weight binarized "
                         f"around its row mean: the format must store them (binary_mean_cf, optionally with a "
                         f"salient mask: ptq161 = binary_mean_cf_salient20, binary_mean_cf_salient20wmag, ...); "
                         f"got {spec.format!r}")
    return (codec if isinstance(codec, Masked) else None), low


class RankOneBinary(torch.autograd.Function):
    """``where(mask, wide, r1 * (s * signs + center) * r2)`` with autograd's gradient with respect
    to ``s``, ``r1`` and ``r2``, bit for bit, in one node: the same products in the same order
    (``mul``'s ``g * other`` / ``g * self``, ``where``'s zero at the masked entries, each summed
    over the broadcast dimension as autograd's ``sum_to`` does), with fewer temporaries.

    Shapes: ``s``, ``r1``, ``center`` ``(rows, 1)``; ``r2`` ``(cols,)``; ``signs`` ``(rows, cols)``
    of +-1; ``mask`` ``(cols,)`` bool or ``None``; ``wide`` ``(rows, cols)`` or ``None``; all float32.
    ``bits``: ``(sign bits, mask bits or None)`` as :func:`floatlab.kernels.native_recon.pack_bits`
    makes them; given, and on CPU with the native kernel built
    (:mod:`floatlab.kernels.native_recon`), forward and backward are one pass each: the same
    values bit for bit, the gradients computed in float64 (equal to the torch backward's to
    float32 rounding of the sums, not bit for bit).
    """

    @staticmethod
    def forward(ctx, s, r1, r2, signs, center, mask, wide, bits=None):
        ctx.native = bits is not None and native_recon.usable(s, r1, r2, center, wide)
        if ctx.native:
            sign_bits, mask_bits = bits
            ctx.save_for_backward(s, r1, r2, center, sign_bits, mask_bits)
            return native_recon.rank1_binary_forward(s, r1, r2, center, sign_bits, mask_bits, wide)
        t2 = (s * signs).add_(center)
        t3 = r1 * t2
        out = t3 * r2
        if mask is not None:
            out = torch.where(mask, wide, out)
        ctx.save_for_backward(r1, r2, signs, mask, t2, t3)
        ctx.masked = mask is not None
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.native:
            s, r1, r2, center, sign_bits, mask_bits = ctx.saved_tensors
            g_s, g_r1, g_r2 = native_recon.rank1_binary_backward(s, r1, r2, center, sign_bits, mask_bits,
                                                                 g.contiguous())
            return g_s, g_r1, g_r2, None, None, None, None, None
        r1, r2, signs, mask, t2, t3 = ctx.saved_tensors
        if ctx.masked:
            g = torch.where(mask, torch.zeros((), dtype=g.dtype), g)
        g_r2 = t3.mul_(g).sum(0, keepdim=True).view(r2.shape)
        g3 = g * r2
        g_r1 = t2.mul_(g3).sum(1, keepdim=True)
        g_s = g3.mul_(r1).mul_(signs).sum(1, keepdim=True)
        return g_s, g_r1, g_r2, None, None, None, None, None


class PTQ161Learner:
    """One linear layer's PTQ1.61 parameters (see the module docstring)."""

    def __init__(self, name: str, linear: nn.Linear, spec: QuantSpec, stats: dict, generator: torch.Generator,
                 lr: float | None):
        self.spec = spec
        self.masked, self.low = check_codec(spec, name)
        w = self.w = linear.weight.detach().to(torch.float32)
        cols = w.shape[1]
        self.wide_full = None
        if self.masked is not None:
            self.mask = self.masked.choose(w, stats, generator)
            self.wide_params = self.masked.wide.fit(w[:, self.mask])
            self.wide_full = torch.zeros_like(w)
            self.wide_full[:, self.mask] = self.masked.wide.quantize(w[:, self.mask], self.wide_params, grad="none")
        else:
            self.mask = torch.zeros(cols, dtype=torch.bool)
        fit = self.low.fit(w[:, ~self.mask])
        self.center = fit["mean"]                                   # (rows, 1), fp16-exact
        # the signs over every column (the salient ones are replaced by their 4-bit values)
        self.signs = torch.where(w - self.center >= 0, 1.0, -1.0)
        self.bits = (native_recon.pack_bits(self.signs > 0),                    # the native kernel's
                     None if self.wide_full is None else native_recon.pack_bits(self.mask[None]))
        self.s = nn.Parameter(fit["scale"].clone())
        self.r1 = nn.Parameter(torch.ones(w.shape[0], 1))
        self.r2 = nn.Parameter(torch.ones(cols))                   # salient entries unused (no gradient)
        self.lr_scale, self.lr_factor = (lr, lr) if lr is not None else (LR_SCALE, LR_FACTOR)
        self.fast = True        # RankOneBinary (tested equal to the autograd expression below)

    def param_groups(self) -> list[dict]:
        return [{"params": [self.s], "lr": self.lr_scale}, {"params": [self.r1, self.r2], "lr": self.lr_factor}]

    def weight(self) -> torch.Tensor:
        if self.fast:
            return RankOneBinary.apply(self.s, self.r1, self.r2, self.signs, self.center,
                                       None if self.wide_full is None else self.mask, self.wide_full, self.bits)
        lo = self.r1 * (self.s * self.signs + self.center) * self.r2
        return lo if self.wide_full is None else torch.where(self.mask, self.wide_full, lo)

    @torch.no_grad()
    def freeze(self) -> QWeight:
        dt, name = self.low.scale_dtype, self.low.name
        low = {"scale": stored(self.r1 * self.s, dt, "scale", name), "mean": stored(self.r1 * self.center, dt, "mean", name),
               "col": stored(self.r2.detach()[~self.mask], dt, "column factor", name), "center": self.center}
        if self.masked is None:
            return codec_weight(self.spec, self.low.encode(self.w, low))
        params = {"mask": self.mask, "low": low, "wide": self.wide_params}
        return codec_weight(self.spec, self.masked.encode(self.w, params))


class PTQ161:
    """PTQ1.61 as a reconstruction method."""

    name = "ptq161"
    uses_quantized_target = True

    def can_learn(self, spec) -> bool:
        try:
            check_codec(spec)
        except ValueError:
            return False
        return True

    def learner(self, name, linear, spec, stats, generator, config: PTQConfig) -> PTQ161Learner:
        return PTQ161Learner(name, linear, spec, stats, generator, config.recon.lr)

    def loss(self, out, fp_out, fpq_out, mask) -> torch.Tensor:
        fpq = fp_out if fpq_out is None else fpq_out
        return (mse_loss(out, fp_out, mask) + mse_loss(out, fpq, mask)
                - torch.log(cosine(out, fp_out, mask).abs()) - torch.log(cosine(out, fpq, mask).abs()))
