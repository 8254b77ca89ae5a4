"""Calibration helpers shared by the methods that look at layer inputs (GPTQ, SmoothQuant, AWQ)."""

from __future__ import annotations

import torch


def token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer input as float32 rows ``(tokens, features)``, padding tokens dropped.

    ``mask`` is the batch's attention mask ``(batch, seq)``; it is used when ``x`` is
    ``(batch, seq, features)`` with the same leading shape.
    """
    x = x.detach().to(torch.float32)
    if mask is not None and x.dim() == 3 and mask.shape == x.shape[:2]:
        x = x[mask.bool()]
    return x.reshape(-1, x.shape[-1])
