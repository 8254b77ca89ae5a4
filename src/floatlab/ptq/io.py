"""Save a quantized model as packed QTensors (safetensors) plus a config, and load it back.

Layout of the output folder:

* ``config.json``: the source model, the :class:`PTQConfig`, and the metric measured right after
  quantization (``floatlab eval DIR`` recomputes it and checks that it is identical);
* ``quantized.safetensors`` (written by :func:`floatlab.save`): for every quantized layer
  ``<layer>.qweight`` (a QTensor: packed codes plus block scales) and, for scaled scalar formats,
  ``<layer>.wscale`` (float32 per-row scales); every other tensor of the model's state dict
  (embeddings, norms, biases, after any rotation) as a plain tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import floatlab
from floatlab.models.loading import LoadedModel, load_model
from floatlab.ptq.apply import rebuild_quantized
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.modules import QuantLinear
from floatlab.ptq.weights import QWeight

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "quantized.safetensors"


def model_fingerprint(folder: Path) -> str:
    """A cheap identity of a model folder's checkpoint: SHA-256 over the name and header of every
    ``*.safetensors`` file (tensor names, dtypes, shapes and offsets; not the values), so that a
    moved copy of the same checkpoint matches and another model does not."""
    import hashlib
    import struct

    h = hashlib.sha256()
    for p in sorted(Path(folder).glob("*.safetensors")):
        with open(p, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            h.update(p.name.encode() + b"\0" + head + f.read(min(n, 1 << 26)))
    return h.hexdigest()


def save_quantized(out: Path, lm: LoadedModel, model: nn.Module, config: PTQConfig,
                   qweights: dict[str, QWeight], metric: dict | None = None, *, command: str | None = None,
                   data: dict | None = None) -> Path:
    """Write ``quantized.safetensors`` and then ``config.json`` into ``out`` (created if missing).

    Each file is written to a temporary file beside it and renamed (mode from the umask), and an
    earlier ``config.json`` is removed before the new weights are written: a failure leaves no
    config that would describe other weights. ``config.json`` also records ``command``, the data
    used (``data``: :func:`floatlab.ptq.compare.data_record`), the source model's folder and
    :func:`model_fingerprint`, and the environment (:func:`floatlab.provenance.environment`).
    Returns ``out``."""
    from floatlab.atomic import write_json
    from floatlab.provenance import environment

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, qw in qweights.items():
        tensors.update(qw.tensors(name))
    quant_names = set(qweights)
    transforms = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear) and mod.input_transform is not None:
            transforms[name] = _describe(mod.input_transform)
    seen = set()
    for key, t in model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if layer in quant_names and key.endswith(".weight"):
            continue
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[key] = t.clone() if ptr in seen else t        # safetensors refuses shared memory (tied weights, views)
        seen.add(ptr)
    (out / CONFIG).unlink(missing_ok=True)
    floatlab.save(out / WEIGHTS, tensors)
    cfg = {"floatlab_ptq": FORMAT_VERSION, "model": lm.name if lm.name in ("minilm", "smollm2") else str(Path(lm.folder).resolve()),
           "model_type": lm.model_type, "kind": lm.kind, "baseline_note": lm.baseline_note,
           "ptq": config.to_dict(), "layers": sorted(quant_names), "input_transforms": transforms,
           "untied_lm_head": bool(hasattr(model, "lm_head") and hasattr(model, "model")
                                  and model.lm_head.weight is not getattr(model.model, "embed_tokens", model.lm_head).weight),
           "model_fingerprint": model_fingerprint(lm.folder), "data": data,
           "metric": metric or {}, "command": command, "environment": environment()}
    write_json(out / CONFIG, cfg)
    return out


def source_model(saved: dict, model=None, where: str = "config.json") -> str:
    """The model a saved result is rebuilt from: ``model`` (a folder the user points at, checked
    against the saved :func:`model_fingerprint`) or the saved ``"model"``. Raises
    :class:`floatlab.models.ModelError` when the saved folder no longer exists (saying to pass
    the folder where the model is now) or ``model`` is another checkpoint."""
    from floatlab.models.registry import ModelError, builtin_name

    recorded = saved["model"]
    if model is None:
        if builtin_name(recorded) is None and not Path(recorded).expanduser().exists():
            raise ModelError(f"the saved result needs its source model {recorded} ({where}: model), which does not "
                             "exist any more; pass the folder where that model is now with --model PATH (Python: "
                             "load_quantized(dir, model=PATH))")
        return recorded
    want = saved.get("model_fingerprint")
    folder = Path(model).expanduser()
    if want and folder.is_dir() and model_fingerprint(folder) != want:
        raise ModelError(f"{folder} is not the model this result was made from ({recorded}): its safetensors "
                         "checkpoint differs (names, shapes or sizes); pass the folder of the original model")
    return str(model)


def load_quantized(folder: Path, *, log=print, model=None, device=None) -> tuple[LoadedModel, PTQConfig, dict]:
    """Rebuild the quantized model saved in ``folder``: ``(loaded model, config, saved config dict)``.

    ``model``: where the source model is now, when it moved (see :func:`source_model`);
    ``device``: where the rebuilt model goes (default CPU)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a floatlab ptq output folder (no {CONFIG})")
    saved = json.loads(cfg_path.read_text())
    if saved.get("floatlab_ptq") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: not a floatlab ptq config (version {saved.get('floatlab_ptq')!r})")
    config = PTQConfig.from_dict(saved["ptq"])
    lm = load_model(source_model(saved, model, str(cfg_path)), log=log)
    tensors = {}
    for f in weight_files(saved):
        tensors.update(floatlab.load(folder / f))
    transforms = {}
    if saved.get("input_transforms"):
        transforms = _transforms_for(lm.model, saved["input_transforms"], tensors)
        if saved.get("untied_lm_head"):
            from floatlab.ptq.rotation import untie_lm_head
            untie_lm_head(lm.model)
    qweights = {name: QWeight.from_tensors(config.weight_spec(name), name, tensors) for name in saved["layers"]}
    plain = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)
             and not k.endswith(".wscale")}
    rebuild_quantized(lm.model, config, qweights, transforms)
    _drop_stored_rotations(lm.model, plain, folder)
    missing, unexpected = lm.model.load_state_dict(plain, strict=False)
    bad = [k for k in unexpected]
    if bad:
        raise ValueError(f"{folder}: tensors that the model does not have: {bad[:5]}")
    lm.model.eval()
    if device is not None:
        lm.model.to(device)
    return lm, config, saved


