"""Checkpoints: everything a run needs to continue with identical losses.

Model state (parameters, amax histories, the stochastic-rounding generators as extra state),
optimizer state, the step, the losses so far and the run's config. Written atomically
(temporary file, then rename), so a run killed while saving keeps its previous checkpoint.
Loaded with ``weights_only=True``: tensors, numbers, strings, lists and dicts only (no pickle
code runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FILENAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
