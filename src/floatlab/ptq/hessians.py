"""GPTQ's input Hessians, one tensor per distinct input: layers that read the same input tensor
(q/k/v, gate/up, every expert's gate/up) share one ``2/n X^T X`` instead of holding equal copies.

:func:`shared_hessians` returns the same ``{layer: Hessian}`` mapping as
:func:`floatlab.ptq.gptq.collect_hessians`, with equal values bit for bit (the same operations
in the same order), where layers of one input map to one tensor object; GPTQ clones the
Hessian it is given, so sharing is safe. ``floatlab compare`` keeps these for all its formats.
"""

from __future__ import annotations

import torch
from torch import nn

from floatlab.ptq.calibration import check_finite, for_each_input

__all__ = ["shared_hessians", "hessian_bytes"]


@torch.no_grad()
def shared_hessians(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict], *,
                    nonfinite: str | None = None) -> dict[str, torch.Tensor]:
    """``{layer: 2/n X^T X}`` (float32 ``(in, in)``) over the calibration batches, padding tokens
    excluded; layers that read the same input tensor (consecutive layers given the same rows by
    :func:`floatlab.ptq.calibration.for_each_input`: q/k/v, gate/up) map to one shared tensor.

    Raises :class:`floatlab.ptq.calibration.CalibrationError` like ``collect_hessians`` (a
    NaN/Inf input names the layer; ``nonfinite="exclude"`` leaves those tokens out; products
    that overflow float32; a layer without a real token), and ``ValueError`` when layers that
    shared an input once read different inputs later (use ``collect_hessians`` then)."""
    group_of: dict[str, int] = {}
    members: list[list[str]] = []
    H: list[torch.Tensor] = []
    count: list[int] = []
    seen: dict[str, int] = {}
    state = {"x": None, "g": None, "xtx": None}

    def update(name: str, x: torch.Tensor) -> None:
        same = x is state["x"]
        g = group_of.get(name)
        if g is None:
            if same:                                   # reads the previous layer's input: its group
                g = state["g"]
            else:
                g = len(H)
                H.append(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32))
                count.append(0)
                members.append([])
            group_of[name] = g
            members[g].append(name)
        elif same != (g == state["g"]):
            raise ValueError(f"layer {name!r} shared its input with other layers in one calibration batch and not "
                             "in another; use floatlab.ptq.gptq.collect_hessians")
        if not same:
            tot = count[g] + x.shape[0]
            H[g] *= count[g] / tot
            H[g] += (2.0 / tot) * (x.T @ x)
            count[g] = tot
        seen[name] = count[g]
        state.update(x=x, g=g)

    try:
        for_each_input(model, layers, list(calib), update, nonfinite=nonfinite)
    finally:
        state.update(x=None)
    for g, names in enumerate(members):
        if any(seen[n] != count[g] for n in names):
            raise ValueError(f"layers {names[:3]} did not read the same inputs in every calibration batch; use "
                             "floatlab.ptq.gptq.collect_hessians")
        check_finite(names[0], "GPTQ input Hessian (2/n X^T X)", H[g],
                     "Its inputs are finite but their products overflow float32 (inputs beyond ~1.8e19 in "
                     "magnitude): the model's activations at this layer are too large to calibrate on; check the "
                     "model and the calibration data.")
    return {n: H[group_of[n]] for n in layers if n in group_of}


def hessian_bytes(hessians: dict[str, torch.Tensor]) -> int:
    """Memory the Hessians hold: each distinct tensor counted once."""
    seen = {}
    for t in hessians.values():
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
