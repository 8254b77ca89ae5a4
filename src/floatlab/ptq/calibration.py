"""Calibration helpers shared by the methods that look at layer inputs (GPTQ, SmoothQuant, AWQ)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer input as float32 rows ``(tokens, features)``, padding tokens dropped.

    ``mask`` is the batch's attention mask ``(batch, seq)``; it is used when ``x`` is
    ``(batch, seq, features)`` with the same leading shape.
    """
    x = x.detach().to(torch.float32)
    if mask is not None and x.dim() == 3 and mask.shape == x.shape[:2]:
        x = x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def for_each_input(model: nn.Module, layers: dict[str, nn.Linear], calib: list[dict],
                   update: Callable[[str, torch.Tensor], None]) -> None:
    """Run the calibration batches through ``model`` and call ``update(name, rows)`` with the
    real-token input rows of every layer in ``layers`` (hooks are removed afterwards). Layers
    that read the same input tensor (q/k/v, gate/up) receive the same ``rows`` object, so an
    ``update`` may reuse work by identity."""
    state = {"mask": None, "input": None, "rows": None}

    def hook(name: str):
        def fn(mod, args):
            if state["input"] is not args[0]:       # layers reading one tensor get one rows object
                state["input"], state["rows"] = args[0], token_rows(args[0], state["mask"])
            update(name, state["rows"])
        return fn

    handles = [layer.register_forward_pre_hook(hook(n)) for n, layer in layers.items()]
    try:
        for batch in calib:
            state["mask"] = batch.get("attention_mask")
            model(**batch)
    finally:
        state.update(input=None, rows=None)
        for h in handles:
            h.remove()
