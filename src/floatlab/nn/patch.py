"""``quantize_model``: swap a model's ``nn.Linear`` modules for :class:`QLinear` (no global patching)."""

from __future__ import annotations

from torch import nn

from floatlab.nn.modules import QLinear
from floatlab.nn.recipe import Recipe


def quantize_model(model: nn.Module, recipe: Recipe | str, *, inplace: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (not kept in high precision) by a QLinear.

    The recipe's ``keep`` patterns and ``keep_last`` choose the modules left untouched; its rules
    choose each layer's :class:`LinearSpec`. Parameters are shared, not copied. Each layer gets
    its own seed (``recipe.seed`` and its position), for Hadamard signs and stochastic rounding.
    The recipe is stored as ``model.floatlab_recipe``.
    """
    from floatlab.nn.recipes import get_recipe
    recipe = get_recipe(recipe)
    if not inplace:
        import copy
        model = copy.deepcopy(model)
    linears = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and not recipe.kept(n)]
    if recipe.keep_last:
        linears = linears[: max(0, len(linears) - recipe.keep_last)]
    for index, (name, lin) in enumerate(linears):
        spec = recipe.spec_for(name)
        seed = recipe.seed * 1_000_003 + index
        q = QLinear.from_linear(lin, spec, seed=seed, amax_history=recipe.amax_history)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    model.floatlab_recipe = recipe
    return model


def quantized_layers(model: nn.Module) -> dict[str, QLinear]:
    """The QLinear modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}
