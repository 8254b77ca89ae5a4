"""GPTQ (Frantar et al., 2022) for any floatlab format.

The format enters only through :class:`floatlab.ptq.quantizer.FrozenGrid` (the quantizer's
rounding with its scales fixed). Choices:

* Hessian ``H = 2/n sum x x^T`` of each layer's input over the calibration tokens, collected in
  one pass of the fp32 model (inputs are not re-collected after earlier layers are quantized);
  dampening ``damp * mean(diag H)``; dead inputs (zero diagonal) get weight 0.
* Lazy batch updates over ``block_size`` columns; the inverse Hessian through its Cholesky factor.
* Speed (the results are bit for bit those of the plain column loop, tested against it): a
  scaled scalar format of 8 bits or fewer, and a block format's elements, round each column
  through a table of the (element) format's values (:class:`_TableRounder`, checked against
  :func:`floatlab.quantize` when built; nearest modes) instead of a full ``quantize`` call; each
  block of columns is held transposed, so a column is contiguous; the damped Hessian's inverse Cholesky factor is computed once per
  Hessian tensor and reused while that tensor lives (q/k/v and gate/up share one; ``floatlab
  compare`` reuses the Hessians for every format), up to :data:`FACTOR_CACHE_BYTES`. The
  column loop of a table-rounded scalar format runs in C++ where a compiler is found
  (:mod:`floatlab.ptq.gptq_native`: the same float32 operations in the same order, one call per
  group), else in Python; NaN/Inf checks are one ``max |x| < inf`` reduction each.
* Groups: block formats use their own block as the group: when GPTQ reaches a block of columns
  it computes that block's scales (per row) from the *current, already updated* weights, then
  rounds the block's columns one by one on that fixed grid (GPTQ-with-groups). NVFP4's per-tensor
  scale comes from the whole original weight. Scalar formats: one absmax scale per row from the
  original weight, or per ``group_size`` columns computed at the group's start.
* ``act_order`` (columns by decreasing Hessian diagonal) applies when there are no groups (scalar
  formats with per-row scales); with groups the columns keep their order so that every group is
  a real block of the format.
* Weight codecs (:mod:`floatlab.codecs`): the codec's frozen grid (``codec.frozen_grid``). Per-row
  codecs (``int3_asym``, ``binary_mean``, ``ternary``, a salient-channel mask) fit their
  parameters on the whole weight first (a mask from the calibration activation max); grouped
  ones (``int3_asym_g128``) fit each group's parameters from the current weights when GPTQ
  reaches it. The codes GPTQ chose are packed with those parameters, and the packed QTensor
  decodes exactly to GPTQ's result (checked).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

import floatlab

from floatlab.codecs.affine import AffineInt
from floatlab.codecs.base import ColumnGrid, WeightCodec
from floatlab.formats.block import ScaleRule
from floatlab.ptq.calibration import CalibrationError, check_finite, for_each_input
from floatlab.ptq import gptq_native
from floatlab.ptq.config import GPTQOptions, PTQConfig
from floatlab.ptq.quantizer import FrozenGrid, QuantSpec, absmax_scale
from floatlab.ptq.weights import QWeight, codec_weight
from floatlab.rounding import RoundingMode, resolve_rounding


def _group_of(spec: QuantSpec, opts: GPTQOptions) -> int | None:
    if spec.is_codec:
        return spec.codec.group_size
    if spec.is_block:
        blk = spec.fmt.block
        if len(blk) != 1:
            raise ValueError(f"GPTQ needs 1D blocks; {spec.format!r} has {blk} tiles (use RTN)")
        return blk[0]
    return spec.group_size or opts.group_size


#: bytes of inverse Cholesky factors kept for reuse (one float32 ``(in, in)`` matrix per Hessian
#: tensor, dropped with that tensor); beyond it a factor is computed again each time it is needed.
FACTOR_CACHE_BYTES = 1 << 30
_factors = WeakIdKeyDictionary()


class _Factor(NamedTuple):
    """What GPTQ needs of a damped Hessian: the upper Cholesky factor of its inverse (float32,
    in ``perm``'s column order when act-order applies), the dead-input mask, the damping added."""

    hinv: torch.Tensor
    perm: torch.Tensor | None
    dead: torch.Tensor
    damp: torch.Tensor


def _factor(H: torch.Tensor, damp_frac: float, act_order: bool) -> _Factor:
    """The damped Hessian's inverse Cholesky factor (float64 arithmetic, float32 result), from
    the cache when ``H`` (the same tensor, unmodified) was factored with these options before
    (one entry per tensor, holding a factor per damping and order).

    Raises ``ValueError`` when the damped Hessian is not positive definite."""
    version = (H._version, H.dtype, H.device, tuple(H.shape))
    key = (float(damp_frac), bool(act_order))
    entry = _factors.get(H)
    if entry is not None and entry[0] == version and key in entry[1]:
        return entry[1][key]
    cols = H.shape[0]
    Hf = H.to(torch.float32).clone()
    dead = torch.diag(Hf) == 0
    Hf[dead, dead] = 1
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(Hf), descending=True)
        Hf = Hf[perm][:, perm]
    damp = damp_frac * torch.mean(torch.diag(Hf))
    Hf += damp * torch.eye(cols)
    try:
        L = torch.linalg.cholesky(Hf.double())
        Hinv = torch.cholesky_inverse(L)
        Hinv = torch.linalg.cholesky(Hinv, upper=True).to(torch.float32)
    except torch.linalg.LinAlgError as err:      # H is finite here: a conditioning problem
        raise ValueError(f"GPTQ: the damped input Hessian is not positive definite (damp={damp_frac}: "
                         f"{float(damp):.3g} added to its diagonal); raise GPTQOptions.damp (e.g. 0.1) "
                         "or calibrate on more tokens") from err
    f = _Factor(Hinv, perm, dead, damp)
    if entry is None or entry[0] != version:        # a new tensor, or changed in place since
        entry = (version, {})
    held = sum(g.hinv.nbytes for h, e in _factors.items() if h is not H for g in e[1].values())
    held += sum(g.hinv.nbytes for g in entry[1].values())
    if held + Hinv.nbytes <= FACTOR_CACHE_BYTES:
        entry[1][key] = f                            # both orders (act-order on/off) may be kept
        _factors[H] = entry
    return f


