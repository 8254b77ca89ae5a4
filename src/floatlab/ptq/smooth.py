"""Per-input-channel scaling before quantization: SmoothQuant's migration and AWQ's search.

Both replace ``y = x W^T`` by ``y = (x / s) (W diag(s))^T``, which the fp32 model computes
identically. The division ``x / s`` is applied as the quantized layer's input transform (a
deployment would fold it into the preceding norm or linear; the quantized GEMM sees the same
operands either way). Each layer gets its own ``s`` from calibration statistics of its input:

* SmoothQuant (Xiao et al., 2023): ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)`` (alpha 0.5),
  moving activation outliers into the weights before W8A8-style quantization.
* AWQ-style (Lin et al., 2024): ``s_j = mean|X_j|^a`` normalized to geometric mean 1, with ``a``
  searched on a grid in [0, 1] to minimize the layer's output error
  ``|| q_a(x/s) q_w(W diag(s))^T - x W^T ||^2`` on calibration tokens (the quantizers are the
  config's own ``fake_quant``), protecting the salient input channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from floatlab.models.loading import linear_layers
from floatlab.ptq.calibration import CalibrationError, check_finite, for_each_input
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import fake_quant


_MAX_TOKENS = 512


class ChannelScale(nn.Module):
    """``x -> x / s`` on the last axis."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("inv", (1.0 / s).to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inv


@torch.no_grad()
def input_statistics(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], *,
                     nonfinite: str | None = None) -> dict[str, dict]:
    """Per layer: per-channel max|x|, mean|x| (float32, ``(in,)``) and up to 512 sampled input
    rows (real tokens). A NaN/Inf input raises :class:`floatlab.ptq.calibration.CalibrationError`
    naming the layer, or its tokens are left out (``nonfinite="exclude"``; ``None``: the policy
    in effect); so does a layer that receives no real token. The mean's float32 sum can still
    overflow for huge inputs: :func:`smooth_model` checks it before AWQ uses it."""
    stats = {n: {"max": None, "sum": None, "n": 0, "rows": []} for n in layers}

    def update(name: str, x: torch.Tensor) -> None:
        st = stats[name]
        a = x.abs()
        st["max"] = a.amax(0) if st["max"] is None else torch.maximum(st["max"], a.amax(0))
        st["sum"] = a.sum(0) if st["sum"] is None else st["sum"] + a.sum(0)
        st["n"] += x.shape[0]
        have = sum(r.shape[0] for r in st["rows"])
        if have < _MAX_TOKENS:
            st["rows"].append(x[: _MAX_TOKENS - have].clone())

    for_each_input(model, layers, calib, update, nonfinite=nonfinite)
    for st in stats.values():
        st["mean"] = st["sum"] / max(st["n"], 1)
        st["rows"] = torch.cat(st["rows"]) if st["rows"] else None
    return stats


def _apply(lin: nn.Linear, s: torch.Tensor) -> ChannelScale:
    lin.weight.data = (lin.weight.detach() * s).to(lin.weight.dtype)
    return ChannelScale(s)


@torch.no_grad()
def smooth_model(model: nn.Module, calib: list[dict], config: PTQConfig, kind: str) -> dict[str, nn.Module]:
    """Scale every quantized linear's input channels (``kind``: "smoothquant" or "awq") in place;
    return the input transforms ``{layer: ChannelScale}``."""
    layers = {n: l for n, l in linear_layers(model).items() if config.weight_spec(n) is not None}
    from floatlab.progress import track

    stats = input_statistics(model, layers, calib)
    out = {}
    for name, lin in track(layers.items(), kind, unit="layers", note=lambda kv: kv[0]):
        st = stats[name]
        if st["max"] is None:
            continue
        if kind == "smoothquant":
            a = config.smooth_alpha
            wmax = lin.weight.detach().abs().amax(0).clamp(min=1e-5)
            s = (st["max"].clamp(min=1e-5) ** a) / (wmax ** (1 - a))
            s = s.clamp(min=1e-5)
        else:
            check_finite(name, "mean |x| over the calibration tokens", st["mean"],
                         "Its inputs are finite but their float32 sum overflows: the model's activations at this "
                         "layer are too large to calibrate on; check the model and the calibration data.")
            s = _awq_search(lin, st, config, name)
        check_finite(name, f"{kind} scale s", s)
        scaled = (lin.weight.detach() * s).to(lin.weight.dtype)       # checked before the model changes
        check_finite(name, f"weight scaled by its {kind} scales (W diag(s))", scaled,
                     f"The scales (max {float(s.max()):.3g}) times the weight overflow {lin.weight.dtype}: its "
                     "calibration inputs are too large for this method" +
                     (" (try a smaller smooth_alpha)." if kind == "smoothquant" else "."))
        out[name] = _apply(lin, s)
    return out


def _awq_search(lin: nn.Linear, st: dict, config: PTQConfig, name: str) -> torch.Tensor:
    x = st["rows"]
    w = lin.weight.detach().to(torch.float32)
    w_spec, a_spec = config.weight_spec(name), config.act_spec(name)
    ref = x @ w.T
    mean = st["mean"].clamp(min=1e-8)
    best, best_s = None, torch.ones_like(mean)
    for k in range(config.awq_grid + 1):
        a = k / config.awq_grid
        s = mean ** a
        s = s / torch.sqrt(s.max() * s.min())
        if not (bool(torch.isfinite(s).all()) and bool((s > 0).all())):
            continue                      # the normalization over/underflowed: not a candidate
        xq = fake_quant(x / s, a_spec, "act") if a_spec is not None else x / s
        err = float(((xq @ fake_quant(w * s, w_spec, "weight").T - ref) ** 2).mean())
        if math.isfinite(err) and (best is None or err < best):
            best, best_s = err, s
    if best is None:
        raise CalibrationError(f"layer {name!r}: AWQ's search found no scale exponent with a finite output error "
                               f"(the layer's calibration inputs, max |x| {float(x.abs().max()):.3g}, or its weight "
                               "overflow float32 in x W^T); check the model and the calibration data")
    return best_s
