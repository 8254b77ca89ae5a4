"""Quantized GEMMs with custom autograd: the linear layer's three GEMMs and ``qmatmul``.

Every GEMM is written ``A @ B`` with ``A: (..., M, K)`` and ``B: (..., K, N)``; the
contraction axis is ``-1`` of ``A`` and ``-2`` of ``B``. An operand is (1) multiplied by the
seeded RHT along ``K`` if the GEMM has one, (2) scaled by a power of two if its spec asks,
(3) fake-quantized with blocks along ``K`` (``axis="contraction"``), (4) unscaled; the product
is then an ordinary float32 matmul of the two quantized operands.

Order of quantizations (and so of stochastic-rounding draws from the layer's generator):
forward: fprop.a, fprop.b; backward: dgrad.a, dgrad.b, wgrad.a, wgrad.b.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from floatlab.formats.registry import get_format
from floatlab.nn import scaling
from floatlab.nn.hadamard import random_hadamard, rht
from floatlab.nn.quantizer import fake_quantize
from floatlab.nn.recipe import BlockAxis, Gemm, GemmSpec, LinearSpec, Scaling, TensorSpec

GEMMS = (Gemm.FPROP, Gemm.DGRAD, Gemm.WGRAD)


def role_index(gemm: Gemm, operand: int) -> int:
    """Row of the amax-history buffer for operand 0 (a) or 1 (b) of ``gemm``."""
    return 2 * GEMMS.index(Gemm(gemm)) + operand


@dataclass
class QuantState:
    """What a quantized GEMM needs besides its operands: spec, generator, amax histories, seed."""

    spec: LinearSpec
    seed: int = 0
    generator: torch.Generator | None = None
    amax_history: torch.Tensor | None = None   # (6, H) float32, a module buffer
    native: bool = True
    cache: dict = field(default_factory=dict)

    def hadamard(self, gemm: Gemm, n: int, device) -> torch.Tensor:
        return random_hadamard(n, self.seed * 3 + GEMMS.index(Gemm(gemm)), device=device)

    def gen(self, device) -> torch.Generator:
        if self.generator is None or self.generator.device.type != torch.device(device).type:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self.generator = g
        return self.generator


def _block_axis(tspec: TensorSpec, which: int) -> int:
    contraction = -1 if which == 0 else -2
    if tspec.axis is BlockAxis.CONTRACTION:
        return contraction
    return -2 if which == 0 else -1


def quantize_operand(t: torch.Tensor, tspec: TensorSpec, which: int, state: QuantState,
                     gemm: Gemm) -> torch.Tensor:
    """Scale (if asked), fake-quantize with blocks along the GEMM's contraction axis, unscale."""
    if tspec.format is None:
        return t
    s = None
    if tspec.scaling is not Scaling.NONE:
        cur = scaling.amax(t)
        if tspec.scaling is Scaling.DELAYED:
            if state.amax_history is None:
                raise RuntimeError("delayed scaling needs an amax history (use QLinear)")
            row = state.amax_history[role_index(gemm, which)]
            ref = scaling.delayed_amax(row, cur)
            scaling.push(row, cur)
        else:
            ref = cur
        target = tspec.scale_to if tspec.scale_to is not None else scaling.scale_target(tspec.format)
        s = scaling.pow2_scale(ref, target).to(t.device)
        t = t * s
    q = fake_quantize(t, tspec.format, tspec.rounding, tspec.saturate, _block_axis(tspec, which),
                      state.gen(t.device) if tspec.stochastic else None, native=state.native)
    return q / s if s is not None else q


def prepare(a: torch.Tensor, b: torch.Tensor, gspec: GemmSpec, state: QuantState,
            gemm: Gemm) -> tuple[torch.Tensor, torch.Tensor]:
    """The two quantized operands of ``a @ b`` (RHT applied when the GEMM has one)."""
    if gspec.hadamard:
        R = state.hadamard(gemm, gspec.hadamard, a.device)
        a = rht(a, R, -1)
        b = rht(b, R, -2)
    return (quantize_operand(a, gspec.a, 0, state, gemm),
            quantize_operand(b, gspec.b, 1, state, gemm))


