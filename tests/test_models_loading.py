"""Model loading: clear errors for bad input (no network, no real model needed)."""

import json

import pytest

pytest.importorskip("transformers", reason="model loading needs transformers (pip install 'floatlab[models]')")

from floatlab.models import ModelError, resolve_model  # noqa: E402
from floatlab.models.registry import BUILTIN_MODELS  # noqa: E402


def _folder(tmp_path, model_type="bert", files=("model.safetensors",)):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    for f in files:
        (tmp_path / f).write_bytes(b"")
    return tmp_path


def test_missing_folder():
    with pytest.raises(ModelError, match="neither a built-in model"):
        resolve_model("/no/such/model/folder")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path)


def test_unsupported_architecture(tmp_path):
    with pytest.raises(ModelError, match="architecture 't5' .* not supported"):
        resolve_model(_folder(tmp_path, "t5"))


def test_pickle_only_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="pickle checkpoint .*pytorch_model.bin"):
        resolve_model(_folder(tmp_path, "bert", files=("pytorch_model.bin",)))


def test_local_folder_resolves(tmp_path):
    name, folder, kind, _ = resolve_model(_folder(tmp_path, "llama"))
    assert kind == "causal_lm" and folder == tmp_path


def test_registry_lists_builtins():
    assert BUILTIN_MODELS["minilm"].kind == "encoder"
    assert "dequantized" in BUILTIN_MODELS["smollm2"].baseline_note
