"""Models larger than memory: a model skeleton whose parameters are not loaded, and a
checkpoint read tensor by tensor through safetensors' memory mapping.

:func:`load_lazy` builds the model from its ``config.json`` with ``accelerate``'s
``init_empty_weights`` (parameters on the ``meta`` device, buffers such as rotary frequencies
real) and :func:`floatlab.models.linearize` applied; :class:`Checkpoint` knows which
``*.safetensors`` file holds each tensor (the index of a sharded checkpoint, or the files'
headers) and :meth:`Checkpoint.load_into` / :func:`unload` put one module's parameters in memory
and take them out again, so a caller holds one transformer block at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from floatlab.models.registry import ModelError

__all__ = ["Checkpoint", "load_lazy", "unload"]


class Checkpoint:
    """The tensors of a model folder's safetensors checkpoint, read on demand (memory-mapped).

    ``transposed``: module names whose ``weight`` is stored transposed (GPT-2's ``Conv1D``,
    converted to ``nn.Linear`` by :func:`floatlab.models.linearize`)."""

    def __init__(self, folder, transposed=()):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.transposed = set(transposed)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {k: self.folder / f for k, f in weight_map.items()}
        else:
            self.files = {}
            for p in sorted(self.folder.glob("*.safetensors")):
                with safe_open(str(p), framework="pt") as f:
                    self.files.update({k: p for k in f.keys()})
        if not self.files:
            raise ModelError(f"{self.folder} has no safetensors tensors")

    def keys(self):
        return self.files.keys()

    def tensors(self, keys) -> dict[str, torch.Tensor]:
        """``{key: float tensor}`` read from the files (each file opened once, then closed)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.files[k], []).append(k)
        out = {}
        for p, ks in by_file.items():
            with safe_open(str(p), framework="pt") as f:
                for k in ks:
                    out[k] = f.get_tensor(k)
        return out

    def load_into(self, model: nn.Module, prefix: str = "", *, exclude: str | None = None) -> int:
        """Put the checkpoint's tensors into the parameters of ``model.get_submodule(prefix)``
        (float32, on the CPU), leaving out those under ``exclude`` (a module name); returns how
        many tensors were read. A parameter the module holds under two names (a tied LM head)
        that the checkpoint stores once is loaded once and shared again. Raises
        :class:`ModelError` naming a parameter the checkpoint lacks or holds with another shape."""
        root = model.get_submodule(prefix) if prefix else model
        pre = f"{prefix}." if prefix else ""
        first: dict[int, str] = {}
        tied: dict[str, str] = {}
        names = []
        for n, p in root.named_parameters(remove_duplicate=False):
            if exclude and (pre + n).startswith(exclude + "."):
                continue
            if id(p) in first and pre + n not in self.files:
                tied[n] = first[id(p)]
                continue
            first.setdefault(id(p), n)
            names.append(n)
        missing = [pre + n for n in names if pre + n not in self.files]
        if missing:
            raise ModelError(f"{self.folder}: the checkpoint has no tensor {missing[0]!r} ({len(missing)} missing); "
                             "its names differ from the model class's (a layout transformers converts on loading): "
                             "quantize it in whole-model mode (without --blockwise)")
        data = self.tensors([pre + n for n in names])
        for n in names:
            key = pre + n
            owner, _, pname = n.rpartition(".")
            mod = root.get_submodule(owner) if owner else root
            t = data[key]
            if key.rpartition(".")[0] in self.transposed and pname == "weight":
                t = t.t()
            old = mod._parameters[pname]
            if tuple(t.shape) != tuple(old.shape):
                raise ModelError(f"{self.folder}: tensor {key!r} has shape {tuple(t.shape)}, the model expects "
                                 f"{tuple(old.shape)}")
            mod._parameters[pname] = nn.Parameter(t.to(torch.float32), requires_grad=False)
        for n, src in tied.items():
            owner, _, pname = n.rpartition(".")
            s_owner, _, s_name = src.rpartition(".")
            (root.get_submodule(owner) if owner else root)._parameters[pname] = \
                (root.get_submodule(s_owner) if s_owner else root)._parameters[s_name]
        return len(data)


def unload(module: nn.Module) -> None:
    """Replace every parameter of ``module`` by an empty one on the ``meta`` device (frees it)."""
    for mod in module.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[k] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                  requires_grad=False)


def load_lazy(model, *, log=print):
    """A :class:`floatlab.models.LoadedModel` whose model has no weights in memory (parameters on
    ``meta``; :func:`floatlab.models.linearize` applied), its tokenizer, and the
    :class:`Checkpoint` to fill it from. Raises :class:`ModelError` like :func:`load_model`,
    and for mixture-of-experts models stored as fused experts (split experts cannot be read
    piecewise)."""
    from floatlab.models.linearize import linearize
    from floatlab.models.loading import LoadedModel, resolve_model

    name, folder, kind, note = resolve_model(model, log=log)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ModelError("lazy loading needs transformers and accelerate: pip install 'floatlab[models]'") from err
    transformers.logging.set_verbosity_error()
    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"transformers could not load {folder}: {err}") from err
    cls = AutoModel if kind == "encoder" else AutoModelForCausalLM
    from floatlab.models.registry import dtype_kwargs

    with init_empty_weights(include_buffers=False):
        net = cls.from_config(cfg, **dtype_kwargs(torch.float32))
    if hasattr(net, "tie_weights"):
        net.tie_weights()                   # a tied LM head is the embeddings' parameter (stored once)
    converted = linearize(net)
    experts = sorted(n for n, c in converted.items() if c != "Conv1D")
    if experts:
        raise ModelError(f"{folder}: mixture-of-experts layers ({experts[0]}, ...) are split into per-expert linears "
                         "after loading; block-by-block loading cannot read them piecewise yet: quantize this model "
                         "in whole-model mode (without --blockwise)")
    net.eval()
    if kind == "causal_lm" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = LoadedModel(name, kind, folder, net, tok, net.config.model_type, note, converted)
    lm.checkpoint = Checkpoint(folder, transposed=[n for n, c in converted.items() if c == "Conv1D"])
    return lm
