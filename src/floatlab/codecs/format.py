"""Any floatlab format as a weight codec, with PTQ's scale conventions (moved here from
``floatlab.ptq.quantizer``, which uses it for every format):

* **Block formats** (MX, NVFP4, HiF4, ...) compute their own scales, blocks along the last axis
  (a weight's ``in_features``, an activation's channels); a length that is not a multiple of the
  block is zero-padded for the scales (``pad=False`` refuses it).
* **16-bit floats** (bf16, fp16) are applied as they are, no scale.
* **Other scalar formats** (int8, int4, e4m3, e5m2, hif8, ...) get an absmax scale per row of the
  last axis (a weight's output channel, an activation's token), or per group of ``group_size``
  values along it, mapped to the format's *scale target*: its largest value, except HiF8, whose
  absmax is mapped to 15, its largest value with 3 mantissa bits (see docs/ptq.md).
  ``scale_target="max"`` forces the format's max. Values saturate at the format's max. The
  scales are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import floatlab
from floatlab.codecs.base import CodecError, WeightCodec, check_group
from floatlab.formats.serialize import format_from_reference, format_reference
from floatlab.plain.packing import pack, unpack
from floatlab.tensor.qtensor import QTensor

#: formats whose absmax maps to a value other than their max
SCALE_TARGETS = {"hif8": 15.0}


def grouped_last(t: torch.Tensor, g: int) -> torch.Tensor:
    """``(..., n)`` -> ``(..., n // g, g)``; ``g`` must divide ``n``."""
    n = t.shape[-1]
    if n % g:
        raise ValueError(f"group_size {g} does not divide the last dimension ({n})")
    return t.reshape(*t.shape[:-1], n // g, g)


@dataclass(frozen=True)
class FormatCodec(WeightCodec):
    """A floatlab format (scalar or block) with the conventions of the module docstring.

    Args:
        format: a format name or object (``"int4"``, ``"mxfp4"``, ``"nvfp4"``, ``"hif8"``, ...).
        group_size: narrow scalar formats: one scale per ``group_size`` values of the last axis.
        scale_target: ``None`` (the convention), ``"max"`` or a number.
        rounding: element rounding mode; ``None`` is the format's default.
        pad: block formats: pad a length that is not a multiple of the block.
    """

    format: object
    group_size: int | None = None
    scale_target: float | str | None = None
    rounding: str | None = None
    pad: bool = True

    def __post_init__(self) -> None:
        fmt = floatlab.get_format(self.format)
        object.__setattr__(self, "format", fmt)
        check_group(self.group_size)
        if self.group_size is not None and fmt.kind == "block":
            raise CodecError(f"{fmt.name!r} is a block format: its block ({fmt.block}) sets the groups; "
                             "group_size applies to scalar formats")

    @property
    def name(self) -> str:
        return self.format.name + (f"_g{self.group_size}" if self.group_size else "")

    @property
    def element_bits(self) -> int:
        return getattr(self.format, "element_bits", None) or self.format.bits

    @property
    def is_block(self) -> bool:
        return self.format.kind == "block"

    @property
    def scaled(self) -> bool:
        """Scalar formats narrower than 16 bits get an absmax scale."""
        return self.format.kind == "scalar" and self.format.bits < 16

    @property
    def target(self) -> float:
        f = self.format
        if isinstance(self.scale_target, (int, float)):
            return float(self.scale_target)
        if self.scale_target == "max":
            return float(f.max_value)
        return SCALE_TARGETS.get(f.name, float(f.max_value))

    def check_shape(self, shape) -> None:
        if len(tuple(shape)) < 1:
            raise CodecError(f"codec {self.name!r}: a 0-d tensor has no last axis to scale along")
        n = shape[-1]
        if self.group_size and n % self.group_size:
            raise CodecError(f"group_size {self.group_size} does not divide the last dimension ({n})")
        if self.is_block and not self.pad:
            b = self.format.block[-1]
            if n % b:
                raise CodecError(f"{self.name}: the last dimension {n} is not a multiple of the block ({b}) and "
                                 "padding is off")

    # ---- the convention -----------------------------------------------------------------------
    def fit(self, w, stats=None, generator=None) -> dict:
        """``{"scale": s}`` for scaled scalar formats (broadcastable to ``w``, or to ``w`` viewed in
        groups), ``{}`` otherwise."""
        if not self.scaled:
            return {}
        a = w.detach().to(torch.float32).abs()
        if self.group_size:
            a = grouped_last(a, self.group_size)
        s = a.amax(dim=-1, keepdim=True) / self.target
        return {"scale": torch.where(s > 0, s, torch.ones_like(s))}

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        """``w`` (any shape, rows along the last axis) fake-quantized, in ``w``'s dtype."""
        dtype = w.dtype
        x = w.to(torch.float32)
        fmt = self.format
        if self.is_block:
            y = floatlab.quantize(x, fmt, self.rounding, axis=-1, pad=self.pad, grad=grad)
        elif not self.scaled:
            y = floatlab.quantize(x, fmt, self.rounding, saturate=True, grad=grad)
        else:
            s = (params or self.fit(x))["scale"]
            if self.group_size:
                xg = grouped_last(x, self.group_size)
                y = (floatlab.quantize(xg / s, fmt, self.rounding, saturate=True, grad=grad) * s).reshape(x.shape)
            else:
                y = floatlab.quantize(x / s, fmt, self.rounding, saturate=True, grad=grad) * s
        return y.to(dtype)

    # ---- storage ------------------------------------------------------------------------------
    def encode(self, w, params=None, *, stats=None, generator=None) -> QTensor:
        """Block formats: floatlab's own block encoding; scaled scalar formats: the codes of
        ``q(w / s)`` plus the float32 scale ``"scale"``; 16-bit floats: their codes."""
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        if self.is_block:
            inner = floatlab.encode(w, self.format, rounding=self.rounding, axis=-1, pad=self.pad)
            return QTensor(inner.data, self, inner.shape, torch.float32, dict(inner.scales), dict(inner.meta))
        fmt = self.format
        if not self.scaled:
            v = floatlab.quantize(w, fmt, self.rounding, saturate=True)
            return QTensor(pack(fmt.encode(v.double()), fmt.bits), self, tuple(w.shape), torch.float32, {}, {})
        s = (params or self.fit(w))["scale"]
        x = grouped_last(w, self.group_size) if self.group_size else w
        v = floatlab.quantize(x / s, fmt, self.rounding, saturate=True).reshape(w.shape)
        return QTensor(pack(fmt.encode(v.double()), fmt.bits), self, tuple(w.shape), torch.float32,
                       {"scale": s.to(torch.float32).contiguous()}, {})

    def decode(self, qt: QTensor) -> torch.Tensor:
        if self.is_block:
            return QTensor(qt.data, self.format, qt.shape, torch.float32, qt.scales, qt.meta).dequantize(torch.float32)
        v = self.format.decode(self.codes(qt)).to(torch.float32)
        if not self.scaled:
            return v
        s = qt.scales["scale"]
        if self.group_size:
            return (grouped_last(v, self.group_size) * s).reshape(qt.shape)
        return v * s

    def codes(self, qt: QTensor) -> torch.Tensor:
        if self.is_block:
            return QTensor(qt.data, self.format, qt.shape, torch.float32, qt.scales, qt.meta).codes
        return unpack(qt.data, self.format.bits, math.prod(qt.shape)).reshape(qt.shape)

    def codes_of(self, w, params):
        raise CodecError(f"{self.name!r}: floatlab formats round through floatlab.quantize/encode")

    values_of = pack = unpack = codes_of

    def frozen_grid(self, params):
        raise CodecError(f"{self.name!r}: GPTQ rounds floatlab formats on floatlab.ptq.quantizer.FrozenGrid")

    def bits(self, shape) -> int:
        """Codes (block formats: every stored code, padding included) plus scales: block scales
        (``scale_bits`` per block), NVFP4's float32 tensor scale, float32 row/group scales."""
        shape = tuple(shape)
        self.check_shape(shape)
        fmt = self.format
        n = math.prod(shape)
        if self.is_block:
            blk = fmt.block
            if len(blk) == 1:
                blocks = math.prod(shape[:-1]) * -(-shape[-1] // blk[0])
            else:
                blocks = math.prod(shape[:-2]) * -(-shape[-2] // blk[0]) * -(-shape[-1] // blk[1])
            return blocks * (fmt.block_numel * fmt.element_bits + fmt.scale_bits) + (32 if fmt.tensor_scale else 0)
        if not self.scaled:
            return n * fmt.bits
        rows = n // shape[-1] * (shape[-1] // self.group_size if self.group_size else 1)
        return n * fmt.bits + 32 * rows

    def to_dict(self) -> dict:
        return {"codec": "format", "format": format_reference(self.format), "group_size": self.group_size,
                "scale_target": self.scale_target, "rounding": None if self.rounding is None else str(self.rounding),
                "pad": self.pad}

    @classmethod
    def from_reference(cls, d: dict) -> "FormatCodec":
        return cls(format_from_reference(d["format"]), d.get("group_size"), d.get("scale_target"), d.get("rounding"),
                   d.get("pad", True))
