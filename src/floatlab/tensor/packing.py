"""Packing integer codes into their storage: two 4-bit codes per byte, 16-bit codes in int16."""

from __future__ import annotations

import torch


def storage_dtype(bits: int) -> torch.dtype:
    if bits <= 8:
        return torch.uint8
    return torch.int16 if bits <= 16 else torch.int32


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten ``codes`` and store them compactly. 4-bit (or narrower) codes go two per byte,
    the even element in the low nibble; a trailing odd element gets a zero high nibble."""
    flat = codes.reshape(-1).to(torch.int64)
    if bits <= 4:
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        pairs = flat.view(-1, 2)
        return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)
    if bits <= 8:
        return flat.to(torch.uint8)
    # 16/32-bit containers hold the unsigned bit pattern (two's-complement wrap)
    width = 16 if bits <= 16 else 32
    wrapped = torch.where(flat >= 2 ** (width - 1), flat - 2 ** width, flat)
    return wrapped.to(storage_dtype(bits))


def unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: int64 codes, flat, ``numel`` long."""
    d = data.to(torch.int64)
    if bits <= 4:
        return torch.stack([d & 0xF, d >> 4], dim=1).reshape(-1)[:numel]
    if bits <= 8:
        return d
    return d & ((1 << (16 if bits <= 16 else 32)) - 1)
