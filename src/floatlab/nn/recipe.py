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


class Gemm(str, enum.Enum):
    """The three GEMMs of a linear layer."""

    FPROP = "fprop"
    DGRAD = "dgrad"
    WGRAD = "wgrad"

    def __str__(self) -> str:
        return self.value


# The operand roles of each GEMM, in the order (a, b) of ``a @ b``.
OPERANDS = {Gemm.FPROP: ("input", "weight"), Gemm.DGRAD: ("grad_output", "weight"),
            Gemm.WGRAD: ("grad_output", "input")}


class Scaling(str, enum.Enum):
    """Per-tensor scaling applied before quantizing an operand (a power of two, so exact)."""

    NONE = "none"          # quantize the values as they are
    CURRENT = "current"    # scale from this tensor's amax
    DELAYED = "delayed"    # scale from the max of the last ``amax_history`` amaxes (TE style)

    def __str__(self) -> str:
        return self.value


class BlockAxis(str, enum.Enum):
    """Along which dimension 1D blocks run, relative to the GEMM."""

    CONTRACTION = "contraction"  # the reduction dimension of the GEMM (what hardware does)
    OUTER = "outer"              # the other dimension (an ablation; not GEMM-compatible)

    def __str__(self) -> str:
        return self.value


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
    """

    format: str | None = None
    rounding: str | None = None
    saturate: bool = True
    axis: BlockAxis = BlockAxis.CONTRACTION
    scaling: Scaling = Scaling.NONE
    scale_to: float | None = None

    def __post_init__(self) -> None:
        if self.scale_to is not None and not self.scale_to > 0:
            raise ValueError(f"scale_to must be positive, got {self.scale_to!r}")
        object.__setattr__(self, "axis", BlockAxis(self.axis))
        object.__setattr__(self, "scaling", Scaling(self.scaling))
        if self.format is not None:
            from floatlab.formats.registry import get_format
            from floatlab.rounding import resolve_rounding
            resolve_rounding(get_format(self.format), self.rounding, None)  # validates both

    @property
    def stochastic(self) -> bool:
        return self.rounding in ("sr", "sr_half", "hybrid")


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
    """Modules whose qualified name matches ``pattern`` (``fnmatch``) use ``linear``."""

    pattern: str
    linear: LinearSpec


DEFAULT_KEEP = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "*head", "*norm*", "*ln*")


@dataclass(frozen=True)
class Recipe:
    """A training recipe: module-name patterns -> :class:`LinearSpec`.

    Args:
        name: the recipe's name.
        default: the spec of every linear layer no rule matches.
        rules: ``(pattern, spec)`` overrides, first match wins.
        keep: name patterns of modules kept in high precision (float32, untouched).
        keep_last: additionally keep the last ``keep_last`` quantizable linear layers (in
            ``model.named_modules()`` order) in high precision (NVIDIA's NVFP4 recipe).
        attention: the spec used by :func:`floatlab.nn.qmatmul` for attention products
            (``None``: high precision). Its ``fprop`` quantizes the two factors of ``a @ b``.
        seed: seeds the Hadamard sign vectors and the stochastic-rounding generators.
        amax_history: length of the amax history for delayed scaling.
        description: free text.
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
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.amax_history < 1:
            raise ValueError("amax_history must be >= 1")

    def kept(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.keep)

    def spec_for(self, name: str) -> LinearSpec:
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return rule.linear
        return self.default

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    # ---- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown recipe keys: {', '.join(sorted(unknown))}")
        if "default" in d:
            d["default"] = _linear(d["default"])
        if "rules" in d:
            d["rules"] = tuple(Rule(r["pattern"], _linear(r["linear"])) for r in d["rules"])
        if d.get("attention") is not None:
            d["attention"] = _linear(d["attention"])
        return cls(**d)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml  # pyyaml: optional dependency
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        import yaml
        return cls.from_dict(yaml.safe_load(text))

    @classmethod
    def load(cls, path) -> "Recipe":
        """Read a recipe from a ``.json``, ``.yaml`` or ``.yml`` file."""
        from pathlib import Path
        p = Path(path)
        text = p.read_text()
        return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _strict(cls, d: dict) -> dict:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
    return d


def _tensor(d) -> TensorSpec:
    return TensorSpec(**_strict(TensorSpec, dict(d or {})))


def _gemm(d) -> GemmSpec:
    d = _strict(GemmSpec, dict(d or {}))
    return GemmSpec(_tensor(d.get("a")), _tensor(d.get("b")), int(d.get("hadamard", 0)))


def _linear(d) -> LinearSpec:
    d = _strict(LinearSpec, dict(d or {}))
    return LinearSpec(*(_gemm(d.get(g.value)) for g in Gemm))
