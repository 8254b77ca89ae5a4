"""The weight codec: one notion for everything that turns a weight matrix into stored bits.

A :class:`WeightCodec` describes how a weight ``W`` of shape ``(out, in)`` (rows = output
channels, columns = the GEMM's input dimension) is stored: integer codes plus any named tensors
(scales, zero points, means, masks, per-row and per-column factors) at the dtypes actually
stored. The same object

* fake-quantizes (:meth:`WeightCodec.quantize`), differentiably: the rounding goes through
  :func:`floatlab.quantize` (or :func:`floatlab.ops.autograd.straight_through` for signs), so the
  straight-through contract of :mod:`floatlab.ops.autograd` holds, and gradients with respect to
  the codec's parameters (scales, clip factors, learned factors) come from autograd around it;
* encodes to a :class:`~floatlab.QTensor` whose ``format`` is the codec (:meth:`encode`) and
  decodes it (:meth:`decode`, reached by ``QTensor.dequantize``), so ``floatlab.save``/``load``
  round-trip it bit for bit;
* counts its storage exactly (:meth:`bits`): every code, scale, zero point, mask bit and learned
  factor, at its stored width (packed codes count their bits; the up to 7 bits that pad each
  packed stream to a whole byte are not counted, ``QTensor.nbytes`` includes them);
* gives GPTQ a frozen grid (:meth:`frozen_grid`) on which it rounds column by column.

Parameters (``params``) are a dict of tensors computed by :meth:`fit` (the closed-form, round-to-
nearest choice) or learned (OmniQuant's clipping, PTQ1.61's factors). Stored parameters are
always held at their storage precision (e.g. an fp16 scale as a float32 tensor holding an fp16
value), so ``decode(encode(w, p)) == quantize(w, p)`` bit for bit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from floatlab.tensor.qtensor import QTensor

#: stored widths of scales and factors
SCALE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class CodecError(ValueError):
    """A weight that a codec cannot store as asked (shape, group, statistics, range)."""


class WeightCodec(ABC):
    """How a 2D weight ``(out, in)`` is stored. Subclasses are frozen dataclasses.

    A codec works on integer *codes* (int64, the weight's shape) and *params* (a dict of
    tensors): :meth:`codes_of` rounds a weight to codes, :meth:`values_of` turns codes back into
    float32 values, :meth:`pack`/:meth:`unpack` move codes and stored params into and out of a
    QTensor, and :meth:`quantize` is the differentiable ``values_of(codes_of(w))``, equal to it
    bit for bit.

    Attributes:
        kind: ``"codec"``; ``QTensor`` and ``floatlab.formats.serialize`` recognize codecs by it.
        name: the short name the CLI's ``--format`` accepts (see :func:`floatlab.codecs.get_codec`).
        group_size: input columns per scale group, ``None`` for one group per row.
        needs_stats: ``True`` when :meth:`fit` needs calibration statistics (``act_max``).
    """

    kind = "codec"
    needs_stats = False
    group_size: int | None = None

    # ---- what each codec provides ---------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        ...

    @abstractmethod
    def fit(self, w: torch.Tensor, stats: dict | None = None, generator: torch.Generator | None = None) -> dict:
        """Closed-form (round-to-nearest) parameters for the float32 weight ``w`` ``(out, in)``;
        the stored ones at storage precision. ``stats``: calibration statistics
        (``{"act_max": (in,) tensor}``) for codecs that need them; ``generator``: for random choices."""

    @abstractmethod
    def codes_of(self, w: torch.Tensor, params: dict) -> torch.Tensor:
        """int64 codes ``(out, in)`` of ``w`` on the grid of ``params``."""

    @abstractmethod
    def values_of(self, codes: torch.Tensor, params: dict) -> torch.Tensor:
        """float32 values ``(out, in)`` of ``codes`` (no gradient)."""

    @abstractmethod
    def quantize(self, w: torch.Tensor, params: dict | None = None, *, stats: dict | None = None,
                 grad: str = "ste") -> torch.Tensor:
        """The fake-quantized weight (float32, ``w``'s shape): ``values_of(codes_of(w, params))``
        bit for bit, but differentiable: ``grad`` is the rule for ``dL/dw`` (``"ste"``,
        ``"clipped"``, ``"none"``; see :mod:`floatlab.ops.autograd`); gradients reach any
        ``params`` that require them through ordinary autograd. ``params=None`` fits them first."""

    @abstractmethod
    def pack(self, codes: torch.Tensor, params: dict) -> QTensor:
        """A QTensor (``format`` = this codec) holding ``codes`` and the stored ``params``."""

    @abstractmethod
    def unpack(self, qt: QTensor) -> tuple[torch.Tensor, dict]:
        """``(codes, params)`` read back from ``qt`` (inverse of :meth:`pack`)."""

    @abstractmethod
    def bits(self, shape) -> int:
        """Exact storage bits of a weight of ``shape`` (codes and every stored tensor)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """A JSON-able dict that :func:`floatlab.codecs.codec_from_dict` turns back into this codec."""

    # ---- shared ---------------------------------------------------------------------------
    def encode(self, w: torch.Tensor, params: dict | None = None, *, stats: dict | None = None,
               generator: torch.Generator | None = None) -> QTensor:
        """A QTensor that decodes exactly to ``quantize(w, params)``. Raises :class:`CodecError`
        for a weight it cannot store (NaN/Inf, shape, group, missing statistics)."""
        w = check_weight(self, w)
        if params is None:
            params = self.fit(w, stats, generator)
        return self.pack(self.codes_of(w, params), params)

    def decode(self, qt: QTensor) -> torch.Tensor:
        """The float32 weight stored in ``qt`` (``QTensor.dequantize`` calls this)."""
        return self.values_of(*self.unpack(qt))

    def codes(self, qt: QTensor) -> torch.Tensor:
        """The element codes of ``qt`` as int64 of its logical shape."""
        return self.unpack(qt)[0]

    @property
    def element_bits(self) -> int:
        """Bits per code of the code stream in ``QTensor.data`` (the widest part's for a mask;
        every stream of up to 8 bits is a packed ``uint8`` bit stream)."""
        return 8

    def bits_per_weight(self, shape) -> float:
        """:meth:`bits` divided by the number of weights."""
        return self.bits(shape) / math.prod(shape)

    def check_shape(self, shape) -> None:
        """Raise :class:`CodecError` when a weight of ``shape`` cannot be stored (not 2D, a group
        that does not divide the input dimension with padding off)."""
        shape = tuple(shape)
        if len(shape) != 2 or min(shape) < 1:
            raise CodecError(f"codec {self.name!r} stores 2D weights (out_features, in_features); got shape {shape}")

    def frozen_grid(self, params: dict) -> "ColumnGrid":
        """GPTQ's hook: the grid of ``params``, rounding one column at a time."""
        return ColumnGrid(self, params)

    def merge_groups(self, parts: list[dict]) -> dict:
        """The parameters of a whole weight from those fitted group by group (GPTQ with groups):
        the per-(row, group) tensors ``(out, 1)`` are joined along the group axis."""
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}

    def column_params(self, params: dict, j: int) -> dict:
        """The parameters that round column ``j`` alone (per-row codecs: all of them)."""
        return params

    def __str__(self) -> str:
        return self.name


