"""QTensor: packed codes plus whatever scales the format needs, with real memory savings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from floatlab.formats.block import BlockFormat
from floatlab.plain.block import block_decode, blocking_of
from floatlab.tensor.packing import pack, unpack


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

    def blocked_codes(self) -> torch.Tensor:
        """Element codes of a block QTensor in the blocked layout ``(nblocks, block)`` (int64)."""
        b = blocking_of(self.format, self.shape, self.meta)
        blocked_axes = (b.axis,) if len(b.block) == 1 else (len(b.shape) - 2, len(b.shape) - 1)
        others = math.prod(n for i, n in enumerate(b.shape) if i not in blocked_axes)
        total = others * math.prod(b.padded)
        return unpack(self.data, self.element_bits, total).reshape(-1, b.block_numel)

    @property
    def codes(self) -> torch.Tensor:
        """The element codes, unpacked, as int64 of the logical shape (block padding dropped)."""
        if self.is_block:
            return blocking_of(self.format, self.shape, self.meta).unblock(self.blocked_codes())
        return unpack(self.data, self.element_bits, self.numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values, as ``dtype`` (default: the dtype that was encoded)."""
        out_dtype = self.dtype if dtype is None else dtype
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
        """Storage bits per element of the nominal format (codes plus amortized scales)."""
        fn = getattr(self.format, "bits_per_value", None)
        return float(fn) if fn is not None else float(self.format.bits)

    def __repr__(self) -> str:
        return (f"QTensor(format={self.format.name!r}, shape={self.shape}, "
                f"nbytes={self.nbytes}, bits_per_value={self.bits_per_value:g})")
