"""The one place where a number format enters post-training quantization.

``fake_quant(t, spec, role)`` rounds a weight (``role="weight"``, shape ``(out, in)``) or an
activation (``role="act"``, shape ``(..., in)``) into ``spec.format``. RTN, GPTQ, AWQ,
SmoothQuant and rotation call nothing else (GPTQ also uses :func:`frozen_grid`, the same
rounding with the scales computed once per group of columns). Conventions:

* **Block formats** (MX, NVFP4, HiF4, ...) compute their own scales, blocks along the GEMM
  contraction dimension: a weight's ``in_features`` (its last axis) and an activation's last
  axis. A length that is not a multiple of the block is zero-padded for the scales
  (``pad=False`` refuses it with an error instead).
* **16-bit floats** (bf16, fp16) are applied as they are, no scale.
* **Other scalar formats** (int8, int4, e4m3, e5m2, hif8, ...) get an absmax scale: per output
  channel (per row) for weights, or per group of ``group_size`` input columns if set; per token
  (the last axis) for activations, computed dynamically in each forward pass. The row's absmax
  is mapped to the format's *scale target*: its largest value, except for the tapered HiF8,
  whose absmax is mapped to 15, the largest value that still has 3 mantissa bits (mapping it to
  2^15 would put every value in HiF8's 1-mantissa-bit binades: 19.8 dB instead of 31.7 dB SQNR
  on MiniLM's layer-0 weights). ``scale_target="max"`` forces the format's max everywhere.
  Values are saturated at the format's max (never Inf/NaN).

* **Weight codecs** (:mod:`floatlab.codecs`): a spec may name a codec instead of a format
  (``"int3_asym_g128"``, ``"binary_mean"``, ``"ternary"``, ``"binary_mean_salient20"``,
  ``"ptq161"``, ...): asymmetric integer grids with zero points, binary and ternary weights and
  salient-channel masks, for weights only. Every format is a codec too
  (:class:`floatlab.codecs.FormatCodec`, which holds the conventions above): ``spec.codec``.

The rounding is :func:`floatlab.quantize` itself (its fused fast path); GPTQ's frozen block
scales come from :mod:`floatlab.ptq.grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

import floatlab
from floatlab.codecs import FormatCodec, WeightCodec, get_codec
from floatlab.codecs.format import SCALE_TARGETS, grouped_last as _grouped  # noqa: F401  (re-exported)
from floatlab.plain.blocking import to_blocks
from floatlab.ptq.grid import block_grid

ROLES = ("weight", "act")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor role is quantized.

    Args:
        format: a floatlab format name (``"int8"``, ``"hif4"``, ``"mxfp4"``, ``"e4m3"``, ...) or a
            weight codec name (``"int3_asym_g128"``, ``"binary_mean"``, ``"ternary"``,
            ``"ptq161"``; see :mod:`floatlab.codecs.names`), whose groups are part of the name.
        group_size: scalar formats only: one scale per ``group_size`` input columns (weights) or
            last-axis values (activations) instead of one per row/token.
        scale_target: ``None`` (the convention above), ``"max"``, or a number.
        rounding: element rounding mode; ``None`` is the format's default.
        pad: block formats: pad a length that is not a multiple of the block.
    """

    format: str
    group_size: int | None = None
    scale_target: float | str | None = None
    rounding: str | None = None
    pad: bool = True

    def __post_init__(self) -> None:
        codec = get_codec(self.format, self.pad)        # a codec name (bad values raise CodecError)
        if codec is not None:
            for field_, value in (("group_size", self.group_size), ("scale_target", self.scale_target),
                                  ("rounding", self.rounding)):
                if value is not None:
                    raise ValueError(f"{self.format!r} is a weight codec: {field_} does not apply (codecs round to "
                                     "nearest, ties to even; groups are part of the name, e.g. int3_asym_g128)")
            return
        try:
            fmt = floatlab.get_format(self.format)
        except ValueError as err:
            raise ValueError(f"{err} Weight codecs: int{{b}}_asym[_g{{G}}], binary[_mean][_cf][_g{{G}}], "
                             "ternary[_g{G}], <low>_salient<P>[wmag|rand][_<wide>], ptq161.") from None
        if self.group_size is not None:
            if fmt.kind == "block":
                raise ValueError(f"{self.format!r} is a block format: its block ({fmt.block}) sets the "
                                 "groups; group_size applies to scalar formats")
            if int(self.group_size) < 1:
                raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    @cached_property
    def is_codec(self) -> bool:
        """``format`` names a weight codec (not a floatlab format)."""
        return get_codec(self.format, self.pad) is not None

    @cached_property
    def codec(self) -> WeightCodec:
        """The weight codec of this spec: the named codec, or a format under the conventions
        (:class:`floatlab.codecs.FormatCodec`)."""
        return get_codec(self.format, self.pad) or FormatCodec(self.format, self.group_size, self.scale_target,
                                                              self.rounding, self.pad)

    @property
    def fmt(self):
        if self.is_codec:
            raise ValueError(f"{self.format!r} is a weight codec, not a floatlab format (use spec.codec)")
        return floatlab.get_format(self.format)

    @property
    def is_block(self) -> bool:
        return not self.is_codec and self.fmt.kind == "block"

    @property
    def scaled(self) -> bool:
        """Scalar formats narrower than 16 bits get an absmax scale."""
        if self.is_codec:
            return False
        f = self.fmt
        return f.kind == "scalar" and f.bits < 16

    @property
    def target(self) -> float:
        """The value a scaled format's absmax maps to (see the module docstring)."""
        return self.codec.target

    @property
    def bits_per_value(self) -> float:
        """Nominal bits per value; a codec's on a 4096 x 4096 weight (its amortized per-row and
        per-column tensors depend on the shape: ``spec.codec.bits(shape)`` is exact)."""
        if self.is_codec:
            return self.codec.bits_per_weight((4096, 4096))
        f = self.fmt
        return float(getattr(f, "bits_per_value", f.bits))

    def to_dict(self) -> dict:
        return {"format": self.format, "group_size": self.group_size, "scale_target": self.scale_target,
                "rounding": self.rounding, "pad": self.pad}

    @classmethod
    def from_dict(cls, d: dict | None) -> "QuantSpec | None":
        return None if d is None else cls(**d)

    def __str__(self) -> str:
        g = f"/g{self.group_size}" if self.group_size else ""
        return f"{self.format}{g}"


