"""A quantized weight as stored: grid values plus scales, its dequantized tensor, and packing
into floatlab QTensors (exact save/reload).

* block formats: ``values`` are the signed element values, ``scales`` the block scales in the
  layout of :func:`floatlab.encode` (so the QTensor decodes with floatlab's own decoder);
* scaled scalar formats: ``values`` = ``q(W / s)`` on the format's grid, ``row_scale`` = ``s``
  (float32, one per row or per (row, group)); the weight is ``values * s``;
* unscaled formats (bf16, fp16): ``values`` is the weight;
* weight codecs (:mod:`floatlab.codecs`: ``int3_asym_g128``, ``binary_mean``, ``ptq161``, ...):
  the QTensor the codec packed (codes plus every stored tensor, ``format`` = the codec) is the
  whole record; ``values`` is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import floatlab
from floatlab.formats.integer import IntFormat
from floatlab.plain.blocking import to_blocks
from floatlab.plain.packing import pack
from floatlab.ptq import grid as block_grids
from floatlab.ptq.quantizer import QuantSpec, _grouped, absmax_scale
from floatlab.tensor.qtensor import QTensor


def _packed_codes(values: torch.Tensor, fmt) -> torch.Tensor:
    """The packed codes (:func:`floatlab.plain.packing.pack`'s layout) of ``values``, which lie on
    ``fmt``'s grid already: ``floatlab.encode``'s fast path where the values are float32 and the
    codes fit 16 bits (rounding an exact value is the identity, so its code is the plain
    encoder's: tested equal bit for bit), else (and for integer formats) the float64 encoder and
    ``pack``. The fast path
    took ``floatlab compare``'s packed layers from ~55 ms to a few ms per MiniLM layer."""
    if values.dtype == torch.float32 and values.device.type == "cpu" and fmt.bits <= 16 and values.numel() \
            and not isinstance(fmt, IntFormat):      # integer codes: the plain encoder is quick, and
                                                     # encode's fast path would compile a kernel
        return floatlab.encode(values.contiguous(), fmt, "rne").data
    return pack(fmt.encode(values.double()), fmt.bits)


@dataclass
class QWeight:
    spec: QuantSpec
    shape: tuple[int, ...]
    values: torch.Tensor                       # see the module docstring
    scales: dict | None = None                 # block formats: floatlab's scale tensors
    row_scale: torch.Tensor | None = None      # scaled scalar formats
    wq: torch.Tensor | None = None             # the dequantized weight, when already known
    _qt: QTensor | None = field(default=None, repr=False)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the model computes with (equal to the packed QTensor's decode)."""
        if self.wq is not None:
            return self.wq
        if self.values is None and self._qt is not None:
            return self.decode()
        spec = self.spec
        if spec.is_codec:
            return spec.codec.decode(self.to_qtensor())
        if spec.is_block:
            return self.to_qtensor().dequantize(torch.float32)
        if self.row_scale is None:
            return self.values
        if spec.group_size:
            return (_grouped(self.values, spec.group_size) * self.row_scale).reshape(self.shape)
        return self.values * self.row_scale

    def decode(self) -> torch.Tensor:
        """The float32 weight computed from the packed record alone (the QTensor's codes and
        scales, and ``row_scale``), never from ``wq`` or ``values``: what a packed
        :class:`floatlab.ptq.modules.QuantLinear` computes with in each forward pass. The same
        arithmetic as :meth:`dequantize` on the decoded grid values (``values * row_scale``,
        grouped where the spec has groups); shape ``self.shape``, on the codes' device."""
        qt = self.to_qtensor()
        spec = self.spec
        if spec.is_codec:
            return spec.codec.decode(qt)
        values = qt.dequantize(torch.float32)
        if spec.is_block or self.row_scale is None:
            return values
        if spec.group_size:
            return (_grouped(values, spec.group_size) * self.row_scale).reshape(self.shape)
        return values * self.row_scale

    def drop_dense(self) -> None:
        """Keep only the packed record (QTensor and ``row_scale``): ``values`` and ``wq`` go, and
        :meth:`dequantize` decodes from the codes from then on."""
        self._qt = self.to_qtensor()
        self.values = None
        self.wq = None

    def to_qtensor(self) -> QTensor:
        """Pack the grid values (codes, 2 per byte for 4-bit formats) and block scales."""
        if self._qt is not None:
            return self._qt
        if self.spec.is_codec:
            raise ValueError(f"QWeight of codec {self.spec.format!r} was built without its QTensor")
        fmt = self.spec.fmt
        if self.spec.is_block:
            blocks, blocking = to_blocks(self.values, fmt.block, axis=-1, pad=self.spec.pad)
            meta = {"axis": blocking.axis, "padded": list(blocking.padded)}
            self._qt = QTensor(_packed_codes(blocks, fmt.element), fmt, tuple(self.shape), torch.float32,
                               dict(self.scales or {}), meta)
            return self._qt
        return QTensor(_packed_codes(self.values, fmt), fmt, tuple(self.values.shape), torch.float32)

    def compact(self, wq: torch.Tensor | None = None) -> None:
        """Hold the packed QTensor (codes, 1 byte or half a byte per value, and scales) and the
        dequantized weight (``wq``: the tensor already computed from this record, e.g. the one
        the model holds) instead of the float32 grid values: the same record, a smaller one.
        No-op without a dequantized weight."""
        if self.wq is None:
            self.wq = wq
        if self.values is None or self.wq is None:
            return
        self._qt = self.to_qtensor()
        self.values = None

    def tensors(self, prefix: str) -> dict:
        """``{name: QTensor | Tensor}`` for :func:`floatlab.save`."""
        out = {f"{prefix}.qweight": self.to_qtensor()}
        if self.row_scale is not None:
            out[f"{prefix}.wscale"] = self.row_scale.contiguous()
        return out

    @classmethod
    def from_tensors(cls, spec: QuantSpec, prefix: str, tensors: dict) -> "QWeight":
        qt = tensors[f"{prefix}.qweight"]
        if spec.is_codec:
            if not getattr(qt, "is_codec", False) or qt.format != spec.codec:
                raise ValueError(f"{prefix}.qweight: stored as {getattr(qt.format, 'name', qt.format)!r}, but the "
                                 f"config says {spec.codec.name!r}")
            return cls(spec, tuple(qt.shape), None, _qt=qt)
        if spec.is_block:
            return cls(spec, tuple(qt.shape), None, dict(qt.scales), _qt=qt)
        return cls(spec, tuple(qt.shape), qt.dequantize(torch.float32), None, tensors.get(f"{prefix}.wscale"))


def rtn_weight(w: torch.Tensor, spec: QuantSpec, stats: dict | None = None,
               generator: torch.Generator | None = None) -> QWeight:
    """Round-to-nearest: the weight through ``fake_quant``'s conventions, keeping codes and scales.

    ``rtn_weight(w, spec).dequantize()`` equals ``fake_quant(w, spec, "weight")`` (tested).
    ``stats``/``generator``: for weight codecs whose fit needs them (a salient-channel mask by
    activation max, or a random one)."""
    w = w.detach().to(torch.float32)
    if spec.is_codec:
        return codec_weight(spec, spec.codec.encode(w, stats=stats, generator=generator))
    fmt = spec.fmt
    if spec.is_block:
        if not block_grids.block_supported(fmt) or not bool(torch.isfinite(w).all()):
            qt = floatlab.encode(w, fmt, rounding=spec.rounding, axis=-1, pad=spec.pad)
            return QWeight(spec, tuple(w.shape), None, dict(qt.scales), _qt=qt)
        blocks, blocking = to_blocks(w, fmt.block, axis=-1, pad=spec.pad)
        grid = block_grids.block_grid(blocks, fmt, spec.rounding)
        elements = grid.elements(blocks)
        values = blocking.unblock(elements).contiguous()
        wq = blocking.unblock(grid.decode(elements, None)).contiguous()
        return QWeight(spec, tuple(w.shape), values, grid.scales(), wq=wq)
    if not spec.scaled:
        return QWeight(spec, tuple(w.shape), floatlab.quantize(w, fmt, spec.rounding, saturate=True))
    s = absmax_scale(w, spec, "weight")
    x = _grouped(w, spec.group_size) if spec.group_size else w
    values = floatlab.quantize(x / s, fmt, spec.rounding, saturate=True).reshape(w.shape)
    return QWeight(spec, tuple(w.shape), values, None, s)


def codec_weight(spec: QuantSpec, qt: QTensor, wq: torch.Tensor | None = None) -> QWeight:
    """The :class:`QWeight` of a weight codec's QTensor (``wq``: its decoded weight, if known)."""
    return QWeight(spec, tuple(qt.shape), None, wq=spec.codec.decode(qt) if wq is None else wq, _qt=qt)
