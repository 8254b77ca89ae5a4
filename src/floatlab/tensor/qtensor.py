"""QTensor: packed codes plus whatever scales the format needs, with real memory savings.

A QTensor pickles to plain tensors, strings and ints rebuilt by :func:`_rebuild_qtensor`, which
this module registers with ``torch.serialization.add_safe_globals`` (torch's documented hook for
trusted rebuild functions): ``torch.save(q, f)`` then ``torch.load(f)`` (``weights_only=True``,
torch's default) works in any process that has imported floatlab. The rebuild validates every
field and runs no other code. ``floatlab.save``/``floatlab.load`` (safetensors) remain the
portable format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from floatlab.formats.block import BlockFormat
from floatlab.formats.serialize import format_from_reference, format_reference
from floatlab.plain.block import block_decode, blocking_of
from floatlab.plain.packing import check_packed, pack, unpack

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class QTensor:
    """A quantized tensor: packed element codes, optional scale tensors, and the format.

    Attributes:
        data: packed element codes (``uint8``, two codes per byte for 4-bit formats).
        format: the format object.
        shape: the logical shape of the tensor.
        dtype: the dtype ``dequantize()`` returns by default (the dtype that was encoded).
        scales: named scale tensors of block formats (empty for scalar formats).
        meta: small JSON-able facts a block format needs to decode (axis, padding, ...).
    """

    data: torch.Tensor
    format: object
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, fmt, dtype=torch.float32, scales=None, meta=None,
                   shape: tuple[int, ...] | None = None) -> "QTensor":
        """Pack ``codes``; ``shape`` is the logical shape (block formats store padded blocks)."""
        shape = tuple(codes.shape) if shape is None else tuple(shape)
        return cls(pack(codes, fmt.element_bits if hasattr(fmt, "element_bits") else fmt.bits),
                   fmt, shape, dtype, dict(scales or {}), dict(meta or {}))

    @property
    def element_bits(self) -> int:
        return getattr(self.format, "element_bits", self.format.bits)

    @property
    def is_block(self) -> bool:
        return isinstance(self.format, BlockFormat)

    @property
    def is_codec(self) -> bool:
        """The format is a weight codec (:mod:`floatlab.codecs`, recognized by ``kind == "codec"``):
        it decodes, counts its bits and lists its codes itself."""
        return getattr(self.format, "kind", None) == "codec"

    def _stored_codes(self, b=None) -> int:
        """How many element codes ``data`` holds: the logical ``numel``, or for a block format
        its padded blocks' elements (``b``: its blocking, where the caller has it)."""
        if not self.is_block:
            return self.numel
        b = blocking_of(self.format, self.shape, self.meta) if b is None else b
        blocked_axes = (b.axis,) if len(b.block) == 1 else (len(b.shape) - 2, len(b.shape) - 1)
        others = math.prod(n for i, n in enumerate(b.shape) if i not in blocked_axes)
        return others * math.prod(b.padded)

    def blocked_codes(self) -> torch.Tensor:
        """Element codes of a block QTensor in the blocked layout ``(nblocks, block)`` (int64)."""
        b = blocking_of(self.format, self.shape, self.meta)
        return unpack(self.data, self.element_bits, self._stored_codes(b)).reshape(-1, b.block_numel)

    @property
    def codes(self) -> torch.Tensor:
        """The element codes, unpacked, as int64 of the logical shape (block padding dropped)."""
        if self.is_codec:
            return self.format.codes(self)
        if self.is_block:
            return blocking_of(self.format, self.shape, self.meta).unblock(self.blocked_codes())
        return unpack(self.data, self.element_bits, self.numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None, backend: str | None = None) -> torch.Tensor:
        """The values, of the logical ``shape``, as ``dtype`` (default: the dtype that was encoded).

        ``backend``: as :func:`floatlab.quantize`; the fast path gathers from tables built by the
        plain decoder (:mod:`floatlab.kernels.codes`), ``"plain"`` decodes in float64.

        Raises:
            TypeError: ``dtype`` is not float16, bfloat16, float32 or float64.
            ValueError: ``data`` does not hold this format's packed codes for ``shape`` (a
                ``format`` or ``shape`` replaced after encoding).
        """
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, _FLOAT_DTYPES))} (or None "
                            f"for the encoded dtype {self.dtype}), got {dtype}")
        out_dtype = self.dtype if dtype is None else dtype
        if self.is_codec:
            return self.format.decode(self).to(out_dtype)
        # every decoder below reads data as this format's codes: refuse data written for another
        check_packed(self.data, self.element_bits, self._stored_codes())
        from floatlab.kernels import codes as fast_codes   # (kernels import plain/, as this does)
        fast = fast_codes.decode(self, out_dtype, backend)
        if fast is not None:
            return fast
        if self.is_block:
            values = block_decode(self.blocked_codes(), self.scales, self.format, self.shape, self.meta)
            return values.to(out_dtype)
        return self.format.decode(self.codes).to(out_dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of real storage: codes plus scales."""
        total = self.data.numel() * self.data.element_size()
        return total + sum(t.numel() * t.element_size() for t in self.scales.values())

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_value(self) -> float:
        """Storage bits per element of the nominal format (codes plus amortized scales); a codec
        counts every stored bit of this shape exactly."""
        if self.is_codec:
            return float(self.format.bits_per_weight(self.shape))
        fn = getattr(self.format, "bits_per_value", None)
        return float(fn) if fn is not None else float(self.format.bits)

    def __repr__(self) -> str:
        return (f"QTensor(format={self.format.name!r}, shape={self.shape}, "
                f"nbytes={self.nbytes}, bits_per_value={self.bits_per_value:g})")

    def __reduce__(self):
        """Pickle as tensors, JSON strings and ints (loadable with ``weights_only=True``)."""
        return (_rebuild_qtensor, (self.data, json.dumps(format_reference(self.format)),
                                   tuple(int(n) for n in self.shape), str(self.dtype),
                                   dict(self.scales), json.dumps(self.meta)))


_DTYPE_NAMES = {str(d): d for d in _FLOAT_DTYPES}


def _rebuild_qtensor(data, fmt_ref: str, shape, dtype: str, scales, meta: str) -> QTensor:
    """Inverse of :meth:`QTensor.__reduce__`; every field is checked (the file may be untrusted).

    Raises:
        ValueError: a field of the wrong kind or value (the message names it).
    """
    if not isinstance(data, torch.Tensor) or data.is_floating_point():
        raise ValueError("QTensor pickle: data must be an integer tensor")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"QTensor pickle: bad shape {shape!r}")
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"QTensor pickle: bad dtype {dtype!r}")
    if not isinstance(scales, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in scales.items()):
        raise ValueError("QTensor pickle: scales must map names to tensors")
    try:
        ref, meta_d = json.loads(fmt_ref), json.loads(meta)
        fmt = format_from_reference(ref)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"QTensor pickle: bad format or meta ({err})") from err
    if not isinstance(meta_d, dict):
        raise ValueError("QTensor pickle: meta must be a JSON object")
    return QTensor(data, fmt, shape, _DTYPE_NAMES[dtype], dict(scales), meta_d)


torch.serialization.add_safe_globals([_rebuild_qtensor])
