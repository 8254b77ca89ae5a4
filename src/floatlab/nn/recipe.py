"""Training recipes: which format, rounding and block axis every GEMM operand of a layer uses.

A linear layer ``y = x W^T`` runs three GEMMs, each with two operands of its own:

=========  =====================  ===============================  =====================
GEMM       computes               operands (a, b)                  contraction dimension
=========  =====================  ===============================  =====================
fprop      ``y  = x  @ W^T``      a = input x, b = weight W        in_features
dgrad      ``dx = dy @ W``        a = output grad dy, b = weight   out_features
wgrad      ``dW = dy^T @ x``      a = output grad dy, b = input x  tokens (batch x seq)
=========  =====================  ===============================  =====================

A :class:`TensorSpec` says how one operand is quantized; blocks run along the GEMM's
contraction dimension (``axis="contraction"``) unless the format tiles in 2D (``nvfp4_2d``,
weights). A :class:`GemmSpec` pairs the two operands and adds an optional random Hadamard
transform (RHT) along the contraction dimension. A :class:`LinearSpec` holds the three GEMMs,
and a :class:`Recipe` maps module-name patterns (``fnmatch``) to linear specs, with a list of
modules kept in high precision. Everything is a frozen dataclass with enums, serializable to a
plain dict, JSON and YAML (``Recipe.from_yaml(r.to_yaml()) == r``).
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
from dataclasses import dataclass, field

from floatlab.formats.base import Choice


# Weight quantizers of floatlab.nn.lowbit that a TensorSpec may name instead of a format.
WEIGHT_QUANTIZERS = ("binary", "ternary")


class Gemm(Choice):
    """The three GEMMs of a linear layer."""

    FPROP = "fprop"
    DGRAD = "dgrad"
    WGRAD = "wgrad"

    def __str__(self) -> str:
        return self.value


# The operand roles of each GEMM, in the order (a, b) of ``a @ b``.
OPERANDS = {Gemm.FPROP: ("input", "weight"), Gemm.DGRAD: ("grad_output", "weight"),
            Gemm.WGRAD: ("grad_output", "input")}


class Scaling(Choice):
    """Per-tensor scaling applied before quantizing an operand (a power of two, so exact)."""

    NONE = "none"          # quantize the values as they are
    CURRENT = "current"    # scale from this tensor's amax
    DELAYED = "delayed"    # scale from the max of the last ``amax_history`` amaxes (TE style)

    def __str__(self) -> str:
        return self.value


class BlockAxis(Choice):
    """Along which dimension 1D blocks run, relative to the GEMM."""

    CONTRACTION = "contraction"  # the reduction dimension of the GEMM (what hardware does)
    OUTER = "outer"              # the other dimension (an ablation; not GEMM-compatible)

    def __str__(self) -> str:
        return self.value


def _enum(cls, value, key: str):
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{key} must be one of {', '.join(m.value for m in cls)}, got {value!r}") from None


@dataclass(frozen=True)
class TensorSpec:
    """How one GEMM operand is quantized.

    Args:
        format: a floatlab format name (``"e4m3"``, ``"hif8"``, ``"mxfp4"``, ``"nvfp4_2d"``...);
            ``None`` leaves the operand in float32.
        rounding: a rounding-mode name (``"rne"``, ``"sr"``...); ``None`` takes the format's default.
        saturate: clamp overflow to the format's max (the usual choice in training).
        axis: block axis relative to the GEMM (ignored by scalar and 2D-tile formats).
        scaling: per-tensor scaling (:class:`Scaling`).
        scale_to: the value the amax is scaled to (``None``: the format's max, or the element max
            of a block format). Tapered formats want less: HiF8 has 3 mantissa bits only for
            ``|E| <= 3``, so its recipe maps the amax to 2^7 and the bulk lands near 1.
        pad: block formats: a contraction length that is not a multiple of the block is
            zero-padded (``True``, the default) or refused (``False``: ``quantize_model`` names
            the layer whose reduction size does not fit).
        grad: the weight gradient of a ``"binary"``/``"ternary"`` weight operand (fprop's ``b``):
            ``"ste"`` (straight through) or ``"clipped"`` (zero where ``|w| > 1``, BNN's hardtanh
            STE). Every other operand's gradient is the straight-through one (the GEMMs of the
            backward pass use the unquantized saved tensors' quantized copies, see
            :mod:`floatlab.nn.functional`).

    ``format`` may also name a weight quantizer of :mod:`floatlab.nn.lowbit` (``"binary"``:
    ``{-a, +a}``, ``"ternary"``: ``{-a, 0, +a}``, ``a`` per output channel); they quantize
    weight operands only (fprop's and dgrad's ``b``) and take no rounding mode or scaling.
    """

    format: str | None = None
    rounding: str | None = None
    saturate: bool = True
    axis: BlockAxis = BlockAxis.CONTRACTION
    scaling: Scaling = Scaling.NONE
    scale_to: float | None = None
    pad: bool = True
    grad: str = "ste"

    # fields added after recipes were first stored: left out of to_dict() at their default, so
    # the dict (and the run configuration floatlab train compares) of an older recipe is unchanged
    _OMIT_DEFAULT = ("pad", "grad")

    def __post_init__(self) -> None:
        if self.format is not None and not isinstance(self.format, str):
            raise ValueError(f"format must be a format name or null, got {self.format!r}")
        if self.rounding is not None and not isinstance(self.rounding, str):
            raise ValueError(f"rounding must be a rounding-mode name or null, got {self.rounding!r}")
        if not isinstance(self.saturate, bool):
            raise ValueError(f"saturate must be true or false, got {self.saturate!r}")
        if self.scale_to is not None and (isinstance(self.scale_to, bool)
                                          or not isinstance(self.scale_to, (int, float))
                                          or not self.scale_to > 0):
            raise ValueError(f"scale_to must be a positive number or null, got {self.scale_to!r}")
        if not isinstance(self.pad, bool):
            raise ValueError(f"pad must be true or false, got {self.pad!r}")
        if self.grad not in ("ste", "clipped"):
            raise ValueError(f"grad must be 'ste' or 'clipped', got {self.grad!r}")
        object.__setattr__(self, "axis", _enum(BlockAxis, self.axis, "axis"))
        object.__setattr__(self, "scaling", _enum(Scaling, self.scaling, "scaling"))
        if self.format is not None and self.format.strip().lower() in WEIGHT_QUANTIZERS:
            object.__setattr__(self, "format", self.format.strip().lower())
            if self.rounding is not None or self.scaling is not Scaling.NONE:
                raise ValueError(f"the {self.format!r} weight quantizer takes no rounding mode or scaling "
                                 "(its scale is per output channel); leave rounding and scaling out")
            return
        if self.grad != "ste":
            raise ValueError(f"grad={self.grad!r} is available for the binary and ternary weight quantizers "
                             f"only, not for the format {self.format!r}")
        if self.rounding is not None:
            # one spelling per mode ("SR", "stochastic" -> "sr"), so `stochastic`, equality and
            # the run configurations floatlab train compares see the mode, not its spelling
            from floatlab.rounding import parse_rounding
            object.__setattr__(self, "rounding", parse_rounding(self.rounding).value)
        if self.format is not None:
            from floatlab.formats.registry import get_format
            from floatlab.rounding import resolve_rounding
            object.__setattr__(self, "format", self.format.strip().lower())
            resolve_rounding(get_format(self.format), self.rounding, None)  # validates both

    @property
    def stochastic(self) -> bool:
        return self.rounding in ("sr", "sr_half", "hybrid")

    @property
    def quantizer(self) -> bool:
        """Is ``format`` a weight quantizer (``"binary"``, ``"ternary"``) rather than a format?"""
        return self.format in WEIGHT_QUANTIZERS


@dataclass(frozen=True)
class GemmSpec:
    """The two operands of one GEMM and an optional random Hadamard transform.

    ``hadamard`` is the RHT size (0 = off; a power of two in 16..256). Both operands are
    multiplied by the same seeded orthogonal matrix along the contraction dimension before
    quantization, so the exact product is unchanged and only the quantization error moves.
    """

    a: TensorSpec = TensorSpec()
    b: TensorSpec = TensorSpec()
    hadamard: int = 0

    def __post_init__(self) -> None:
        for role in ("a", "b"):
            if not isinstance(getattr(self, role), TensorSpec):
                raise ValueError(f"GemmSpec.{role} must be a TensorSpec, got {getattr(self, role)!r}")
        h = self.hadamard
        if isinstance(h, bool) or not isinstance(h, int) or (h != 0 and (h < 16 or h > 256 or h & (h - 1))):
            raise ValueError(f"hadamard must be 0 (off) or a power of two in 16..256, got {h!r}")

    @property
    def quantized(self) -> bool:
        return self.a.format is not None or self.b.format is not None or self.hadamard > 0


@dataclass(frozen=True)
class LinearSpec:
    """The three GEMMs of a linear layer."""

    fprop: GemmSpec = GemmSpec()
    dgrad: GemmSpec = GemmSpec()
    wgrad: GemmSpec = GemmSpec()

    def __post_init__(self) -> None:
        for g in Gemm:
            gs = getattr(self, g.value)
            if not isinstance(gs, GemmSpec):
                continue
            for i, role in enumerate(OPERANDS[g]):
                t = (gs.a, gs.b)[i]
                if isinstance(t, TensorSpec) and t.quantizer and role != "weight":
                    raise ValueError(f"{g.value}.{'ab'[i]}: the {t.format!r} weight quantizer applies to "
                                     f"weight operands only (fprop.b, dgrad.b), not to the {role}")
                if isinstance(t, TensorSpec) and t.grad != "ste" and not (g is Gemm.FPROP and i == 1):
                    raise ValueError(f"{g.value}.{'ab'[i]}: grad={t.grad!r} belongs on fprop.b, the weight "
                                     "operand whose gradient it defines")

    def gemm(self, which: Gemm) -> GemmSpec:
        return getattr(self, Gemm(which).value)

    @classmethod
    def uniform(cls, forward: str | None, backward: str | None = None, *, weight: str | None = None,
                grad_rounding: str | None = None, rounding: str | None = None,
                scaling: Scaling = Scaling.NONE, wgrad_hadamard: int = 0,
                saturate: bool = True) -> "LinearSpec":
        """A common shape: ``forward`` for inputs, ``weight`` (default ``forward``) for weights,
        ``backward`` (default ``forward``) for output gradients; gradients may round differently."""
        backward = forward if backward is None else backward
        weight = forward if weight is None else weight
        kw = dict(saturate=saturate, scaling=scaling)
        x = TensorSpec(forward, rounding, **kw)
        xw = TensorSpec(forward, rounding, **kw)  # the input again, as the wgrad operand
        w = TensorSpec(weight, rounding, **kw)
        g = TensorSpec(backward, grad_rounding if grad_rounding is not None else rounding, **kw)
        return cls(GemmSpec(x, w), GemmSpec(g, w), GemmSpec(g, xw, wgrad_hadamard))


@dataclass(frozen=True)
class Rule:
    """Modules whose qualified name matches ``pattern`` (``fnmatch``) use ``linear``.

    Two patterns name a position instead: ``"@first"`` and ``"@last"`` match the first and the
    last layer that :func:`~floatlab.nn.quantize_model` quantizes (in ``named_modules()`` order,
    after the keep rules), whatever their names: ELB-NN's 8-bit first and last layers.
    """

    pattern: str
    linear: LinearSpec


DEFAULT_KEEP = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "*head", "*norm*", "*ln*")


class RecipeError(ValueError):
    """A recipe (a dict, or a ``.json`` / ``.yaml`` file) that cannot be read; the message names
    the file and the key (``default.fprop.a.format``) and says what was expected."""


@dataclass(frozen=True)
class Recipe:
    """A training recipe: module-name patterns -> :class:`LinearSpec`.

    Which layers :func:`floatlab.nn.quantize_model` quantizes (the *keep rules*): only plain
    ``nn.Linear`` modules are candidates; a candidate whose qualified name matches one of
    ``keep`` (``fnmatch``, case-sensitive) stays in float32; of the remaining ones the last
    ``keep_last`` (in ``model.named_modules()`` order) stay in float32 too; every other one is
    swapped for a :class:`~floatlab.nn.QLinear` with ``spec_for(name)``. The default ``keep``
    (:data:`DEFAULT_KEEP`) is by *name*: a linear called ``*norm*``, ``*ln*``, ``*head`` or
    ``*embed*`` is kept even if it is an ordinary projection. Convolutions and other layer
    types are not quantized; ``quantize_model`` reports every layer it left alone.

    Args:
        name: the recipe's name.
        default: the spec of every linear layer no rule matches.
        rules: ``(pattern, spec)`` overrides, first match wins.
        keep: name patterns of modules kept in high precision (float32, untouched); default
            :data:`DEFAULT_KEEP` (embeddings, the LM head, norms).
        keep_last: additionally keep the last ``keep_last`` quantizable linear layers (in
            ``model.named_modules()`` order) in high precision (NVIDIA's NVFP4 recipe uses 2; on
            a model with 2 linear layers it quantizes none).
        attention: the spec used by :func:`floatlab.nn.qmatmul` for attention products
            (``None``: high precision). Its ``fprop`` quantizes the two factors of ``a @ b``. It
            acts only where a model calls ``qmatmul`` (the GPT of ``floatlab.train`` does).
        seed: seeds the Hadamard sign vectors and the stochastic-rounding generators.
        amax_history: length of the amax history for delayed scaling.
        description: free text.

    Raises:
        ValueError: a field of the wrong type or out of range (``keep`` given as one string,
            ``keep_last < 0``, ``amax_history < 1``...).
    """

    name: str
    default: LinearSpec = LinearSpec()
    rules: tuple[Rule, ...] = ()
    keep: tuple[str, ...] = DEFAULT_KEEP
    keep_last: int = 0
    attention: LinearSpec | None = None
    seed: int = 0
    amax_history: int = 16
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.default, LinearSpec):
            raise ValueError(f"default must be a LinearSpec, got {self.default!r}")
        if self.attention is not None and not isinstance(self.attention, LinearSpec):
            raise ValueError(f"attention must be a LinearSpec or None, got {self.attention!r}")
        if isinstance(self.keep, str):   # tuple("*head") would keep every module ('*')
            raise ValueError(f"keep must be a list of name patterns, got the string {self.keep!r}")
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "keep", tuple(self.keep))
        for p in self.keep:
            if not isinstance(p, str):
                raise ValueError(f"keep must be a list of name patterns (strings), got {p!r} in it")
        for r in self.rules:
            if not isinstance(r, Rule):
                raise ValueError(f"rules must be Rule(pattern, linear) objects, got {r!r}")
        for key, low in (("keep_last", 0), ("seed", 0), ("amax_history", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {v!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {self.description!r}")

    def kept(self, name: str) -> bool:
        return self.keep_pattern(name) is not None

    def keep_pattern(self, name: str) -> str | None:
        """The first ``keep`` pattern that matches ``name``, or ``None``."""
        return next((p for p in self.keep if fnmatch.fnmatchcase(name, p)), None)

    def spec_for(self, name: str, index: int | None = None, count: int | None = None) -> LinearSpec:
        """The spec of the layer ``name``: the first rule that matches, else ``default``.
        ``index``/``count`` (its position among the quantized layers) let ``"@first"`` and
        ``"@last"`` rules match."""
        for rule in self.rules:
            if rule_matches(rule.pattern, name, index, count):
                return rule.linear
        return self.default

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    # ---- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """The inverse of :meth:`to_dict`. ``name`` and ``default`` are required (a recipe
        without ``default`` would leave every layer in float32); other keys take their defaults.
        Raises :class:`RecipeError` naming the key at fault."""
        if not isinstance(d, dict):
            raise RecipeError("a recipe is a mapping with the keys name, default and optionally "
                              f"rules, keep, keep_last, attention, seed, amax_history, description; "
                              f"got {_kind(d)}")
        d = dict(d)
        _strict(cls, d, "recipe")
        missing = [k for k in ("name", "default") if k not in d]
        if missing:
            raise RecipeError(f"missing recipe key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)} (name: a string; default: the linear spec of "
                              "every layer no rule matches, with fprop/dgrad/wgrad; see "
                              "docs/training.md)")
        d["default"] = _linear(d["default"], "default")
        if "rules" in d:
            if not isinstance(d["rules"], (list, tuple)):
                raise RecipeError(f"rules must be a list of {{pattern, linear}} mappings, got {_kind(d['rules'])}")
            rules = []
            for i, r in enumerate(d["rules"]):
                where = f"rules[{i}]"
                if not isinstance(r, dict):
                    raise RecipeError(f"{where} must be a mapping with pattern and linear, got {_kind(r)}")
                _strict(Rule, r, where)
                if not isinstance(r.get("pattern"), str) or "linear" not in r:
                    raise RecipeError(f"{where} needs pattern (a string) and linear (a linear spec)")
                rules.append(Rule(r["pattern"], _linear(r["linear"], f"{where}.linear")))
            d["rules"] = tuple(rules)
        if d.get("attention") is not None:
            d["attention"] = _linear(d["attention"], "attention")
        if "keep" in d and not isinstance(d["keep"], (list, tuple)):
            raise RecipeError(f"keep must be a list of name patterns, got {_kind(d['keep'])}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as err:
            raise RecipeError(str(err)) from None

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecipeError(f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        return cls.from_dict(d)

    def to_yaml(self) -> str:
        yaml = _yaml()
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        yaml = _yaml()
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError(f"not valid YAML ({where}{problem})") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a recipe from a ``.json``, ``.yaml`` or ``.yml`` file.

        Raises:
            FileNotFoundError: no such file (or it is a folder).
            RecipeError: another suffix, text that is not JSON/YAML, a missing or unknown key, a
                value of the wrong type, an unknown format or rounding mode; the message starts
                with the file's name.
        """
        from pathlib import Path
        p = Path(path)
        if not p.is_file():
            what = "is a folder, not" if p.is_dir() else "does not exist; expected"
            raise FileNotFoundError(f"recipe file {str(p)!r} {what} a .json/.yaml/.yml file")
        suffix = p.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise RecipeError(f"{p}: a recipe file ends in .json, .yaml or .yml, not {p.suffix or '(no suffix)'!r}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecipeError(f"{p}: not a text file (not UTF-8)") from None
        try:
            return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)
        except RecipeError as err:
            raise RecipeError(f"{p}: {err}") from None


