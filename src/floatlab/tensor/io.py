"""Save and load QTensors (and plain tensors) with safetensors: exact, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from floatlab.formats.serialize import format_from_reference, format_reference
from floatlab.plain.packing import storage_dtype
from floatlab.tensor.qtensor import QTensor

_HEADER = "floatlab.qtensors"
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def save(path, tensors: dict) -> None:
    """Write ``{name: QTensor | torch.Tensor}`` to a ``.safetensors`` file.

    The file is written beside ``path`` under a temporary name and renamed over it, with the mode
    an ordinary new file gets (``0o666`` minus the umask; safetensors alone writes ``0o600``): a
    failed write leaves the previous file, or none, never half of one."""
    from safetensors.torch import save_file

    from floatlab.atomic import atomic_path

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
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={_HEADER: json.dumps(info)})


def load(path) -> dict:
    """Read a file written by :func:`save`; QTensors come back equal, bit for bit."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    from safetensors import SafetensorError

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            info = json.loads(meta.get(_HEADER, "{}"))
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{p} is not a readable .safetensors file ({err}); empty, truncated or "
                         "another format: write it with floatlab.save") from None
    out = {}
    for name, d in info.items():
        scales = {k: raw.pop(f"{name}/scale/{k}") for k in d["scales"]}
        fmt = format_from_reference(d["format"])
        data = raw.pop(f"{name}/data")
        bits = getattr(fmt, "element_bits", None) or fmt.bits
        if data.dtype != storage_dtype(bits):
            raise ValueError(f"{p}: {name!r} stores {bits}-bit {fmt.name} codes as {data.dtype}, not "
                             f"{storage_dtype(bits)}; files written before floatlab stored codes "
                             "wider than 32 bits in int64 lost their top bits: encode and save again")
        out[name] = QTensor(data, fmt, tuple(d["shape"]), _DTYPES[d["dtype"]], scales, d["meta"])
    out.update(raw)
    return out
