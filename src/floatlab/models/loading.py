"""Load a built-in model by name, or any local Hugging Face model folder, fully offline.

Loading is ``transformers``' own ``AutoModel.from_pretrained(folder)`` with ``HF_HUB_OFFLINE=1``:
no hub is ever contacted. Only safetensors checkpoints are loaded (a pickle checkpoint can run
code when unpickled); the architectures whose layout the PTQ tools know are listed in
:data:`SUPPORTED_ARCHITECTURES`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from floatlab.models.registry import (BUILTIN_MODELS, ModelError, builtin_name, dtype_kwargs, prepare_model,
                                      suggest_builtin)

#: model_type (config.json) -> kind. Encoders are used for sentence embeddings (mean pooling),
#: causal LMs for perplexity. Rotation (QuaRot) needs the Llama layout (RMSNorm, q/k/v/o, MLP).
SUPPORTED_ARCHITECTURES = {
    "bert": "encoder",
    "llama": "causal_lm",
    "mistral": "causal_lm",
    "qwen2": "causal_lm",
}


@dataclass
class LoadedModel:
    """A model ready for evaluation: the module (eval mode, fp32), its tokenizer and facts."""

    name: str
    kind: str                # "encoder" | "causal_lm"
    folder: Path
    model: nn.Module
    tokenizer: object
    model_type: str
    baseline_note: str

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", 512))


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{cfg} is not valid JSON: {err}") from None


def resolve_model(model: str | os.PathLike, *, log=print) -> tuple[str, Path, str, str]:
    """``(name, folder, kind, baseline_note)`` for a built-in name (case-insensitive: ``MiniLM``
    is ``minilm``) or a local folder; checks that the folder exists, holds a supported
    architecture and a safetensors checkpoint. An existing folder wins over a built-in name
    spelled in another case. Raises :class:`ModelError` saying what to do."""
    text = str(model)
    builtin = text if text in BUILTIN_MODELS else builtin_name(text)
    if builtin is not None and (text in BUILTIN_MODELS or not Path(text).expanduser().exists()):
        info = BUILTIN_MODELS[builtin]
        folder = Path(prepare_model(builtin, log=log))
        name, note = builtin, info.baseline_note
    else:
        folder = Path(text).expanduser()
        if not folder.exists():
            raise ModelError(f"model {text!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}"
                             f"{suggest_builtin(text)}) nor an existing folder")
        if not folder.is_dir():
            raise ModelError(f"model {text!r} is a file; pass the model's folder (with config.json)")
        name, note = folder.name, "the checkpoint's own weights in fp32"
    cfg = _read_config(folder)
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"{folder}: architecture {mtype!r} ({', '.join(cfg.get('architectures') or [])}) "
                         f"is not supported; supported model_type: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if not list(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")] \
            + [p.name for p in folder.glob("*.pth")]
        if pickles:
            raise ModelError(f"{folder} holds only a pickle checkpoint ({', '.join(sorted(pickles))}); "
                             "floatlab loads safetensors only (unpickling can run arbitrary code). "
                             "Convert it once with transformers: model.save_pretrained(dir, safe_serialization=True)")
        raise ModelError(f"{folder} has no *.safetensors weights")
    return name, folder, SUPPORTED_ARCHITECTURES[mtype], note


def load_model(model: str | os.PathLike, *, log=print) -> LoadedModel:
    """Load a built-in model (``"minilm"``, ``"smollm2"``, any case) or a local model folder in
    fp32. Raises :class:`ModelError` (a ``ValueError``) when it cannot."""
    name, folder, kind, note = resolve_model(model, log=log)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ModelError("loading models needs transformers: pip install 'floatlab[models]'") from err
    transformers.logging.set_verbosity_error()
    cls = AutoModel if kind == "encoder" else AutoModelForCausalLM
    try:
        net = cls.from_pretrained(folder, **dtype_kwargs(torch.float32), use_safetensors=True,
                                  local_files_only=True)
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"transformers could not load {folder}: {err}") from err
    net.eval()
    if kind == "causal_lm" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    mtype = net.config.model_type
    return LoadedModel(name, kind, folder, net, tok, mtype, note)


def linear_layers(model: nn.Module, kind: str | None = None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers that PTQ quantizes: every linear inside the transformer blocks.

    Embeddings, norms, the LM head and BERT's pooler stay in fp32 (the usual PTQ convention).
    """
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if name.endswith("lm_head") or ".pooler." in f".{name}." or "pooler" in name.split("."):
            continue
        if ".layer." in f".{name}" or ".layers." in f".{name}":
            out[name] = mod
    return out
