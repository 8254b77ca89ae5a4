"""Packing integer codes into their storage.

Codes of fewer than 8 bits form one little-endian bit stream: element i occupies bits
``[i*b, (i+1)*b)`` counted from the least significant bit of byte 0. For 4-bit codes this is
"two codes per byte, the even element in the low nibble" (FORMATS.md 2.2); 6-bit codes take
3 bytes per 4 elements. 8-bit codes are bytes; 9-16-bit codes sit in int16, wider ones in int32
(the unsigned bit pattern, wrapped).
"""

from __future__ import annotations

import torch


def storage_dtype(bits: int) -> torch.dtype:
    if bits <= 8:
        return torch.uint8
    return torch.int16 if bits <= 16 else torch.int32


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    flat = codes.reshape(-1).to(torch.int64)
    if bits < 8:
        shifts = torch.arange(bits, device=flat.device)
        stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
        pad = (-stream.numel()) % 8
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        weights = 2 ** torch.arange(8, device=flat.device)
        return (stream.view(-1, 8) * weights).sum(1).to(torch.uint8)
    if bits == 8:
        return flat.to(torch.uint8)
    width = 16 if bits <= 16 else 32
    wrapped = torch.where(flat >= 2 ** (width - 1), flat - 2 ** width, flat)
    return wrapped.to(storage_dtype(bits))


def unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``numel`` int64 codes, flat."""
    d = data.reshape(-1).to(torch.int64)
    if bits < 8:
        stream = ((d[:, None] >> torch.arange(8, device=d.device)) & 1).reshape(-1)
        stream = stream[: numel * bits].view(numel, bits)
        return (stream * 2 ** torch.arange(bits, device=d.device)).sum(1)
    if bits == 8:
        return d
    return d & ((1 << (16 if bits <= 16 else 32)) - 1)
