"""``quantize_model``: swap a model's ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` modules for
:class:`QLinear`, :class:`QConv1d`, :class:`QConv2d` (no global patching), and say what was and was
not quantized (:class:`QuantizationReport`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

from floatlab.nn.functional import block_fit_message, block_length
from floatlab.nn.modules import QUANTIZED_MODULES, QConv1d, QConv2d, QLinear
from floatlab.nn.recipe import Gemm, LinearSpec, Recipe, rule_matches

# the layer types quantize_model swaps (exactly these types, not subclasses) and their replacements
SWAPS = {nn.Linear: QLinear, nn.Conv1d: QConv1d, nn.Conv2d: QConv2d}

# Below this share of the GEMM weights quantized, quantize_model warns (the rest runs in float32).
LOW_FRACTION = 0.5


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_model` did to a model (``model.floatlab_quantization``).

    Attributes:
        recipe: the recipe's name.
        quantized: qualified names of the layers swapped for :class:`QLinear`, :class:`QConv1d`
            or :class:`QConv2d`, in model order.
        kept: layers the recipe's keep rules left in float32, name -> reason
            (``"keep pattern '*norm*'"`` or ``"keep_last=2"``).
        not_quantized: layers with GEMM weights that ``quantize_model`` cannot quantize, name ->
            what they are (3D and transposed convolutions, subclasses of ``nn.Linear``/``nn.Conv*d``,
            ``nn.MultiheadAttention``, recurrent layers, layers already quantized by an earlier call).
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
        if n == 0:          # not "0 of 0 layer(s) (100% of their weights)"
            parts = [f"recipe {self.recipe!r} quantized nothing: the model has no layer with GEMM weights"]
        else:
            share = f" ({100 * self.fraction:.0f}% of their weights)" if self.total_weights else ""
            parts = [f"recipe {self.recipe!r} quantized {len(self.quantized)} of {n} layer(s) with "
                     f"GEMM weights{share}"]
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
    if isinstance(module, QUANTIZED_MODULES):
        return f"already a {cls} (quantized earlier; left with its own spec)"
    if isinstance(module, nn.MultiheadAttention):
        return ("nn.MultiheadAttention: its projections run inside F.multi_head_attention_forward, "
                "not through nn.Linear; not quantized")
    if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
        return f"{cls}: a subclass of nn.Linear; only plain nn.Linear layers are swapped"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"nn.{cls}: transposed convolutions are not quantized"
    if isinstance(module, nn.Conv3d):
        return f"nn.{cls}: 3D convolutions are not quantized (Conv1d and Conv2d are)"
    if isinstance(module, nn.modules.conv._ConvNd) and type(module) not in SWAPS:
        return f"{cls}: a subclass of a convolution; only plain nn.Conv1d/nn.Conv2d layers are swapped"
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


def reduction_sizes(module: nn.Module) -> dict[Gemm, int]:
    """The contraction lengths of a layer's fprop and dgrad GEMMs known before any input (wgrad's
    is the number of tokens or output positions): ``in_features``/``out_features`` for a linear,
    ``C_in/groups * prod(kernel)`` and ``C_out/groups`` for a convolution."""
    if isinstance(module, nn.Linear):
        return {Gemm.FPROP: module.in_features, Gemm.DGRAD: module.out_features}
    k = 1
    for v in module.kernel_size:
        k *= v
    return {Gemm.FPROP: module.in_channels // module.groups * k,
            Gemm.DGRAD: module.out_channels // module.groups}


def check_block_fit(name: str, module: nn.Module, spec: LinearSpec) -> None:
    """``ValueError`` naming the layer when an operand of its fprop or dgrad GEMM turns block
    padding off (``pad=False``) and the GEMM's reduction size is not a multiple of the block."""
    for gemm, n in reduction_sizes(module).items():
        gs = spec.gemm(gemm)
        for t in (gs.a, gs.b):
            if t.format is None or t.pad or t.quantizer:
                continue
            b = block_length(t.format)
            if b is not None and n % b:
                raise ValueError(block_fit_message(name, gemm, n, t.format, b))


def quantize_model(model: nn.Module, recipe: Recipe | str, *, inplace: bool = True,
                   strict: bool = False) -> nn.Module:
    """Replace the ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layers of ``model`` that the
    recipe does not keep by QLinear, QConv1d and QConv2d.

    Which layers (the keep rules): plain ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` modules
    only; one whose qualified name
    matches a ``recipe.keep`` pattern stays float32 (the built-ins keep ``*embed*``, ``*wte*``,
    ``*wpe*``, ``*lm_head*``, ``*head``, ``*norm*``, ``*ln*``: by name, so a projection named
    ``ln_proj`` is kept too); of the rest the last ``recipe.keep_last`` stay float32 (``nvfp4``:
    2). Each quantized layer takes ``recipe.spec_for(name)`` (``"@first"``/``"@last"`` rules match
    the first and last quantized layer). Parameters are shared, not copied. Each layer gets its
    own seed (``recipe.seed`` and its position), for Hadamard signs and stochastic rounding. 3D and
    transposed convolutions, subclasses, ``nn.MultiheadAttention`` and recurrent layers are not
    quantized; they are reported.

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
            an unknown recipe; a layer whose fprop or dgrad reduction size is not a multiple of a
            block format's block where the recipe turns padding off (``pad=False``; the message
            names the layer), checked before any layer is swapped.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    from floatlab.nn.recipes import get_recipe
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
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
        if why is None and n == "" and type(m) in SWAPS:
            why = (f"the model itself is an nn.{type(m).__name__} and cannot replace itself; wrap it, e.g. "
                   "nn.Sequential(layer), or use QLinear.from_linear / QConv2d.from_conv")
        if why is not None:
            not_quantized[n] = why
            inside_unsupported.append(n)
        elif type(m) in SWAPS:
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
    specs = [recipe.spec_for(name, index, len(linears)) for index, (name, _) in enumerate(linears)]
    for (name, layer), spec in zip(linears, specs):
        check_block_fit(name, layer, spec)
    for index, ((name, layer), spec) in enumerate(zip(linears, specs)):
        seed = recipe.seed * 1_000_003 + index
        if type(layer) is nn.Linear:
            q = QLinear.from_linear(layer, spec, seed=seed, amax_history=recipe.amax_history)
        else:
            q = SWAPS[type(layer)].from_conv(layer, spec, seed=seed, amax_history=recipe.amax_history)
        q.qstate.name = name
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    names = [n for n, _ in linears]
    unused = tuple(r.pattern for r in recipe.rules
                   if not any(rule_matches(r.pattern, n, i, len(names)) for i, n in enumerate(names)))
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


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The QLinear, QConv1d and QConv2d modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED_MODULES)}