def as_spec(spec) -> QuantSpec | None:
    if spec is None or isinstance(spec, QuantSpec):
        return spec
    if isinstance(spec, str):
        return QuantSpec(spec)
    if isinstance(spec, dict):
        return QuantSpec(**spec)
    raise TypeError(f"expected a QuantSpec, a format name or None, got {type(spec).__name__}")


def absmax_scale(t: torch.Tensor, spec: QuantSpec, role: str) -> torch.Tensor:
    """The scale tensor (broadcastable to ``t``, or to ``t`` viewed in groups) for a scalar spec."""
    return spec.codec.fit(t)["scale"]


def fake_quant(t: torch.Tensor, spec, role: str = "weight", *, stats: dict | None = None) -> torch.Tensor:
    """Fake-quantize ``t`` (a weight ``(out, in)`` or an activation ``(..., in)``) per ``spec``:
    ``spec.codec.quantize(t)`` in ``t``'s dtype. ``stats``: calibration statistics for a weight
    codec that needs them (``{"act_max": (in,)}`` for a mask chosen by activation max).

    Raises ``ValueError`` for a bad role, and for a weight codec asked to quantize an activation
    (codecs are for weights; activations take floatlab formats)."""
    spec = as_spec(spec)
    if spec is None:
        return t
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if spec.is_codec:
        if role != "weight":
            raise ValueError(f"{spec.format!r} is a weight codec; activations take floatlab formats (int8, e4m3, "
                             "mxfp4, ...)")
        return spec.codec.quantize(t, stats=stats).to(t.dtype)
    return spec.codec.quantize(t)


class FrozenGrid:
    """The rounding of a group of weight columns with its scales computed once, up front.

    ``FrozenGrid(W_group, spec).round(col, j)`` rounds column ``j`` (a vector over the rows) on
    the grid that ``fake_quant(W_group, spec)`` uses, so that rounding every column of the
    unchanged group reproduces ``fake_quant`` exactly (tested). GPTQ updates the columns after
    the scales are fixed; a block's scales therefore come from the group's values when GPTQ
    reaches the group (as GPTQ with groups does), and block formats use groups = their blocks.
    """

    def __init__(self, wg: torch.Tensor, spec: QuantSpec, row_scale: torch.Tensor | None = None,
                 tensor_amax: torch.Tensor | None = None):
        self.spec = spec
        wg = wg.to(torch.float32)
        self.ncols = wg.shape[1]
        if spec.is_block:
            fmt = spec.fmt
            if len(fmt.block) != 1:
                raise ValueError(f"{spec.format!r} has 2D tiles; GPTQ's column groups need 1D blocks")
            b = fmt.block[0]
            if self.ncols > b or (self.ncols < b and not spec.pad):
                raise ValueError(f"a GPTQ group for {spec.format!r} must be one block ({b} columns)")
            xb, _ = to_blocks(wg, fmt.block, axis=-1, pad=True)      # (rows, b): one block per row
            self.grid = block_grid(xb, fmt, spec.rounding, tensor_amax)
        elif spec.scaled:
            self.scale = row_scale if row_scale is not None else absmax_scale(wg, QuantSpec(spec.format, None, spec.scale_target), "weight")
        self.row_scale = row_scale

    def round(self, col: torch.Tensor, j: int) -> torch.Tensor:
        spec = self.spec
        c = col.to(torch.float32)
        if spec.is_block:
            return self.grid.round(c[:, None], slice(j, j + 1))[:, 0]
        if not spec.scaled:
            return floatlab.quantize(c, spec.fmt, spec.rounding, saturate=True)
        s = self.scale.reshape(-1)
        return floatlab.quantize(c / s, spec.fmt, spec.rounding, saturate=True) * s