POSITIONS = ("@first", "@last")


def rule_matches(pattern: str, name: str, index: int | None = None, count: int | None = None) -> bool:
    """Does a rule pattern match the layer ``name`` at position ``index`` of ``count``?"""
    if pattern == "@first":
        return index == 0
    if pattern == "@last":
        return index is not None and count is not None and index == count - 1
    return fnmatch.fnmatchcase(name, pattern)


def _yaml():
    try:
        import yaml  # pyyaml: optional dependency
    except ModuleNotFoundError:
        raise RecipeError("YAML recipes need pyyaml: pip install pyyaml "
                          "(or pip install 'floatlab[train]'); JSON recipes work without it") from None
    return yaml


def _kind(v) -> str:
    return "nothing (an empty document)" if v is None else f"{type(v).__name__} {v!r}"


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        omit = getattr(obj, "_OMIT_DEFAULT", ())
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.name in omit and getattr(obj, f.name) == f.default)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _strict(cls, d: dict, where: str) -> dict:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise RecipeError(f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: "
                          f"{', '.join(sorted(map(str, unknown)))} (known: {known})")
    return d


def _mapping(d, where: str, what: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecipeError(f"{where} must be a mapping ({what}), got {_kind(d)}")
    return dict(d)


def _tensor(d, where: str) -> TensorSpec:
    d = _strict(TensorSpec, _mapping(d, where, "format, rounding, saturate, axis, scaling, scale_to, pad, grad"), where)
    try:
        return TensorSpec(**d)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: {err}") from None


def _gemm(d, where: str) -> GemmSpec:
    d = _strict(GemmSpec, _mapping(d, where, "a, b, hadamard"), where)
    try:
        return GemmSpec(_tensor(d.get("a"), f"{where}.a"), _tensor(d.get("b"), f"{where}.b"),
                        d.get("hadamard", 0))
    except (TypeError, ValueError) as err:
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(f"{where}: {err}") from None


def _linear(d, where: str = "linear") -> LinearSpec:
    d = _strict(LinearSpec, _mapping(d, where, "fprop, dgrad, wgrad"), where)
    gemms = [_gemm(d.get(g.value), f"{where}.{g.value}") for g in Gemm]
    try:
        return LinearSpec(*gemms)
    except ValueError as err:
        raise RecipeError(f"{where}.{err}") from None