def _registered(fmt) -> bool:
    """``fmt`` is the registered format of its name (a block format's element format may not be)."""
    try:
        return floatlab.get_format(fmt.name) == fmt
    except ValueError:
        return False


class _TableRounder:
    """Round-to-nearest (``rne``/``rna``/``rnz``) with saturation into a scalar format of 8 bits
    or fewer, by a binary search among its values: the same bits as :func:`floatlab.quantize`
    (``saturate=True``) for float32 input other than NaN (GPTQ's columns are finite: checked
    per block), at a fraction of its per-call cost on GPTQ's short columns. ``None`` from
    :meth:`build` when the format/mode is not covered or the table disagrees with ``quantize``
    on a probe of every value, every midpoint and its neighbours, +-0, +-Inf, overflow and
    random values (then GPTQ calls ``quantize``)."""

    def __init__(self, values: torch.Tensor, bounds: torch.Tensor, signed_zero: bool):
        self.values, self.bounds, self.signed_zero = values, bounds, signed_zero

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (float32, 1-D, no NaN) rounded, into ``out`` if given."""
        r = torch.index_select(self.values, 0, torch.searchsorted(self.bounds, x), out=out)
        if self.signed_zero:
            torch.copysign(r, x, out=r)
        return r

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def build(fmt_name: str, rounding: str | None) -> "_TableRounder | None":
        fmt = floatlab.get_format(fmt_name)
        if fmt.kind != "scalar" or fmt.bits > 8:
            return None
        mode = resolve_rounding(fmt, rounding, None)
        if mode not in (RoundingMode.RNE, RoundingMode.RNA, RoundingMode.RNZ):
            return None
        codes = torch.arange(2 ** fmt.bits, dtype=torch.int64)
        v = floatlab.decode(codes, fmt, dtype=torch.float64)
        v = torch.unique(torch.where(v == 0, 0.0, v)[torch.isfinite(v)])       # sorted, one zero
        if v.numel() < 2:
            return None
        lo, hi = v[:-1], v[1:]
        mid = (lo + hi) / 2                              # exact: neighbours of a <= 8-bit format
        if mode is RoundingMode.RNE:
            d = hi - lo
            up = torch.remainder(lo / d, 2) != 0             # the upper neighbour has the even significand
        elif mode is RoundingMode.RNA:
            up = mid > 0
        else:
            up = mid < 0
        bounds = mid.to(torch.float32)
        if not torch.equal(bounds.double(), mid):
            return None
        # searchsorted counts the bounds strictly below x: a tie that goes up must count its bound
        bounds = torch.where(up, torch.nextafter(bounds, torch.tensor(-math.inf)), bounds)
        zero = floatlab.quantize(torch.tensor([-0.0]), fmt, mode, saturate=True)
        t = _TableRounder(v.to(torch.float32), bounds, bool(torch.signbit(zero).item()))
        m32 = mid.to(torch.float32)
        probe = torch.cat([v.float(), m32, torch.nextafter(m32, torch.tensor(math.inf)),
                           torch.nextafter(m32, torch.tensor(-math.inf)), 2 * v.float(), v.float() / 3,
                           torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-40, -1e-40, 3e38, -3e38]),
                           torch.randn(4096, generator=torch.Generator().manual_seed(0)) * float(v.abs().max()) / 3])
        probe = torch.cat([probe, -probe])
        want = floatlab.quantize(probe, fmt, mode, saturate=True)
        return t if torch.equal(want.view(torch.int32), t(probe).view(torch.int32)) else None


def _all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()`` for a floating-point tensor, as ``max |t| < inf`` (a NaN
    propagates through ``amax``): one vectorized reduction, about 10x faster than ``isfinite`` on
    CPU (10 ms -> 1 ms for a 1536 x 1536 Hessian, checked on every call)."""
    return t.numel() == 0 or bool(t.abs().amax() < math.inf)


