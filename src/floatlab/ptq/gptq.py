"""GPTQ (Frantar et al., 2022) for any floatlab format.

The format enters only through :class:`floatlab.ptq.quantizer.FrozenGrid` (the quantizer's
rounding with its scales fixed). Choices:

* Hessian ``H = 2/n sum x x^T`` of each layer's input over the calibration tokens, collected in
  one pass of the fp32 model (inputs are not re-collected after earlier layers are quantized);
  dampening ``damp * mean(diag H)``; dead inputs (zero diagonal) get weight 0.
* Lazy batch updates over ``block_size`` columns; the inverse Hessian through its Cholesky factor.
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

import math

import torch
from torch import nn

import floatlab

from floatlab.ptq.calibration import CalibrationError, check_finite, for_each_input
from floatlab.ptq.config import GPTQOptions, PTQConfig
from floatlab.ptq.quantizer import FrozenGrid, QuantSpec, absmax_scale
from floatlab.ptq.weights import QWeight, codec_weight


def _group_of(spec: QuantSpec, opts: GPTQOptions) -> int | None:
    if spec.is_codec:
        return spec.codec.group_size
    if spec.is_block:
        blk = spec.fmt.block
        if len(blk) != 1:
            raise ValueError(f"GPTQ needs 1D blocks; {spec.format!r} has {blk} tiles (use RTN)")
        return blk[0]
    return spec.group_size or opts.group_size


@torch.no_grad()
def gptq_weight(w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, opts: GPTQOptions = GPTQOptions(), *,
                stats: dict | None = None, generator: torch.Generator | None = None) -> QWeight:
    """Quantize one weight ``(out, in)`` given its input Hessian ``(in, in)``. ``stats`` and
    ``generator``: for a weight codec whose parameters need them (a salient-channel mask).

    Raises :class:`CalibrationError` (a ``ValueError``) when ``w`` or ``H`` holds a NaN/Inf, and
    ``ValueError`` when the damped Hessian is not positive definite (raise ``opts.damp``)."""
    if not bool(torch.isfinite(w).all()):
        raise CalibrationError("GPTQ: the weight has non-finite values; quantize a finite weight")
    if not bool(torch.isfinite(H).all()):
        raise CalibrationError("GPTQ: the input Hessian has non-finite values (NaN/Inf in the calibration "
                               "inputs, or inputs whose products overflow float32); damping cannot fix it: "
                               "check the calibration data (collect_hessians names the layer)")
    W = w.detach().to(torch.float32).clone()
    rows, cols = W.shape
    H = H.to(torch.float32).clone()
    group = _group_of(spec, opts)
    if spec.is_codec:
        spec.codec.check_shape(W.shape)
    elif group is not None and not spec.is_block and cols % group:
        raise ValueError(f"group_size {group} does not divide in_features {cols}")
    if spec.is_block and cols % group and not spec.pad:
        raise ValueError(f"{spec.format!r}: block {group} does not divide in_features {cols} and padding is off")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = None
    if opts.act_order and group is None:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    damp = opts.damp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols)
    try:
        L = torch.linalg.cholesky(H.double())
        Hinv = torch.cholesky_inverse(L)
        Hinv = torch.linalg.cholesky(Hinv, upper=True).to(torch.float32)
    except torch.linalg.LinAlgError as err:      # H is finite here: a conditioning problem
        raise ValueError(f"GPTQ: the damped input Hessian is not positive definite (damp={opts.damp}: "
                         f"{float(damp):.3g} added to its diagonal); raise GPTQOptions.damp (e.g. 0.1) "
                         "or calibrate on more tokens") from err

    if spec.is_codec:
        return _gptq_codec(W, Hinv, perm, spec, opts, group, stats, generator)
    tensor_amax = w.detach().abs().amax().to(torch.float32) if spec.is_block else None
    row_grid = None
    if group is None:
        row_grid = FrozenGrid(W, spec, row_scale=absmax_scale(W, QuantSpec(spec.format, None, spec.scale_target), "weight")
                              if spec.scaled else None)
    Q = torch.zeros_like(W)
    values = torch.zeros_like(W)
    grids: list[FrozenGrid] = []
    bs = opts.block_size if group is None else max(group, (opts.block_size // group) * group)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        grid = row_grid
        for i in range(i2 - i1):
            col = i1 + i
            if group is not None and col % group == 0:
                grid = FrozenGrid(W1[:, i:i + group], spec, tensor_amax=tensor_amax)
                grids.append(grid)
            j = col % group if group is not None else col
            wcol = W1[:, i]
            qv, q = _round(grid, wcol, j)
            Q[:, col], values[:, col] = q, qv
            err = (wcol - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        inv = torch.argsort(perm)
        Q, values = Q[:, inv], values[:, inv]
    return _assemble(spec, w.shape, Q, values, grids, row_grid, group)


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
            codes[:, col], Q[:, col] = grid.round(wcol, j)
            err = (wcol - Q[:, col]) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if orig is not None:
        Q, codes = Q[:, orig], codes[:, orig]
    qt = codec.pack(codes, params if group is None else codec.merge_groups(parts))
    wq = codec.decode(qt)
    if not torch.equal(wq, Q):
        raise RuntimeError(f"GPTQ with codec {codec.name!r}: the packed weight does not decode to GPTQ's result "
                           f"(max |diff| {float((wq - Q).abs().max()):.3g}); this is a floatlab bug, please report it")
    return codec_weight(spec, qt, wq)


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


def gptq_model(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], config: PTQConfig,
               progress=None, hessians: dict[str, torch.Tensor] | None = None, *, stats: dict | None = None,
               generator: torch.Generator | None = None) -> dict[str, QWeight]:
    from floatlab.progress import track

    H = hessians if hessians is not None else collect_hessians(model, layers, calib)
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
            out[name] = gptq_weight(lin.weight, H[name], spec, config.gptq, stats=(stats or {}).get(name),
                                    generator=generator)
        except ValueError as err:
            cls = CalibrationError if isinstance(err, CalibrationError) else ValueError
            raise cls(f"layer {name!r}: {err}") from err
        if progress:
            progress(name)
    return out


def reconstruction_error(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> float:
    """``tr((W - Wq) H (W - Wq)^T)``: the layer-output error GPTQ minimizes (H = 2/n X^T X)."""
    d = (w.detach().double() - wq.detach().double())
    return float(torch.einsum("ij,jk,ik->", d, H.double(), d)) / 2.0