class ColumnGrid:
    """A codec's grid with its parameters frozen: ``round(col, j)`` puts column ``j`` (a vector
    over the rows) on it and returns ``(codes, values)``. Rounding every column of the weight
    the parameters were fitted on gives ``codes_of``/``quantize`` of it exactly (tested)."""

    def __init__(self, codec: WeightCodec, params: dict):
        self.codec, self.params = codec, params

    def round(self, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.codec.column_params(self.params, j)
        c = self.codec.codes_of(col.to(torch.float32)[:, None], p)
        return c[:, 0], self.codec.values_of(c, p)[:, 0]


# ---- helpers shared by the codecs -------------------------------------------------------------
def check_weight(codec: WeightCodec, w: torch.Tensor) -> torch.Tensor:
    """``w`` as float32 after the codec's checks: a floating 2D tensor with finite values."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"codec {codec.name!r}: the weight must be a floating torch.Tensor, got "
                        f"{type(w).__name__ if not isinstance(w, torch.Tensor) else w.dtype}")
    codec.check_shape(w.shape)
    if not bool(torch.isfinite(w).all()):
        raise CodecError(f"codec {codec.name!r}: the weight has {int((~torch.isfinite(w)).sum())} non-finite "
                         "values; a NaN/Inf weight cannot be stored (check the model)")
    return w.to(torch.float32)


def check_group(group_size, what: str = "group_size") -> None:
    if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1):
        raise CodecError(f"{what} must be a positive int or None (per row), got {group_size!r}")


def group_count(cols: int, group_size: int | None, pad: bool, name: str) -> int:
    """Groups per row; refuses a group that does not divide ``cols`` when padding is off."""
    if group_size is None:
        return 1
    if cols % group_size and not pad:
        raise CodecError(f"codec {name!r}: group {group_size} does not divide in_features {cols} and padding "
                         f"is off; allow padding (the last group of each row is shorter) or pick a group that "
                         f"divides {cols}")
    return -(-cols // group_size)


def grouped(w: torch.Tensor, group_size: int | None, fill: float = 0.0) -> torch.Tensor:
    """``(out, in)`` -> ``(out, groups, g)``; the last group padded with ``fill`` (per row: one group)."""
    rows, cols = w.shape
    if group_size is None:
        return w.reshape(rows, 1, cols)
    n = -(-cols // group_size)
    if n * group_size != cols:
        w = torch.cat([w, w.new_full((rows, n * group_size - cols), fill)], dim=1)
    return w.reshape(rows, n, group_size)


def ungrouped(wg: torch.Tensor, cols: int) -> torch.Tensor:
    return wg.reshape(wg.shape[0], -1)[:, :cols]


def valid_mask(cols: int, group_size: int | None) -> torch.Tensor | None:
    """``(1, groups, g)`` bool: the real (unpadded) elements, or ``None`` without padding."""
    if group_size is None or cols % group_size == 0:
        return None
    n = -(-cols // group_size)
    return (torch.arange(n * group_size) < cols).reshape(1, n, group_size)


def stored(t: torch.Tensor, scale_dtype: str, what: str, name: str) -> torch.Tensor:
    """``t`` rounded to its storage dtype (RNE, as torch casts), held as float32. Raises
    :class:`CodecError` when it overflows the storage dtype."""
    dt = SCALE_DTYPES[scale_dtype]
    out = t.to(dt).to(torch.float32)
    if not bool(torch.isfinite(out).all()):
        big = float(t.detach().abs().max())
        raise CodecError(f"codec {name!r}: a {what} ({big:.4g}) overflows {scale_dtype} storage; the weight is "
                         f"too large for {scale_dtype} {what}s (use scale_dtype='fp32')")
    return out


_SMALLEST = {"fp16": 2.0 ** -24, "bf16": 2.0 ** -133, "fp32": 2.0 ** -149}


def positive_scale(s: torch.Tensor, scale_dtype: str, what: str, name: str) -> torch.Tensor:
    """A stored scale that is never 0: rows of zeros get scale 1, and a scale that underflows
    storage becomes the dtype's smallest positive (subnormal) value."""
    s = torch.where(s > 0, s, torch.ones_like(s))
    out = stored(s, scale_dtype, what, name)
    return torch.where(out > 0, out, torch.full_like(out, _SMALLEST[scale_dtype]))


def scale_bits(scale_dtype: str) -> int:
    return torch.finfo(SCALE_DTYPES[scale_dtype]).bits


def check_scale_dtype(scale_dtype: str) -> None:
    if scale_dtype not in SCALE_DTYPES:
        raise CodecError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")


def as_storage(t: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """A stored-precision float32 tensor as the dtype written to disk."""
    return t.detach().to(SCALE_DTYPES[scale_dtype]).contiguous()
