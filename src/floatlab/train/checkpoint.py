"""Checkpoints: everything a run needs to continue with identical losses, and what it was.

Model state (parameters, amax histories, the stochastic-rounding generators as extra state),
optimizer state, the step, the losses so far, the run's full configuration (``"config"``: recipe,
seed, preset, steps, master-weight format, corpus digest; see :func:`floatlab.train.loop.run_config`)
and the environment that wrote it. Written atomically (temporary file, then rename), so a run
killed while saving keeps its previous checkpoint. Loaded with ``weights_only=True``: tensors,
numbers, strings, lists and dicts only (no pickle code runs).

A checkpoint is continued only when the configuration asked for now would have produced it
(:func:`floatlab.train.loop.check_resumable`); otherwise :class:`ConfigMismatch` names the
differences.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FILENAME = "checkpoint.pt"


class ConfigMismatch(ValueError):
    """A run folder holds a checkpoint made with other settings than the ones asked for now.

    ``run_dir`` is the folder; ``differences`` lists each difference as one line
    (``"preset.model.d_model: 32 in the checkpoint, 64 now"``).
    """

    def __init__(self, run_dir: Path, differences: list[str]):
        self.run_dir, self.differences = Path(run_dir), list(differences)
        shown = self.differences[:6]
        more = f"; and {len(self.differences) - 6} more" if len(self.differences) > 6 else ""
        super().__init__(f"{self.run_dir} holds a run with other settings: {'; '.join(shown)}{more}")


def save_checkpoint(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict | None:
    """The checkpoint at ``path`` (``None`` when there is none), loaded with ``weights_only=True``.
    ``mmap=True`` maps the tensors instead of reading them (cheap when only the config is needed)."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _flatten(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, (list, tuple)):
        return {prefix: [_flatten(v) if isinstance(v, (dict, list, tuple)) else v for v in d]}
    return {prefix: d}


def differences(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """One line per key whose value differs between two (nested) configurations."""
    a, b = _flatten(saved), _flatten(now)
    out = []
    for key in list(dict.fromkeys([*a, *b])):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if key not in a:
            out.append(f"{key}: absent in the checkpoint, {b[key]!r} now")
        elif key not in b:
            out.append(f"{key}: {a[key]!r} in the checkpoint, absent now")
        elif a[key] != b[key]:
            out.append(f"{key}: {a[key]!r} in the checkpoint, {b[key]!r} now")
    return out
