"""Built-in recipes (see docs/training.md for the sources and the choices made).

Keep rules (what :func:`floatlab.nn.quantize_model` leaves in float32): every built-in recipe
keeps, *by name*, each ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` whose qualified name matches
``*embed*``, ``*wte*``, ``*wpe*``, ``*lm_head*``, ``*head``, ``*norm*`` or ``*ln*``
(:data:`floatlab.nn.recipe.DEFAULT_KEEP`); ``nvfp4`` also keeps the last 2 remaining such
layers (``keep_last=2``, NVIDIA's recipe), so on a model with only 2 of them it quantizes
none. Only those plain module types are quantized (see :func:`floatlab.nn.quantize_model` for
what is left and why). ``quantize_model``
returns a report of what it did and warns when little or nothing was quantized; change the
rules with ``get_recipe("nvfp4").replace(keep_last=0, keep=())``.

Every recipe runs attention products (``qmatmul``) in bf16, as NVIDIA's NVFP4 recipe does
(``fp32`` excepted: nothing is quantized).

Recipes as papers run them (``*_paper``; see docs/training.md for what each paper says and
what is our reading):

* ``hif8_paper``, HiFloat8 (Luo et al. 2024, arXiv:2409.16626): rounding **per role** -- the
  tensors cast in the forward pass (inputs and weights, in every GEMM that reads them) round
  ties-away (``rna``, HiF8's TA), the gradients cast in the backward pass (the output-gradient
  operand of dgrad and wgrad) use hybrid rounding (``hybrid``, HR: TA where ``|E| < 4``, Huawei's
  self-stochastic rounding elsewhere; FORMATS.md section 1.3, from amct's golden model). Every
  operand has per-tensor **delayed** power-of-two scaling from the max of the last
  ``amax_history`` (16) amaxes, mapping it to 2^7 (HiF8 keeps 3 mantissa bits for ``|E| <= 3``).
  Gradients do not saturate: an overflow becomes Inf, so the dynamic loss scaler that the paper
  trains with (``floatlab train --loss-scale dynamic``) sees it and skips the step; a bf16 warm-up
  is ``--bf16-warmup N``.
* ``mxfp4_paper``: MXFP4 (E2M1, E8M0 scales, blocks of 32) with the stabilizers of the HiFloat4
  pre-training paper -- stochastic rounding of the gradients, a 16-point RHT on wgrad -- and a
  **truncation-free** scale: NVIDIA's RCEIL (``amax / 6`` rounded up to a power of two), so a
  block's max is never clipped, where OCP's floor rule clips maxima above ``6 * 2^floor``
  (``e2m1/e8m0/32/rceil``). ``mxfp4_rht_sr`` is the same with the OCP floor rule. The HiF4
  counterpart is ``hif4`` (SR + RHT); its scale is Huawei's reference rule, which can clip a
  block's max (S1 rounds to nearest in E6M2): a truncation-free HiF4 rule is not implemented.

Extremely-low-bit recipes (quantization-aware training with latent float32 weights, see
:mod:`floatlab.nn.lowbit`): ``binary`` and ``ternary`` quantize every layer's weights to
``{-a, +a}`` / ``{-a, 0, +a}`` (``a`` per output channel) and its inputs to int4 (current
per-tensor power-of-two scaling); ``elbnn`` and ``elbnn_binary`` are ELB-NN's hybrid: the first and
the last quantized layer in int8 (weights and inputs), ternary or binary weights with int4 inputs
in between (``Rule("@first")``/``Rule("@last")``). Their gradients stay float32 (dgrad and wgrad
use the quantized forward operands, so the gradient is the quantized network's, with the
straight-through estimator for the weights). They keep no layer by name (``keep=()``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from floatlab.nn.recipe import GemmSpec, LinearSpec, Recipe, Rule, Scaling, TensorSpec

BF16 = LinearSpec.uniform("bf16")


def _t(fmt, rounding=None, scaling=Scaling.NONE, scale_to=None):
    return TensorSpec(fmt, rounding, True, "contraction", scaling, scale_to)


def _fp4(fmt: str, weight: str, *, sr: bool, rht: int) -> LinearSpec:
    """A 4-bit linear: ``weight`` for W, ``fmt`` for inputs and gradients; optional SR on
    gradients and RHT on the wgrad GEMM (NVIDIA's stabilizers)."""
    g = _t(fmt, "sr" if sr else None)
    return LinearSpec(GemmSpec(_t(fmt), _t(weight)), GemmSpec(g, _t(weight)),
                      GemmSpec(g, _t(fmt), rht))


def _r(name, spec, description, **kw) -> Recipe:
    return Recipe(name, spec, attention=BF16, description=description, **kw)


def _qat(weight: str, act: str, act_scaling=Scaling.CURRENT, grad: str = "ste") -> LinearSpec:
    """Quantization-aware training: ``weight`` (a format or "binary"/"ternary") for W in fprop
    and dgrad, ``act`` for the input in fprop and wgrad; gradients in float32."""
    w = TensorSpec(weight, grad=grad) if weight in ("binary", "ternary") else _t(weight, None, Scaling.CURRENT)
    wd = TensorSpec(weight) if weight in ("binary", "ternary") else w
    x = _t(act, None, act_scaling)
    return LinearSpec(GemmSpec(x, w), GemmSpec(TensorSpec(), wd), GemmSpec(TensorSpec(), x))


def _elb(name: str, middle: str, description: str) -> Recipe:
    eight = _qat("int8", "int8")
    return _r(name, _qat(middle, "int4"), description, keep=(),
              rules=(Rule("@first", eight), Rule("@last", eight)))


def _builtin() -> dict[str, Recipe]:
    D, C = Scaling.DELAYED, Scaling.CURRENT
    i8 = _t("int8", None, C)
    i8g = _t("int8", "sr", C)
    int8 = LinearSpec(GemmSpec(i8, i8), GemmSpec(i8g, i8), GemmSpec(i8g, i8))
    fp8 = LinearSpec(GemmSpec(_t("e4m3", None, D), _t("e4m3", None, D)),
                     GemmSpec(_t("e5m2", None, D), _t("e4m3", None, D)),
                     GemmSpec(_t("e5m2", None, D), _t("e4m3", None, D)))
    hif8 = LinearSpec(GemmSpec(_t("hif8"), _t("hif8")),
                      GemmSpec(_t("hif8", None, C, 2.0 ** 7), _t("hif8")),
                      GemmSpec(_t("hif8", None, C, 2.0 ** 7), _t("hif8")))
    # HiFloat8 as its paper trains: TA forward, HR backward, delayed per-tensor scaling to 2^7
    h8_fwd = TensorSpec("hif8", "rna", True, "contraction", D, 2.0 ** 7)
    h8_grad = TensorSpec("hif8", "hybrid", False, "contraction", D, 2.0 ** 7)
    hif8_paper = LinearSpec(GemmSpec(h8_fwd, h8_fwd), GemmSpec(h8_grad, h8_fwd), GemmSpec(h8_grad, h8_fwd))
    recipes = [
        _r("bf16", BF16, "every linear GEMM operand in bf16 (RNE); the baseline"),
        _r("fp8", fp8, "e4m3 forward, e5m2 gradients, delayed per-tensor power-of-two scaling "
           "(amax history 16), as TransformerEngine's DelayedScaling(HYBRID)"),
        _r("hif8", hif8, "HiFloat8 forward and backward (ties-away, the reference cast); "
           "gradients with per-tensor power-of-two scaling of the amax to 2^7 (our stand-in for "
           "loss scaling: it puts the bulk where HiF8 has 3 mantissa bits)"),
        _r("mxfp8", LinearSpec.uniform("mxfp8_e4m3"),
           "MXFP8 E4M3 for every operand, blocks of 32 along each GEMM's contraction dimension"),
        _r("mxfp4", _fp4("mxfp4", "mxfp4", sr=False, rht=0),
           "MXFP4 for every operand, RNE, no stabilizers"),
        _r("mxfp4_rht_sr", _fp4("mxfp4", "mxfp4", sr=True, rht=16),
           "MXFP4 with stochastic rounding of gradients and a 16-point RHT on wgrad"),
        _r("nvfp4", _fp4("nvfp4", "nvfp4_2d", sr=True, rht=16),
           "NVIDIA's NVFP4 recipe: 16x16 2D weight tiles, SR on gradients, 16-point RHT on "
           "wgrad inputs, the last 2 linear layers in high precision", keep_last=2),
        _r("nvfp4_plain", _fp4("nvfp4", "nvfp4", sr=False, rht=0),
           "NVFP4 without stabilizers: 1x16 weight blocks, RNE, no RHT, all layers quantized"),
        _r("hif4", _fp4("hif4", "hif4", sr=True, rht=16),
           "HiFloat4 for every operand with SR on gradients and a 16-point RHT on wgrad"),
        _r("hif4_plain", _fp4("hif4", "hif4", sr=False, rht=0),
           "HiFloat4 without stabilizers (reference ties-away rounding, no RHT)"),
        _r("hif8_paper", hif8_paper, "HiFloat8 as its paper trains: ties-away for forward tensors, "
           "hybrid rounding for gradients (non-saturating, so overflow reaches the loss scaler), "
           "delayed per-tensor scaling (amax history 16) to 2^7; train with --loss-scale dynamic"),
        _r("mxfp4_paper", _fp4("e2m1/e8m0/32/rceil", "e2m1/e8m0/32/rceil", sr=True, rht=16),
           "MXFP4 with a truncation-free scale (RCEIL: the block max is never clipped), SR on "
           "gradients and a 16-point RHT on wgrad (the HiFloat4 pre-training paper's stabilizers)"),
        Recipe("fp32", LinearSpec(), description="nothing quantized: the float32 reference"),
        _r("int8", int8, "int8 for every operand with current per-tensor power-of-two scaling "
           "(amax to <= 127); RNE forward, stochastic rounding of the gradients"),
        _r("binary", _qat("binary", "int4"), "every layer: binary weights {-a,+a} (a = mean|w| per "
           "output channel, straight-through gradient), int4 inputs; gradients float32", keep=()),
        _r("ternary", _qat("ternary", "int4"), "every layer: ternary weights {-a,0,+a} (TWN threshold "
           "0.7 mean|w| per output channel, straight-through gradient), int4 inputs", keep=()),
        _elb("elbnn", "ternary", "ELB-NN hybrid: int8 first and last layers, ternary weights with "
             "int4 inputs in between"),
        _elb("elbnn_binary", "binary", "ELB-NN hybrid: int8 first and last layers, binary weights "
             "with int4 inputs in between"),
    ]
    return {r.name: r for r in recipes}


RECIPES: dict[str, Recipe] = _builtin()

# What `floatlab train` compares when no recipe is given: the GPT's formats (language modelling) and
# the image task's formats and extremely-low-bit recipes.
LM_RECIPES = ("bf16", "fp8", "hif8", "mxfp8", "mxfp4", "mxfp4_rht_sr", "nvfp4", "nvfp4_plain",
              "hif4", "hif4_plain")
IMAGE_RECIPES = ("fp32", "bf16", "fp8", "int8", "hif8", "binary", "ternary", "elbnn")


def list_recipes() -> list[str]:
    return list(RECIPES)


_SUFFIXES = (".json", ".yaml", ".yml")


def _is_path(text: str) -> bool:
    return (text.lower().endswith(_SUFFIXES) or os.sep in text or (os.altsep or os.sep) in text
            or Path(text).exists())


def get_recipe(recipe) -> Recipe:
    """A :class:`Recipe`: given one, a built-in name (case-insensitive: ``"NVFP4"``), or a path
    (``str`` or ``os.PathLike``) to a ``.json`` / ``.yaml`` / ``.yml`` recipe file.

    Raises:
        ValueError: an unknown name (with the closest built-in names), or a recipe file that
            cannot be read (:class:`~floatlab.nn.recipe.RecipeError`, naming the file and key).
        FileNotFoundError: a path (ends in .json/.yaml/.yml, or contains a path separator)
            that does not exist.
        TypeError: neither a Recipe, a string nor a path.
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, os.PathLike):
        return Recipe.load(recipe)
    if isinstance(recipe, str):
        key = recipe.strip().lower()
        if key in RECIPES:
            return RECIPES[key]
        if _is_path(recipe.strip()):
            return Recipe.load(recipe.strip())
        close = difflib.get_close_matches(key, list(RECIPES), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown recipe {recipe!r}.{hint} Built-in: {', '.join(RECIPES)}; "
                         "or a path to a .json/.yaml/.yml recipe file")
    raise TypeError(f"recipe must be a Recipe, a built-in name or a file path, got {type(recipe).__name__}")
