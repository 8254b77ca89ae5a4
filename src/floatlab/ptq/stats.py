"""Per-channel input statistics that weight codecs need (the salient-channel mask by activation
max), gathered through the shared calibration pass."""

from __future__ import annotations

import torch
from torch import nn

from floatlab.ptq.calibration import for_each_input


@torch.no_grad()
def input_absmax(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], *,
                 nonfinite: str | None = None) -> dict[str, dict]:
    """``{layer: {"act_max": (in_features,) float32}}``: the max ``|x_j|`` of every input channel
    over the real calibration tokens, for the layers in ``layers``. Runs
    :func:`floatlab.ptq.calibration.for_each_input`, so a NaN/Inf input raises
    :class:`~floatlab.ptq.calibration.CalibrationError` naming the layer (or, with
    ``nonfinite="exclude"``, its tokens are left out)."""
    out: dict[str, torch.Tensor] = {}

    def update(name: str, rows: torch.Tensor) -> None:
        m = rows.abs().amax(0)
        out[name] = m if name not in out else torch.maximum(out[name], m)

    for_each_input(model, layers, calib, update, nonfinite=nonfinite)
    return {n: {"act_max": m} for n, m in out.items()}
