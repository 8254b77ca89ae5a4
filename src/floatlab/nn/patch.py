"""``quantize_model``: swap a model's ``nn.Linear`` modules for :class:`QLinear` (no global patching),
and say what was and was not quantized (:class:`QuantizationReport`)."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field

from torch import nn

from floatlab.nn.modules import QLinear
from floatlab.nn.recipe import Recipe

# Below this share of the GEMM weights quantized, quantize_model warns (the rest runs in float32).
LOW_FRACTION = 0.5


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_model` did to a model (``model.floatlab_quantization``).

    Attributes:
        recipe: the recipe's name.
        quantized: qualified names of the layers swapped for :class:`QLinear`, in model order.
        kept: layers the recipe's keep rules left in float32, name -> reason
            (``"keep pattern '*norm*'"`` or ``"keep_last=2"``).
        not_quantized: layers with GEMM weights that ``quantize_model`` cannot quantize, name ->
            what they are (convolutions, ``nn.Linear`` subclasses, ``nn.MultiheadAttention``,
            recurrent layers, layers already quantized by an earlier call).
        unused_rules: patterns of ``recipe.rules`` that matched no quantized layer.
        quantized_weights: weight elements of the quantized layers.
        total_weights: weight elements of every layer counted above (quantized, kept and not
            quantized); ``fraction = quantized_weights / total_weights``.
    """

    recipe: str
    quantized: tuple[str, ...] = ()
    kept: dict[str, str] = field(default_factory=dict)
    not_quantized: dict[str, str] = field(default_factory=dict)
    unused_rules: tuple[str, ...] = ()
    quantized_weights: int = 0
    total_weights: int = 0

    @property
    def fraction(self) -> float:
        """Share of the GEMM weight elements that were quantized (1.0 for a model without any)."""
        return self.quantized_weights / self.total_weights if self.total_weights else 1.0

    @property
    def problems(self) -> list[str]:
        """What ``strict=True`` refuses: nothing quantized, layers left out for a reason other
        than the recipe's keep rules, rules that matched nothing."""
        out = []
        if not self.quantized:
            out.append("no layer was quantized")
        if self.not_quantized:
            out.append(f"{len(self.not_quantized)} layer(s) cannot be quantized")
        if self.unused_rules:
            out.append(f"rule pattern(s) {', '.join(map(repr, self.unused_rules))} matched no quantized layer")
        return out

    def summary(self) -> str:
        """One line: how many layers were quantized, and why the others were not."""
        n = len(self.quantized) + len(self.kept) + len(self.not_quantized)
        parts = [f"recipe {self.recipe!r} quantized {len(self.quantized)} of {n} layer(s) with "
                 f"GEMM weights ({100 * self.fraction:.0f}% of their weights)"]
        for prefix, reasons in (("kept in float32 by", self.kept), ("not quantized:", self.not_quantized)):
            by_reason: dict[str, list[str]] = {}
            for name, why in reasons.items():
                by_reason.setdefault(why, []).append(name or "(the model itself)")
            for why, names in by_reason.items():
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                parts.append(f"{prefix} {why}: {shown}")
        if self.unused_rules:
            parts.append(f"rule pattern(s) matching no quantized layer: {', '.join(map(repr, self.unused_rules))}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()


def _not_supported(module: nn.Module) -> str | None:
    """Why a module with GEMM weights is not quantized, or None when it is not such a module."""
    cls = type(module).__name__
    if isinstance(module, QLinear):
        return "already a QLinear (quantized earlier; left with its own spec)"
    if isinstance(module, nn.MultiheadAttention):
        return ("nn.MultiheadAttention: its projections run inside F.multi_head_attention_forward, "
                "not through nn.Linear; not quantized")
    if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
        return f"{cls}: a subclass of nn.Linear; only plain nn.Linear layers are swapped"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"nn.{cls}: convolutions are not quantized (yet)"
    if isinstance(module, nn.RNNBase):
        return f"nn.{cls}: recurrent layers are not quantized"
    if isinstance(module, nn.Bilinear):
        return "nn.Bilinear: not quantized"
    weight = getattr(module, "weight", None)
    if cls == "Conv1D" and weight is not None and weight.ndim == 2:   # transformers' GPT-2 layers
        return "Conv1D (a transposed linear of transformers): not an nn.Linear; not quantized"
    return None


def _weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=True) if p.ndim >= 2)