@torch.no_grad()
def gptq_weight(w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, opts: GPTQOptions = GPTQOptions(), *,
                stats: dict | None = None, generator: torch.Generator | None = None) -> QWeight:
    """Quantize one weight ``(out, in)`` given its input Hessian ``(in, in)``. ``stats`` and
    ``generator``: for a weight codec whose parameters need them (a salient-channel mask).

    Raises :class:`CalibrationError` (a ``ValueError``) when ``w`` or ``H`` holds a NaN/Inf, and
    ``ValueError`` when the damped Hessian is not positive definite (raise ``opts.damp``)."""
    if not _all_finite(w):
        raise CalibrationError("GPTQ: the weight has non-finite values; quantize a finite weight")
    if not _all_finite(H):
        raise CalibrationError("GPTQ: the input Hessian has non-finite values (NaN/Inf in the calibration "
                               "inputs, or inputs whose products overflow float32); damping cannot fix it: "
                               "check the calibration data (collect_hessians names the layer)")
    W = w.detach().to(torch.float32).clone()
    rows, cols = W.shape
    group = _group_of(spec, opts)
    if spec.is_codec:
        spec.codec.check_shape(W.shape)
    elif group is not None and not spec.is_block and cols % group:
        raise ValueError(f"group_size {group} does not divide in_features {cols}")
    if spec.is_block and cols % group and not spec.pad:
        raise ValueError(f"{spec.format!r}: block {group} does not divide in_features {cols} and padding is off")
    f = _factor(H, opts.damp, opts.act_order and group is None)
    W[:, f.dead] = 0
    perm, Hinv = f.perm, f.hinv
    if perm is not None:
        W = W[:, perm]

    if spec.is_codec:
        return _gptq_codec(W, Hinv, perm, spec, opts, group, stats, generator)
    tensor_amax = w.detach().abs().amax().to(torch.float32) if spec.is_block else None
    row_grid = None
    if group is None:
        row_grid = FrozenGrid(W, spec, row_scale=absmax_scale(W, QuantSpec(spec.format, None, spec.scale_target), "weight")
                              if spec.scaled else None)
    table = _TableRounder.build(spec.format, spec.rounding) if spec.scaled else None
    etable = None                  # block formats: the element format's table, in the block's mode
    if spec.is_block and _registered(spec.fmt.element):
        etable = _TableRounder.build(spec.fmt.element.name, resolve_rounding(spec.fmt, spec.rounding, None).value)
    hif4 = spec.is_block and spec.fmt.rule is ScaleRule.HIF4
    Q = torch.zeros_like(W)
    values = torch.zeros_like(W)
    grids: list[FrozenGrid] = []
    bs = opts.block_size if group is None else max(group, (opts.block_size // group) * group)
    native = table is not None and W.device.type == "cpu" and gptq_native.available()
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        # the block transposed, (width, rows): each column is a contiguous row (the same values
        # and the same elementwise arithmetic as the column layout, so the same bits)
        W1 = W[:, i1:i2].t().contiguous()
        Q1, V1, Err1 = torch.empty_like(W1), torch.empty_like(W1), torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        grid = row_grid
        s = None if row_grid is None or not spec.scaled else row_grid.scale.reshape(-1)
        if native and (s is None or s.dtype == torch.float32):
            i = 0
            while i < i2 - i1:           # one native call per stretch of columns on one grid
                if group is not None:    # i1 and i are multiples of the group here
                    grid = FrozenGrid(W1[i:i + group].t(), spec, tensor_amax=tensor_amax)
                    grids.append(grid)
                    s = grid.scale.reshape(-1)
                end = i2 - i1 if group is None else min(i2 - i1, i + group)
                gptq_native.run_columns(W1, Q1, V1, Err1, Hinv1, i, end, s, table.values, table.bounds,
                                        table.signed_zero)
                i = end
            _finish_block(W, Q, values, Q1, V1, Err1, Hinv, i1, i2)
            continue
        d = Hinv1.diagonal().tolist()
        # per-column views made in one call each, and one buffer for the rank-1 products (a fresh
        # (width, rows) tensor per column cost an allocation, often fresh pages, every column)
        w_rows, q_rows, v_rows, e_rows = W1.unbind(0), Q1.unbind(0), V1.unbind(0), Err1.unbind(0)
        h_cols = Hinv1.unsqueeze(2).unbind(0)          # h_cols[i][k] = Hinv1[i, k], shape (width, 1)
        prod = torch.empty_like(W1)
        scaled = torch.empty_like(W1[0])
        for i in range(i2 - i1):
            col = i1 + i
            if group is not None and col % group == 0:
                grid = FrozenGrid(W1[i:i + group].t(), spec, tensor_amax=tensor_amax)
                grids.append(grid)
                s = grid.scale.reshape(-1) if spec.scaled else None
            wcol, q, err = w_rows[i], q_rows[i], e_rows[i]
            if table is not None:        # = _round(grid, wcol, j) for a scaled format, bit for bit
                torch.mul(table(torch.div(wcol, s, out=scaled), out=v_rows[i]), s, out=q)
            elif etable is not None:     # = _round(grid, wcol, j): BlockGrid.elements, then decode
                bg, j = grid.grid, col % group
                mul = bg.encode_mul[:, j]
                if hif4:
                    c = etable(((wcol.abs() * mul[:, 0]) * mul[:, 1]).to(torch.bfloat16).to(torch.float32))
                    c = torch.where(wcol < 0, -c, c)
                else:
                    c = etable(wcol * mul)
                V1[i], q[:] = c, bg.decode(c[:, None], slice(j, j + 1))[:, 0]
            else:
                V1[i], q[:] = _round(grid, wcol, col % group if group is not None else col)
            torch.sub(wcol, q, out=err).div_(d[i])
            if i + 1 < i2 - i1:          # W1[i + 1:] -= outer(Hinv1[i, i + 1:], err): the same products
                p = torch.mul(h_cols[i][i + 1:], err, out=prod[i + 1:])
                W1[i + 1:].sub_(p)
        _finish_block(W, Q, values, Q1, V1, Err1, Hinv, i1, i2)
    if perm is not None:
        inv = torch.argsort(perm)
        Q, values = Q[:, inv], values[:, inv]
    return _assemble(spec, w.shape, Q, values, grids, row_grid, group)


def _finish_block(W, Q, values, Q1, V1, Err1, Hinv, i1: int, i2: int) -> None:
    """A lazy block's results into ``Q``/``values`` and its errors into the later columns of ``W``."""
    if not _all_finite(Err1):
        raise ValueError("GPTQ: the updated weights overflowed float32 (non-finite rounding errors); the "
                         "weight or its Hessian is out of range: check the layer and its calibration data")
    Q[:, i1:i2], values[:, i1:i2] = Q1.t(), V1.t()
    W[:, i2:] -= Err1.t().contiguous() @ Hinv[i1:i2, i2:]


def _gptq_codec(W, Hinv, perm, spec: QuantSpec, opts: GPTQOptions, group, stats, generator) -> QWeight:
    """GPTQ's column loop on a weight codec's frozen grids (``W``/``Hinv`` already permuted by
    ``perm`` when act-order applies). Returns the packed result, checked to decode to it."""
    codec = spec.codec
    rows, cols = W.shape
    orig = torch.argsort(perm) if perm is not None else None
    params, parts = None, []
    grid = None
    if group is None:
        params = codec.fit(W if orig is None else W[:, orig], stats, generator)
        grid = codec.frozen_grid(params)
    Q = torch.zeros_like(W)
    codes = torch.zeros(rows, cols, dtype=torch.int64)
    bs = opts.block_size if group is None else max(group, (opts.block_size // group) * group)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group is not None and col % group == 0:
                part = codec.fit(W1[:, i:i + group], stats, generator)
                parts.append(part)
                grid = codec.frozen_grid(part)
            j = col % group if group is not None else (int(perm[col]) if perm is not None else col)
            wcol = W1[:, i]
            fast = _affine_column(codec, grid)
            codes[:, col], Q[:, col] = fast(wcol) if fast is not None else grid.round(wcol, j)
            err = (wcol - Q[:, col]) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        if not _all_finite(Err1):
            raise ValueError("GPTQ: the updated weights overflowed float32 (non-finite rounding errors); the "
                             "weight or its Hessian is out of range: check the layer and its calibration data")
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if orig is not None:
        Q, codes = Q[:, orig], codes[:, orig]
    qt = codec.pack(codes, params if group is None else codec.merge_groups(parts))
    wq = codec.decode(qt)
    if not torch.equal(wq, Q):
        raise RuntimeError(f"GPTQ with codec {codec.name!r}: the packed weight does not decode to GPTQ's result "
                           f"(max |diff| {float((wq - Q).abs().max()):.3g}); this is a floatlab bug, please report it")
    return codec_weight(spec, qt, wq)


def _affine_column(codec, grid):
    """For an asymmetric integer codec (:class:`floatlab.codecs.affine.AffineInt`) whose frozen
    grid has one scale and zero point per row, ``col -> (codes, values)`` with the bits of
    ``grid.round(col, j)`` (``clamp(round(w / s) + z, 0, qmax)``, ties to even, then
    ``(q - z) * s``) in five tensor operations instead of its general path; else ``None``.
    Cached on the grid."""
    fast = getattr(grid, "_gptq_fast", False)
    if fast is not False:
        return fast
    fast = None
    p = getattr(grid, "params", None)
    if (isinstance(codec, AffineInt) and type(grid) is ColumnGrid and type(codec).column_params is WeightCodec.column_params
            and p is not None and set(p) == {"scale", "zero"} and p["scale"].dim() == 2 and p["scale"].shape[1] == 1):
        s, z, qmax = p["scale"][:, 0].to(torch.float32), p["zero"][:, 0].to(torch.float32), float(codec.qmax)

        def fast(col):
            # floatlab.quantize(x, int16, saturate=True) is round-half-even and a clamp; its
            # -0 becomes +0 in ``+ z`` (z >= 0), as the reference's does
            q = (torch.round(col / s).clamp_(-32768.0, 32767.0) + z).clamp_(0.0, qmax)
            return q.to(torch.int64), (q - z) * s
    grid._gptq_fast = fast
    return fast


def _round(grid: FrozenGrid, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid value stored, dequantized value) of one column."""
    spec = grid.spec
    if spec.is_block:
        c = grid.grid.elements(col[:, None], slice(j, j + 1))
        return c[:, 0], grid.grid.decode(c, slice(j, j + 1))[:, 0]
    if spec.scaled:      # the grid value itself is stored, so round once here (= grid.round)
        s = grid.scale.reshape(-1)
        v = floatlab.quantize(col.to(torch.float32) / s, spec.fmt, spec.rounding, saturate=True)
        return v, v * s
    q = grid.round(col, j)
    return q, q


def _assemble(spec, shape, Q, values, grids, row_grid, group) -> QWeight:
    rows, cols = shape
    if spec.is_block:
        scales = [g.grid.scales() for g in grids]
        merged = {}
        for key in scales[0]:
            if key == "tensor_scale":
                merged[key] = scales[0][key]
            else:
                merged[key] = torch.stack([s[key] for s in scales], dim=1).reshape(rows * len(scales), *scales[0][key].shape[1:])
        return QWeight(spec, tuple(shape), values.contiguous(), merged, wq=Q.contiguous())
    if not spec.scaled:
        return QWeight(spec, tuple(shape), values.contiguous(), wq=Q.contiguous())
    if group is None:
        return QWeight(spec, tuple(shape), values.contiguous(), None, row_grid.scale, wq=Q.contiguous())
    scale = torch.stack([g.scale.reshape(rows) for g in grids], dim=1).unsqueeze(-1)   # (rows, ngroups, 1)
    gspec = QuantSpec(spec.format, group, spec.scale_target, spec.rounding, spec.pad)
    return QWeight(gspec, tuple(shape), values.contiguous(), None, scale, wq=Q.contiguous())


@torch.no_grad()
def collect_hessians(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], *,
                     nonfinite: str | None = None) -> dict[str, torch.Tensor]:
    """``2/n X^T X`` (float32, ``(in, in)``) of every layer's input over the calibration batches
    (padding tokens excluded), by layer name.

    Raises :class:`floatlab.ptq.calibration.CalibrationError` naming the layer when its input
    holds a NaN/Inf (``nonfinite="exclude"`` leaves those tokens out instead; ``None`` is the
    policy in effect, see :func:`floatlab.ptq.calibration.for_each_input`), when the products
    overflow float32, or when a layer receives no real token."""
    H = {n: torch.zeros(l.in_features, l.in_features) for n, l in layers.items()}
    count = {n: 0 for n in layers}
    last = [None, None]          # (rows, rows^T rows): q/k/v and gate/up read the same input

    def update(name: str, x: torch.Tensor) -> None:
        if last[0] is not x:
            last[0], last[1] = x, x.T @ x
        tot = count[name] + x.shape[0]
        H[name] *= count[name] / tot
        H[name] += (2.0 / tot) * last[1]
        count[name] = tot

    for_each_input(model, layers, calib, update, nonfinite=nonfinite)
    for name, h in H.items():
        check_finite(name, "GPTQ input Hessian (2/n X^T X)", h,
                     "Its inputs are finite but their products overflow float32 (inputs beyond ~1.8e19 in "
                     "magnitude): the model's activations at this layer are too large to calibrate on; check the "
                     "model and the calibration data.")
    return H


def _own_hessians(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict]) -> dict[str, torch.Tensor]:
    """:func:`collect_hessians`' Hessians, with one tensor per distinct input (q/k/v, gate/up:
    :func:`floatlab.ptq.hessians.shared_hessians`, the same arithmetic on the same rows, so the
    same numbers in ~3/4 of the memory on a Llama block) where the layers share their inputs
    consistently; otherwise :func:`collect_hessians`."""
    from floatlab.ptq.hessians import shared_hessians

    try:
        H = shared_hessians(model, layers, calib)
    except CalibrationError:
        raise
    except ValueError:
        return collect_hessians(model, layers, calib)
    return H if set(H) == set(layers) else collect_hessians(model, layers, calib)


def gptq_model(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], config: PTQConfig,
               progress=None, hessians: dict[str, torch.Tensor] | None = None, *, stats: dict | None = None,
               generator: torch.Generator | None = None, done=None) -> dict[str, QWeight]:
    """Every layer's GPTQ weight, by name. ``done(name, qweight)``: called as each layer is
    finished instead of collecting the results (the returned dict is then empty). Hessians
    collected here (``hessians=None``) are dropped as their layer is done; where the model's
    transformer blocks allow (:class:`floatlab.ptq.hessians.BlockHessians`: a causal LM's
    calibration windows), they are collected one block at a time as GPTQ reaches it, the same
    numbers with one block's Hessians in memory instead of the whole model's."""
    from floatlab.progress import track
    from floatlab.ptq.hessians import BlockHessians

    own = hessians is None
    H = hessians
    if own:
        H = BlockHessians.build(model, layers, calib, _own_hessians,
                                need=[n for n in layers if config.weight_spec(n) is not None])
        if H is None:
            H = _own_hessians(model, layers, calib)
    out = {}
    for name, lin in track(layers.items(), "gptq", unit="layers", note=lambda kv: kv[0]):
        spec = config.weight_spec(name)
        if spec is None:
            continue
        if name not in H:
            raise ValueError(f"layer {name!r}: the precomputed hessians have no entry for it")
        check_finite(name, "GPTQ input Hessian", H[name],
                     "The Hessians were passed in precomputed: rebuild them with collect_hessians, which names "
                     "the cause (non-finite calibration inputs, or overflow).")
        try:
            qw = gptq_weight(lin.weight, H[name], spec, config.gptq, stats=(stats or {}).get(name),
                             generator=generator)
        except ValueError as err:
            cls = CalibrationError if isinstance(err, CalibrationError) else ValueError
            raise cls(f"layer {name!r}: {err}") from err
        if own:
            del H[name]
        if done is None:
            out[name] = qw
        else:
            done(name, qw)
        del qw
        if progress:
            progress(name)
    return out


def reconstruction_error(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> float:
    """``tr((W - Wq) H (W - Wq)^T)``: the layer-output error GPTQ minimizes (H = 2/n X^T X)."""
    d = (w.detach().double() - wq.detach().double())
    return float(torch.einsum("ij,jk,ik->", d, H.double(), d)) / 2.0
