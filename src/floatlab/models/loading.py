"""Load a built-in model by name, or any local Hugging Face model folder, fully offline.

Loading is ``transformers``' own ``AutoModel.from_pretrained(folder)`` (encoders) or
``AutoModelForCausalLM`` (causal LMs) with ``HF_HUB_OFFLINE=1``: no hub is ever contacted. Only
safetensors checkpoints are loaded (a pickle checkpoint can run code when unpickled). Any text
model ``transformers`` knows is accepted (:func:`model_kind` says how its kind is decided); the
architectures floatlab's tests build and run are listed in :data:`SUPPORTED_ARCHITECTURES`.
After loading, :func:`floatlab.models.linearize` turns GPT-2's ``Conv1D`` and fused
mixture-of-experts weights into ``nn.Linear`` layers, so PTQ sees every GEMM weight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from floatlab.models.registry import (BUILTIN_MODELS, ModelError, builtin_name, dtype_kwargs, prepare_model,
                                      suggest_builtin)

#: model_type (config.json) -> kind, for the architectures floatlab's tests build and run
#: (tests/test_architectures.py). Any other text model that ``transformers`` knows is accepted as
#: well (see :func:`model_kind`). Encoders are evaluated by sentence embeddings (mean pooling),
#: causal LMs by perplexity. Rotation's residual-stream folding is per architecture
#: (:data:`floatlab.ptq.rotation.RESIDUAL_ROTATION`); every other model gets online rotations.
SUPPORTED_ARCHITECTURES = {
    "bert": "encoder",
    "distilbert": "encoder",
    "llama": "causal_lm",
    "mistral": "causal_lm",
    "qwen2": "causal_lm",
    "qwen2_moe": "causal_lm",
    "gemma": "causal_lm",
    "gemma3_text": "causal_lm",
    "gpt2": "causal_lm",
    "opt": "causal_lm",
}

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_ENCODER_SUFFIXES = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                     "ForQuestionAnswering", "ForMultipleChoice", "ForPreTraining", "ForNextSentencePrediction")


def model_kind(cfg: dict, where: str = "") -> str:
    """``"causal_lm"`` or ``"encoder"`` for a model's ``config.json`` (a dict).

    Causal LM: an entry of ``architectures`` ends in ``ForCausalLM`` or ``LMHeadModel`` (or, with
    no ``architectures`` or names of no known kind, ``transformers`` maps the model_type to a
    causal LM and it is no masked LM). Encoder: a base model or a masked-LM/classifier
    (``BertModel``, ``DistilBertForMaskedLM``): its hidden states are mean-pooled into sentence
    embeddings. Raises :class:`ModelError` for a
    model_type ``transformers`` does not know, an encoder-decoder model (T5, BART, ...) and a
    multimodal one (its ``text_config``: save the text model alone)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    mtype = cfg.get("model_type")
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    head = f"{where}: architecture {mtype!r} ({', '.join(archs)}) is not supported"
    if mtype not in CONFIG_MAPPING:
        import transformers
        raise ModelError(f"{head}: transformers {transformers.__version__} does not know this model_type "
                         "(a newer transformers may)")
    try:
        default_ed = bool(CONFIG_MAPPING[mtype]().is_encoder_decoder)
    except Exception:        # a config class that needs arguments: trust config.json
        default_ed = False
    if cfg.get("is_encoder_decoder", default_ed):
        raise ModelError(f"{head}: it is an encoder-decoder model; floatlab evaluates causal LMs (perplexity) and "
                         "text encoders (sentence embeddings)")
    if "vision_config" in cfg or "text_config" in cfg or "audio_config" in cfg:
        raise ModelError(f"{head}: it is a multimodal model; save its text model alone (e.g. "
                         "model.language_model.save_pretrained(dir) with its text config) and pass that folder")
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "causal_lm"
    if archs and all(a.endswith(_ENCODER_SUFFIXES) for a in archs) and mtype in auto.MODEL_MAPPING_NAMES:
        return "encoder"
    # no architectures (or names of no known kind): what transformers maps the model_type to
    if mtype in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mtype not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal_lm"
    if mtype in auto.MODEL_MAPPING_NAMES:
        return "encoder"
    raise ModelError(f"{head}: floatlab evaluates causal LMs (architectures ending in ForCausalLM/LMHeadModel) "
                     "and text encoders (a base model or masked LM)")


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
    #: what :func:`floatlab.models.linearize` converted on loading ({module name: original class})
    converted: dict = field(default_factory=dict)

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
    is ``minilm``) or a local folder; checks that the folder exists, holds a text model
    ``transformers`` can load (:func:`model_kind`) and a safetensors checkpoint. An existing folder
    wins over a built-in name spelled in another case. Raises :class:`ModelError` saying what to
    do."""
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
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise ModelError("loading models needs transformers: pip install 'floatlab[models]'") from err
    kind = model_kind(cfg, str(folder))
    if not list(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")] \
            + [p.name for p in folder.glob("*.pth")]
        if pickles:
            raise ModelError(f"{folder} holds only a pickle checkpoint ({', '.join(sorted(pickles))}); "
                             "floatlab loads safetensors only (unpickling can run arbitrary code). "
                             "Convert it once with transformers: model.save_pretrained(dir, safe_serialization=True)")
        raise ModelError(f"{folder} has no *.safetensors weights")
    return name, folder, kind, note


def load_model(model: str | os.PathLike, *, log=print, device: str | torch.device | None = None) -> LoadedModel:
    """Load a built-in model (``"minilm"``, ``"smollm2"``, any case) or a local model folder in
    fp32, with every GEMM weight as an ``nn.Linear`` (:func:`floatlab.models.linearize`), on
    ``device`` (default CPU). Raises :class:`ModelError` (a ``ValueError``) when it cannot."""
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
    from floatlab.models.linearize import linearize

    converted = linearize(net)
    net.eval()
    if device is not None:
        net.to(device)
    if kind == "causal_lm" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    mtype = net.config.model_type
    return LoadedModel(name, kind, folder, net, tok, mtype, note, converted)


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(name, module list)`` of the model's transformer blocks: the ``nn.ModuleList`` whose
    entries hold the most ``nn.Linear`` layers (``model.layers``, ``encoder.layer``,
    ``transformer.h``, ``model.decoder.layers``, ...); ``None`` when no module list holds one."""
    best, best_n = None, 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        n = sum(1 for m in mod.modules() if isinstance(m, nn.Linear))
        if n > best_n:
            best, best_n = (name, mod), n
    return best


