"""Quantized GEMMs with custom autograd: the linear layer's three GEMMs and ``qmatmul``.

Every GEMM is written ``A @ B`` with ``A: (..., M, K)`` and ``B: (..., K, N)``; the
contraction axis is ``-1`` of ``A`` and ``-2`` of ``B``. An operand is (1) multiplied by the
seeded RHT along ``K`` if the GEMM has one, (2) scaled by a power of two if its spec asks,
(3) fake-quantized with blocks along ``K`` (``axis="contraction"``), (4) unscaled; the product
is then an ordinary float32 matmul of the two quantized operands.

Order of quantizations (and so of stochastic-rounding draws from the layer's generator):
forward: fprop.a, fprop.b; backward: dgrad.a, dgrad.b, wgrad.a, wgrad.b.

Convolutions (:func:`qconv`) are the same three GEMMs on the unfolded input (im2col), batched
over groups; see :func:`qconv` for the exact layout and why it equals the convolution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from floatlab.formats.registry import get_format
from floatlab.kernels import lookup
from floatlab.kernels.dispatch import resolve_backend
from floatlab.nn import scaling
from floatlab.nn.hadamard import random_hadamard, rht
from floatlab.nn.lowbit import clip_mask, get_quantizer
from floatlab.nn.quantizer import fake_quantize
from floatlab.nn.recipe import BlockAxis, Gemm, GemmSpec, LinearSpec, Scaling, TensorSpec
from floatlab.rounding import parse_rounding

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
    name: str = ""          # the layer's qualified name, for error messages

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
    if tspec.quantizer:   # binary/ternary weights: the scale reduces over K, the weight's input axis
        return get_quantizer(tspec.format).values(t, -2 if Gemm(gemm) is Gemm.FPROP else -1)
    if not tspec.pad:
        check_block_fit(t, tspec, _block_axis(tspec, which), gemm, state.name)
    s = operand_scale(t, tspec, which, state, gemm)
    q = _native_round(t, tspec, state, s)
    if q is not None:      # the same bits as the lines below, in one pass (kernels/lookup.py)
        return q
    if s is not None:
        t = t * s
    q = fake_quantize(t, tspec.format, tspec.rounding, tspec.saturate, _block_axis(tspec, which),
                      state.gen(t.device) if tspec.stochastic else None, native=state.native)
    return q / s if s is not None else q


def _native_round(t: torch.Tensor, tspec: TensorSpec, state: QuantState,
                  s: float | None) -> torch.Tensor | None:
    """``fake_quantize(t * s) / s`` in one native pass where one gives the same bits, else None:
    float32 CPU values without a gradient to record, the default backend, the native loops
    available, and either a deterministic scalar format whose rounding a table expresses
    (:func:`floatlab.kernels.lookup.build_table` decides, from ``fake_quantize`` itself) or a
    saturating integer format with ties-to-even or stochastic rounding (the same float64 draws
    from the layer's generator, taken at the same point)."""
    if (t.dtype is not torch.float32 or t.device.type != "cpu" or tspec.format is None
            or (t.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling()
            or resolve_backend(None) != "auto" or not lookup.available()):
        return None
    spec = get_format(tspec.format)
    if spec.kind != "scalar" or (s is not None and not isinstance(s, float)):
        return None
    rounding, saturate, native = tspec.rounding, tspec.saturate, state.native
    mode = parse_rounding(rounding).value if rounding is not None else None
    if saturate and mode in (None, "rne", "sr") and lookup.int_format_fits(spec):
        if mode == "sr":
            # torch.rand(t.shape, float64, generator) is empty(...).uniform_(0, 1, generator): the
            # same draws, made a cache-sized slice at a time into one kept buffer and rounded
            # slice by slice (uniform_ on consecutive slices continues the same stream)
            draws = state.cache.get("draws")
            if draws is None:
                draws = state.cache["draws"] = torch.empty(lookup.DRAW_CHUNK, dtype=torch.float64)
            gen = state.gen(t.device)
            return lookup.int_round_drawn(t, spec, lambda d: d.uniform_(0, 1, generator=gen), draws, s)
        if mode == "rne" or parse_rounding(spec.default_rounding).value == "rne":
            return lookup.int_round(t, spec, None, s)
    if tspec.stochastic:
        return None
    lut = lookup.table(("fake_quantize", spec, rounding, saturate, native),
                       lambda v: fake_quantize(v, spec, rounding, saturate, -1, None, native=native,
                                               grad="none"))
    return None if lut is None else lookup.round_scaled(t, lut, s)


def operand_scale(t: torch.Tensor, tspec: TensorSpec, which: int, state: QuantState,
                  gemm: Gemm) -> float | torch.Tensor | None:
    """The power-of-two scale of an operand (None without scaling), pushing its amax into the
    history under delayed scaling. On CPU a Python float (:func:`scaling.pow2_scale_value`, the
    same value as :func:`scaling.pow2_scale`), elsewhere a float32 0-d tensor on ``t``'s device."""
    if tspec.scaling is Scaling.NONE:
        return None
    cpu = t.device.type == "cpu"
    cur = _native_amax(t) if cpu else None
    if cur is None:
        cur = scaling.amax(t)
    if tspec.scaling is Scaling.DELAYED:
        if state.amax_history is None:
            raise RuntimeError("delayed scaling needs an amax history (use QLinear)")
        row = state.amax_history[role_index(gemm, which)]
        if cpu:
            ref = scaling.delayed_amax_and_push(row, cur)
        else:
            ref = scaling.delayed_amax(row, cur)
            scaling.push(row, cur)
    else:
        ref = float(cur) if cpu else cur
    target = tspec.scale_to if tspec.scale_to is not None else scaling.scale_target(tspec.format)
    if cpu:
        return scaling.pow2_scale_value(float(ref), target)
    return scaling.pow2_scale(ref, target).to(t.device)


def _native_amax(t: torch.Tensor) -> float | None:
    """``float(scaling.amax(t))`` in one native pass (:func:`floatlab.kernels.lookup.amax`: a max
    involves no rounding, so the same value), where available on the default backend; else None."""
    if resolve_backend(None) != "auto" or torch.compiler.is_compiling():
        return None
    return lookup.amax(t)


def block_length(fmt: str) -> int | None:
    """The 1D block length of a block format (``None`` for scalar formats and 2D tiles)."""
    spec = get_format(fmt)
    if spec.kind != "block" or len(spec.block) != 1:
        return None
    return int(spec.block[0])


def check_block_fit(t: torch.Tensor, tspec: TensorSpec, axis: int, gemm, layer: str = "") -> None:
    """Raise ``ValueError`` naming the layer when ``tspec`` refuses padding (``pad=False``) and
    ``t``'s length along ``axis`` is not a multiple of its block (2D tiles: the last two dims)."""
    spec = get_format(tspec.format)
    if spec.kind != "block":
        return
    dims = [axis] if len(spec.block) == 1 else [-2, -1]
    for d, b in zip(dims, spec.block):
        n = t.shape[d]
        if n % b:
            raise ValueError(block_fit_message(layer, Gemm(gemm), n, tspec.format, b))


def block_fit_message(layer: str, gemm: Gemm, n: int, fmt: str, block: int) -> str:
    what = f"layer {layer!r}" if layer else "a layer"
    return (f"{what}: the {gemm.value} GEMM reduces over {n} values, not a multiple of the {fmt} block "
            f"of {block}, and the recipe turns padding off (pad: false); set pad: true (blocks are "
            f"zero-padded) or give the layer a reduction size that is a multiple of {block}")


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
    if f.b.quantizer:
        return True
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
            if spec.fprop.b.grad == "clipped":
                gw = gw * clip_mask(weight)
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


# ---- convolutions as implicit GEMMs ------------------------------------------------------------

@dataclass(frozen=True)
class ConvGeometry:
    """A 2D convolution's shape parameters (a Conv1d is one with a kernel height of 1)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple((size[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                     // self.stride[i] + 1 for i in range(2))

    def covers(self, size: tuple[int, int]) -> bool:
        """Does every input position fall in some window? (Then the unfolded input holds every
        value of the input, and its amax is the input's.)"""
        return all(_covers(size[i], self.kernel[i], self.stride[i], self.padding[i], self.dilation[i])
                   for i in range(2))


@functools.lru_cache(maxsize=1024)
def _covers(n: int, k: int, s: int, p: int, d: int) -> bool:
    out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    seen = {o * s + j * d - p for o in range(max(out, 0)) for j in range(k)}
    return all(i in seen for i in range(n))


def _elementwise(tspec: TensorSpec, gspec: GemmSpec) -> bool:
    """Does quantizing this operand commute with unfolding? A scalar format with a deterministic
    rounding (each value rounds the same wherever it appears; 0 stays 0), no RHT."""
    if tspec.format is None or tspec.quantizer or tspec.stochastic or gspec.hadamard:
        return False
    return get_format(tspec.format).kind == "scalar"


def _quantize_in_place_order(x: torch.Tensor, tspec: TensorSpec, which: int, state: QuantState,
                             gemm: Gemm) -> torch.Tensor:
    """``quantize_operand(x, tspec, which, state, gemm)`` for an operand that :func:`_elementwise`
    accepts, read in ``x``'s memory order when ``x`` is channels-last (as a conv's output is
    here, and so the next conv's input): each value rounds alone and the amax is one of the set,
    so the values are the same, without the copy to contiguous that the rounding pass would make;
    the result has ``x``'s layout (the unfold reads either)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return quantize_operand(x.permute(0, 2, 3, 1), tspec, which, state, gemm).permute(0, 3, 1, 2)
    return quantize_operand(x, tspec, which, state, gemm)


def _rows(cols: torch.Tensor, groups: int) -> torch.Tensor:
    """``(N, G*Kg, L)`` -> ``(G, N*L, Kg)``: one row per (sample, output position)."""
    n, gk, length = cols.shape
    return cols.view(n, groups, gk // groups, length).permute(1, 0, 3, 2).reshape(groups, n * length, -1)


def _unfolded_rows(x: torch.Tensor, geom: "ConvGeometry") -> torch.Tensor:
    """``_rows(F.unfold(x, ...), groups)``: the unfolded input as GEMM rows, by one native gather
    where available (:func:`floatlab.kernels.lookup.unfold_rows`: the same values in the same
    contiguous layout, without unfold's column matrix and the row copy), else by torch."""
    if (resolve_backend(None) == "auto" and not torch.compiler.is_compiling()
            and not (x.requires_grad and torch.is_grad_enabled())):
        r = lookup.unfold_rows(x, geom.kernel, geom.stride, geom.padding, geom.dilation, geom.groups)
        if r is not None:
            return r
    return _rows(F.unfold(x, kernel_size=geom.kernel, dilation=geom.dilation, padding=geom.padding,
                          stride=geom.stride), geom.groups)


def _folded_rows(rows: torch.Tensor, n: int, size: tuple[int, int], geom: "ConvGeometry") -> torch.Tensor:
    """``F.fold(_unrows(rows, n), size, ...)`` (col2im): one native pass with ATen's addition
    order where available (:func:`floatlab.kernels.lookup.fold_rows`, the same bits), else torch."""
    if (resolve_backend(None) == "auto" and not torch.compiler.is_compiling()
            and not (rows.requires_grad and torch.is_grad_enabled())):
        r = lookup.fold_rows(rows, n, size, geom.kernel, geom.stride, geom.padding, geom.dilation,
                             geom.groups)
        if r is not None:
            return r
    return F.fold(_unrows(rows, n), size, kernel_size=geom.kernel, dilation=geom.dilation,
                  padding=geom.padding, stride=geom.stride)


def _unrows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """``(G, N*L, C)`` -> ``(N, G*C, L)``, the inverse of :func:`_rows`."""
    g, nl, c = rows.shape
    return rows.view(g, n, nl // n, c).permute(1, 0, 3, 2).reshape(n, g * c, nl // n)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` on contiguous operands: the quantize paths return different memory layouts
    (a padded block's view, a native cast's strides), and the matmul's float32 summation order
    follows the layout; one layout makes the result independent of the path."""
    return a.contiguous() @ b.contiguous()


def _qmm(a: torch.Tensor, b: torch.Tensor, gspec: GemmSpec, state: QuantState, gemm: Gemm) -> torch.Tensor:
    if not gspec.quantized:
        return _mm(a, b)
    return _mm(*prepare(a, b, gspec, state, gemm))


class _QConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, state: QuantState, geom: ConvGeometry):
        spec, G = state.spec, geom.groups
        n, size = x.shape[0], tuple(x.shape[2:])
        wg = weight.reshape(G, weight.shape[0] // G, -1)              # (G, Og, Kg), K channel-major
        wt = wg.transpose(1, 2).contiguous()   # operands contiguous: one matmul layout on every path
        fa = spec.fprop.a
        covered = fa.scaling is Scaling.NONE or geom.covers(size)
        xq = history = None
        if spec.fprop.quantized and _elementwise(fa, spec.fprop) and covered:
            if fa.scaling is Scaling.DELAYED and state.amax_history is not None:
                history = state.amax_history[role_index(Gemm.FPROP, 0)].clone()   # before the push
            # quantize-then-unfold gives the same values (and amax) as unfold-then-quantize
            xq = _quantize_in_place_order(x, fa, 0, state, Gemm.FPROP)
            a = _unfolded_rows(xq, geom)
            bq = quantize_operand(wt, spec.fprop.b, 1, state, Gemm.FPROP)
            y = _mm(a, bq)
        elif spec.fprop.quantized:
            a, bq = prepare(_unfolded_rows(x, geom), wt, spec.fprop, state, Gemm.FPROP)
            y = _mm(a, bq)
        else:
            bq = None
            y = _mm(_unfolded_rows(x, geom), wt)
        out = _unrows(y, n).reshape(n, weight.shape[0], *geom.out_size(size))
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        ctx.state, ctx.geom, ctx.size, ctx.has_bias = state, geom, size, bias is not None
        ctx.wq = bq.transpose(1, 2).contiguous() if (bq is not None and _reusable(spec)) else None
        wb = spec.wgrad.b
        # wgrad's input operand reuses fprop's quantized, unfolded input when the values are the
        # same: the same spec with no scaling or current scaling (the scale depends on x alone),
        # a deterministic scalar format (xq is only made for those), no RHT; this saves the
        # backward's quantize, unfold and row copy. Under delayed scaling the scale depends on
        # the history too: backward reuses only if wgrad's history row is then equal to the one
        # fprop scaled with (kept here, before fprop's push), and pushes x's amax as wgrad would
        ctx.xrows = a if (xq is not None and wb == fa and not spec.wgrad.hadamard
                          and (wb.scaling in (Scaling.NONE, Scaling.CURRENT) or history is not None)) else None
        ctx.history = history
        ctx.x_amax = (state.amax_history[role_index(Gemm.FPROP, 0), 0].clone()
                      if ctx.xrows is not None and history is not None else None)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        state: QuantState = ctx.state
        spec, geom = state.spec, ctx.geom
        G, n = geom.groups, x.shape[0]
        g3 = gy.reshape(n, gy.shape[1], -1)                                # (N, G*Og, L)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            d = _rows(g3, G)                                              # (G, N*L, Og)
            if ctx.wq is not None:
                dq = quantize_operand(d, spec.dgrad.a, 0, state, Gemm.DGRAD)
                dcols = _mm(dq, ctx.wq)
            else:
                wg = weight.reshape(G, weight.shape[0] // G, -1)
                dcols = _qmm(d, wg, spec.dgrad, state, Gemm.DGRAD)        # (G, N*L, Kg)
            gx = _folded_rows(dcols, n, ctx.size, geom)
        if ctx.needs_input_grad[1]:
            wgs = spec.wgrad
            # (G, Og, N*L), d transposed, copied from gy at once (no d where dgrad is not needed)
            og, length = g3.shape[1] // G, g3.shape[2]
            dt = g3.reshape(n, G, og, length).permute(1, 2, 0, 3).reshape(G, og, n * length).contiguous()
            covered = wgs.b.scaling is Scaling.NONE or geom.covers(ctx.size)
            xrows = ctx.xrows
            if xrows is not None and ctx.history is not None:     # delayed: the same history?
                row = state.amax_history[role_index(Gemm.WGRAD, 1)]
                xrows = xrows if torch.equal(row, ctx.history) else None
            if xrows is not None:
                gwg = _mm(quantize_operand(dt, wgs.a, 0, state, Gemm.WGRAD), xrows)
                if ctx.history is not None:    # the push quantize_operand(x, wgs.b) would make
                    scaling.delayed_amax_and_push(row, ctx.x_amax)
            elif wgs.quantized and _elementwise(wgs.b, wgs) and covered:
                aq = quantize_operand(dt, wgs.a, 0, state, Gemm.WGRAD)
                xq = _quantize_in_place_order(x, wgs.b, 1, state, Gemm.WGRAD)
                gwg = _mm(aq, _unfolded_rows(xq, geom))
            else:
                gwg = _qmm(dt, _unfolded_rows(x, geom), wgs, state, Gemm.WGRAD)
            gw = gwg.reshape(weight.shape)
            if spec.fprop.b.grad == "clipped":
                gw = gw * clip_mask(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        ctx.wq = ctx.xrows = ctx.history = ctx.x_amax = None
        return gx, gw, gb, None, None


@torch.compiler.disable
def qconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: QuantState,
          geom: ConvGeometry) -> torch.Tensor:
    """A 2D convolution (``F.conv2d`` with zero padding) whose three GEMMs are quantized by
    ``state.spec``, as an implicit GEMM on the unfolded input (im2col).

    Shapes: ``x (N, C_in, H, W)``, ``weight (C_out, C_in/groups, kh, kw)``, ``bias (C_out,)``;
    returns ``(N, C_out, H_out, W_out)``, float32. A Conv1d is the case ``kh = 1`` (``QConv1d``
    unsqueezes). Per group ``g`` (``G = groups``), with ``Kg = C_in/G * kh * kw`` and ``L`` the
    output positions, the three GEMMs are those of a linear layer on the ``N*L`` rows of the
    unfolded input:

    ========= ============================================ =========================================
    GEMM      computes                                     contraction (block axis)
    ========= ============================================ =========================================
    fprop     ``Y_g = X_g (N*L, Kg) @ W_g^T (Kg, Og)``     ``Kg``: input channels x kernel window,
                                                           channel-major (``F.unfold``'s order,
                                                           that of ``weight.reshape(C_out, -1)``):
                                                           index ``c*kh*kw + i*kw + j``
    dgrad     ``dX_g = dY_g (N*L, Og) @ W_g (Og, Kg)``,    ``Og``: the group's output channels
              then ``dx = fold(dX)`` (col2im)
    wgrad     ``dW_g = dY_g^T (Og, N*L) @ X_g (N*L, Kg)``  ``N*L``: samples x output positions
    ========= ============================================ =========================================

    The GEMMs of all groups run as one batched matmul; each operand is quantized as one tensor
    (a per-tensor scale, NVFP4's tensor scale or delayed scaling covers every group); the quantized
    operands are made contiguous before the matmul, so the float32 summation order does not
    depend on the memory layout a quantize path returned. Why this is
    the convolution: ``F.unfold`` only gathers input values (and zeros for the padding), so
    ``X_g @ W_g^T`` is ``F.conv2d`` term by term; ``fold`` is the adjoint of ``unfold`` (it adds
    each window's contribution back to the input position it came from), so ``dx`` is
    ``conv_transpose2d(dy, W)`` term by term; ``dW`` is ``conv2d_weight`` likewise. Only the
    order of the float32 additions can differ from PyTorch's convolution kernels (equal bit for
    bit whenever the sums are exact; tests/test_nn_conv.py). Unfolding first is necessary for
    block formats: an input value lies in up to ``kh*kw`` windows, each blocked on its own.
    For scalar formats with a deterministic rounding the input is quantized before unfolding
    (the same values, ``kh*kw`` times fewer roundings); stochastic rounding draws once per
    element of the unfolded matrix, as it would for a GEMM that reads it. When wgrad's input
    operand has fprop's spec with no or current scaling, wgrad reuses fprop's quantized unfolded
    input (the same values: the scale depends on the input alone) instead of redoing it.
    """
    return _QConvFunction.apply(x, weight, bias, state, geom)