def qgemm(a: torch.Tensor, b: torch.Tensor, gspec: GemmSpec, state: QuantState, gemm: Gemm):
    """``a @ b`` with both operands quantized as ``gspec`` says."""
    if not gspec.quantized:
        return a @ b
    aq, bq = prepare(a, b, gspec, state, gemm)
    return aq @ bq


def _reusable(spec: LinearSpec) -> bool:
    """May dgrad reuse fprop's quantized weight? Only when the values are certainly the same."""
    f, d = spec.fprop, spec.dgrad
    if f.b != d.b or f.b.format is None or f.hadamard or d.hadamard or f.b.stochastic:
        return False
    if f.b.scaling is Scaling.DELAYED:
        return False
    fmt = get_format(f.b.format)
    return fmt.kind == "scalar" or len(fmt.block) == 2


class _QLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, state: QuantState):
        spec = state.spec
        wt = weight.t()
        if spec.fprop.quantized:
            xq, wtq = prepare(x2d, wt, spec.fprop, state, Gemm.FPROP)
            y = xq @ wtq
        else:
            wtq = None
            y = x2d @ wt
        if bias is not None:
            y = y + bias
        ctx.state = state
        ctx.has_bias = bias is not None
        ctx.wq = wtq.t() if (wtq is not None and _reusable(spec)) else None
        ctx.save_for_backward(x2d, weight)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2d, weight = ctx.saved_tensors
        state: QuantState = ctx.state
        spec = state.spec
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if ctx.wq is not None:  # same values as quantizing again: skip the work
                gq = quantize_operand(gy, spec.dgrad.a, 0, state, Gemm.DGRAD)
                gx = gq @ ctx.wq
            else:
                gx = qgemm(gy, weight, spec.dgrad, state, Gemm.DGRAD)
        if ctx.needs_input_grad[1]:
            gw = qgemm(gy.t(), x2d, spec.wgrad, state, Gemm.WGRAD)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        ctx.wq = None
        return gx, gw, gb, None


@torch.compiler.disable
def qlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            state: QuantState) -> torch.Tensor:
    """``x @ weight.T + bias`` with the fprop, dgrad and wgrad GEMMs quantized by ``state.spec``.

    Leading dimensions of ``x`` are flattened into the token dimension (the wgrad contraction).
    Runs eagerly under ``torch.compile`` (a graph break), so the numerics are the same.
    """
    lead = x.shape[:-1]
    y = _QLinearFunction.apply(x.reshape(-1, x.shape[-1]), weight, bias, state)
    return y.reshape(*lead, weight.shape[0])


class _QMatmulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, state: QuantState):
        ctx.state = state
        ctx.save_for_backward(a, b)
        return qgemm(a, b, state.spec.fprop, state, Gemm.FPROP)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        state = ctx.state
        ga = gb = None
        if ctx.needs_input_grad[0]:   # dA = G @ B^T, contraction over N
            ga = qgemm(g, b.transpose(-1, -2), state.spec.dgrad, state, Gemm.DGRAD)
        if ctx.needs_input_grad[1]:   # dB = A^T @ G, contraction over M
            gb = qgemm(g.transpose(-1, -2), a, state.spec.wgrad, state, Gemm.WGRAD).transpose(-1, -2)
        return ga, gb, None


@torch.compiler.disable
def qmatmul(a: torch.Tensor, b: torch.Tensor, spec: LinearSpec | QuantState | None = None,
            generator: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    """``a @ b`` (batched, ``a: (..., M, K)``, ``b: (..., K, N)``) with quantized GEMMs.

    ``spec.fprop`` quantizes the forward product, ``spec.dgrad`` the product ``dA = dY @ B^T``
    (its ``a`` is dY, its ``b`` is B^T) and ``spec.wgrad`` the product ``dB^T = dY^T @ A``.
    ``None`` is a plain matmul. Delayed scaling is not available here (no state to keep).
    """
    if spec is None:
        return a @ b
    state = spec if isinstance(spec, QuantState) else QuantState(spec, seed=seed, generator=generator)
    if not any(state.spec.gemm(g).quantized for g in GEMMS):
        return a @ b
    return _QMatmulFunction.apply(a, b, state)
