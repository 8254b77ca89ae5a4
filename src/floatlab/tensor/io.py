"""Save and load QTensors (and plain tensors) with safetensors: exact, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from floatlab.formats.serialize import format_from_reference, format_reference
from floatlab.tensor.qtensor import QTensor

_HEADER = "floatlab.qtensors"
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def save(path, tensors: dict) -> None:
    """Write ``{name: QTensor | torch.Tensor}`` to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    if not isinstance(tensors, dict) or not tensors:
        raise TypeError("save(path, tensors): tensors must be a non-empty dict of name -> QTensor/Tensor")
    flat, info = {}, {}
    for name, t in tensors.items():
        if "/" in name:
            raise ValueError(f"tensor name {name!r} may not contain '/'")
        if isinstance(t, QTensor):
            flat[f"{name}/data"] = t.data.contiguous()
            for k, s in t.scales.items():
                flat[f"{name}/scale/{k}"] = s.contiguous()
            info[name] = {"format": format_reference(t.format), "shape": list(t.shape),
                          "dtype": str(t.dtype), "meta": t.meta, "scales": list(t.scales)}
        elif isinstance(t, torch.Tensor):
            flat[name] = t.contiguous()
        else:
            raise TypeError(f"{name!r}: expected a QTensor or torch.Tensor, got {type(t).__name__}")
    save_file(flat, str(path), metadata={_HEADER: json.dumps(info)})


def load(path) -> dict:
    """Read a file written by :func:`save`; QTensors come back equal, bit for bit."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        info = json.loads(meta.get(_HEADER, "{}"))
        raw = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for name, d in info.items():
        scales = {k: raw.pop(f"{name}/scale/{k}") for k in d["scales"]}
        out[name] = QTensor(raw.pop(f"{name}/data"), format_from_reference(d["format"]),
                            tuple(d["shape"]), _DTYPES[d["dtype"]], scales, d["meta"])
    out.update(raw)
    return out