def weight_files(saved: dict) -> list[str]:
    """The tensor files of a saved result: ``quantized.safetensors``, or the per-block shards
    that block-by-block PTQ writes (``saved["weight_files"]``)."""
    return list(saved.get("weight_files") or [WEIGHTS])


def _drop_stored_rotations(model: nn.Module, plain: dict, folder: Path) -> None:
    """Results saved before rotations were rebuilt from their size stored every online Hadamard
    matrix (``...input_transform.matrix``): take them out of ``plain`` after checking that each
    equals the rebuilt one."""
    from floatlab.ptq.rotation import OnlineRotation

    for key in [k for k in plain if k.endswith(".matrix")]:
        owner = key.rsplit(".", 1)[0]
        try:
            mod = model.get_submodule(owner)
        except AttributeError:
            continue
        if isinstance(mod, OnlineRotation):
            if not torch.equal(plain[key], mod.matrix):
                raise ValueError(f"{folder}: the stored rotation {key} differs from the Hadamard matrix of its size")
            del plain[key]


def _describe(t: nn.Module) -> list[str]:
    mods = list(t) if isinstance(t, nn.Sequential) else [t]
    return [type(m).__name__ for m in mods]


def _transforms_for(model: nn.Module, described: dict, tensors: dict) -> dict[str, nn.Module]:
    """Empty transform modules of the saved kinds; load_state_dict fills their buffers."""
    from floatlab.models.loading import linear_layers
    from floatlab.ptq.rotation import OnlineRotation
    from floatlab.ptq.smooth import ChannelScale
    layers = linear_layers(model)
    out = {}
    for name, kinds in described.items():
        n = layers[name].in_features
        mods = []
        for k in kinds:
            if k == "OnlineRotation":
                mods.append(OnlineRotation(n))
            elif k == "ChannelScale":
                mods.append(ChannelScale(torch.ones(n)))
            else:
                raise ValueError(f"unknown saved input transform {k!r} on {name}")
        out[name] = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
    return out