#: the last name part of a router: it picks experts and stays in fp32 (as llm-compressor's ignore lists)
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def linear_layers(model: nn.Module, kind: str | None = None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers that PTQ quantizes: every linear inside the transformer blocks
    (:func:`block_list`), every expert's included; ``{dotted name: module}`` in model order.

    Embeddings, norms, the LM head, poolers and projections outside the blocks stay in fp32 (the
    usual PTQ convention), and so do mixture-of-experts routers (a linear named ``gate``,
    ``router`` or ``shared_expert_gate``). Raises ``ValueError`` when the model holds GEMM weights
    outside ``nn.Linear`` (GPT-2's ``Conv1D``, fused 3-D experts) that would be skipped:
    :func:`floatlab.models.linearize` converts them (:func:`load_model` does).
    """
    from floatlab.models.linearize import unlinearized

    hidden = unlinearized(model)
    if hidden:
        raise ValueError(f"{hidden[0]} ({type(model.get_submodule(hidden[0])).__name__}) holds GEMM "
                         f"weights outside nn.Linear ({len(hidden)} such modules); call "
                         "floatlab.models.linearize(model) first (floatlab.models.load_model does), or they would "
                         "stay unquantized")
    found = block_list(model)
    if found is None:
        return {}
    prefix = f"{found[0]}." if found[0] else ""
    out = {}
    for name, mod in found[1].named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] not in ROUTER_NAMES:
            out[prefix + name] = mod
    return out