def quantize_model(model: nn.Module, recipe: Recipe | str, *, inplace: bool = True,
                   strict: bool = False) -> nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` that the recipe does not keep by QLinear.

    Which layers (the keep rules): plain ``nn.Linear`` modules only; one whose qualified name
    matches a ``recipe.keep`` pattern stays float32 (the built-ins keep ``*embed*``, ``*wte*``,
    ``*wpe*``, ``*lm_head*``, ``*head``, ``*norm*``, ``*ln*``: by name, so a projection named
    ``ln_proj`` is kept too); of the rest the last ``recipe.keep_last`` stay float32 (``nvfp4``:
    2). Each quantized layer takes ``recipe.spec_for(name)``. Parameters are shared, not copied.
    Each layer gets its own seed (``recipe.seed`` and its position), for Hadamard signs and
    stochastic rounding. Convolutions, ``nn.Linear`` subclasses, ``nn.MultiheadAttention`` and
    recurrent layers are not quantized; they are reported.

    Args:
        model: any ``nn.Module``.
        recipe: a :class:`Recipe`, a built-in name or a recipe file (see :func:`get_recipe`).
        inplace: modify ``model`` (default) or a deep copy of it.
        strict: raise instead of warning when no layer was quantized, a layer with GEMM weights
            cannot be quantized (see above), or a rule pattern matched no quantized layer.

    Returns:
        The model, with ``model.floatlab_recipe`` (the recipe) and ``model.floatlab_quantization``
        (a :class:`QuantizationReport`: what was quantized, what was kept and why).

    Warns:
        UserWarning: when no layer, or layers holding less than half of the GEMM weights, were
            quantized, when layers cannot be quantized, or when a rule matched nothing; the
            message is the report's summary.

    Raises:
        ValueError: with ``strict=True`` in the cases above (not for layers the keep rules keep);
            an unknown recipe.
    """
    from floatlab.nn.recipes import get_recipe
    recipe = get_recipe(recipe)
    if not inplace:
        import copy
        model = copy.deepcopy(model)
    linears, not_quantized, kept = [], {}, {}
    inside_unsupported: list[str] = []
    for n, m in model.named_modules():
        if any(n.startswith(p + ".") for p in inside_unsupported):
            continue            # e.g. the out_proj of an nn.MultiheadAttention
        why = _not_supported(m)
        if why is None and n == "" and type(m) is nn.Linear:
            why = ("the model itself is an nn.Linear and cannot replace itself; wrap it, e.g. "
                   "nn.Sequential(linear), or use QLinear.from_linear")
        if why is not None:
            not_quantized[n] = why
            inside_unsupported.append(n)
        elif type(m) is nn.Linear:
            pattern = recipe.keep_pattern(n)
            if pattern is not None:
                kept[n] = f"keep pattern {pattern!r}"
            else:
                linears.append((n, m))
    if recipe.keep_last:
        cut = max(0, len(linears) - recipe.keep_last)
        for n, _ in linears[cut:]:
            kept[n] = f"keep_last={recipe.keep_last}"
        linears = linears[:cut]
    modules = dict(model.named_modules())
    quantized_weights = sum(_weights(m) for _, m in linears)
    total = quantized_weights + sum(_weights(modules[n]) for n in (*kept, *not_quantized))
    for index, (name, lin) in enumerate(linears):
        spec = recipe.spec_for(name)
        seed = recipe.seed * 1_000_003 + index
        q = QLinear.from_linear(lin, spec, seed=seed, amax_history=recipe.amax_history)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    names = [n for n, _ in linears]
    unused = tuple(r.pattern for r in recipe.rules
                   if not any(fnmatch.fnmatchcase(n, r.pattern) for n in names))
    order = {n: i for i, n in enumerate(modules)}
    report = QuantizationReport(recipe.name, tuple(names), dict(sorted(kept.items(), key=lambda kv: order[kv[0]])),
                                not_quantized, unused, quantized_weights, total)
    model.floatlab_recipe = recipe
    model.floatlab_quantization = report
    if strict and report.problems:
        raise ValueError(f"quantize_model(strict=True): {'; '.join(report.problems)}. "
                         f"{report.summary()}")
    if report.problems or (total and report.fraction < LOW_FRACTION):
        hint = "; change the keep rules with recipe.replace(keep=..., keep_last=...)" if kept else ""
        warnings.warn(f"quantize_model: {report.summary()}. See model.floatlab_quantization{hint}",
                      UserWarning, stacklevel=2)
    return model


def quantization_report(model: nn.Module) -> QuantizationReport | None:
    """The report of the last :func:`quantize_model` call on ``model`` (``None`` if none)."""
    return getattr(model, "floatlab_quantization", None)


def quantized_layers(model: nn.Module) -> dict[str, QLinear]:
    """The QLinear modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}
