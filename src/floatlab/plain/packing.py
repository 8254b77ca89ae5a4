"""Packing integer codes into their storage.

Codes of fewer than 8 bits form one little-endian bit stream: element i occupies bits
``[i*b, (i+1)*b)`` counted from the least significant bit of byte 0. For 4-bit codes this is
"two codes per byte, the even element in the low nibble" (FORMATS.md 2.2); 6-bit codes take
3 bytes per 4 elements. 8-bit codes are bytes; 9-16-bit codes sit in int16, 17-32-bit codes in
int32 and 33-64-bit codes in int64 (the unsigned bit pattern, wrapped: a code with the
container's top bit set is stored as a negative number). Codes come in and go out as int64; a
64-bit code is already its int64 bit pattern (see :attr:`ScalarFormat.code_dtype`).
"""

from __future__ import annotations

import torch


_WIDTHS = ((16, torch.int16), (32, torch.int32), (64, torch.int64))


def _container(bits: int) -> tuple[int, torch.dtype]:
    if not 1 <= bits <= 64:
        raise ValueError(f"codes of {bits} bits cannot be stored: floatlab packs codes of 1 to 64 bits")
    return next((w, d) for w, d in _WIDTHS if bits <= w)


def storage_dtype(bits: int) -> torch.dtype:
    """The dtype that stores codes of ``bits`` bits (``uint8`` up to 8, then int16/32/64)."""
    if bits <= 8:
        return torch.uint8
    return _container(bits)[1]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat storage of ``codes`` (integers ``0 .. 2^bits - 1``; 64-bit codes as int64 patterns)."""
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
    width, dtype = _container(bits)
    if width == 64:
        return flat.clone()            # int64 holds every pattern of up to 64 bits (a copy,
                                       # as the narrower containers get: never the caller's)
    wrapped = torch.where(flat >= 2 ** (width - 1), flat - 2 ** width, flat)
    return wrapped.to(dtype)


def packed_numel(numel: int, bits: int) -> int:
    """Entries of :func:`pack`'s output for ``numel`` codes of ``bits`` bits."""
    return -(-numel * bits // 8) if bits < 8 else numel


def check_packed(data: torch.Tensor, bits: int, numel: int) -> None:
    """Raise ``ValueError`` unless ``data`` has the dtype and size :func:`pack` gives ``numel``
    codes of ``bits`` bits: codes read with another width than they were written with (e.g. a
    QTensor whose ``format`` was replaced) would decode to other values, or past the data's end."""
    want, dtype = packed_numel(numel, bits), storage_dtype(bits)
    if data.numel() != want or data.dtype != dtype:
        raise ValueError(f"packed codes hold {data.numel()} {data.dtype} entries, but {numel} codes of {bits} bits "
                         f"are stored as {want} {dtype} entries: the data was not written for this format (was a "
                         f"QTensor's format or shape replaced after encoding? decode with the format it was "
                         f"encoded with)")


def unpack(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``numel`` int64 codes, flat. Raises ``ValueError`` where ``data``
    does not hold ``numel`` codes of ``bits`` bits (:func:`check_packed`)."""
    check_packed(data, bits, numel)
    d = data.reshape(-1).to(torch.int64)
    if bits < 8:
        stream = ((d[:, None] >> torch.arange(8, device=d.device)) & 1).reshape(-1)
        stream = stream[: numel * bits].view(numel, bits)
        return (stream * 2 ** torch.arange(bits, device=d.device)).sum(1)
    if bits == 8:
        return d
    width = _container(bits)[0]
    return d if width == 64 else d & ((1 << width) - 1)
