"""Fault injection: flip bits of a quantized tensor's stored codes (soft errors in memory).

A :class:`~floatlab.QTensor` holds the codes a memory would hold: element codes (packed) and, for
block formats, scale bytes (``"scale"``: E8M0, E4M3, HiF4's 4 metadata bytes per block) and
NVFP4's float32 ``"tensor_scale"``. Bit ``0`` is the least significant bit of a code; for an
element of ``b`` bits, bit ``b - 1`` is the sign bit of a signed format. Scale tensors count bits
within each block's scale bytes (HiF4: bit ``8 * k + j`` is bit ``j`` of byte ``k``) and within the
32 bits of a float32 tensor scale.

* :func:`flip_bits`: flip chosen bit positions of chosen elements (or of every element).
* :func:`flip_random`: ``n`` random distinct stored bits, or every stored bit independently with
  probability ``rate`` (a bit error rate), drawn from a ``torch.Generator``: the same generator
  state flips the same bits. Returns the flipped tensor and a :class:`FlipLog` of what flipped.
* :func:`inject`: encode a float tensor, flip, decode (the fake-quantized value a soft error leaves).
* :func:`bit_sensitivity`: how often a flip of each bit position gives NaN, Inf or a large error,
  per format, exhaustively over every finite code or over quantized Gaussian data.

The fault model is the single-bit flip in stored data that soft-error studies of DNNs inject
(Li et al., "Understanding Error Propagation in Deep Learning Neural Network (DNN) Accelerators
and Applications", SC 2017), applied here to the exact bytes floatlab's codecs store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floatlab.formats.block import BlockFormat
from floatlab.formats.registry import get_format
from floatlab.ops.api import decode, encode
from floatlab.rounding import check_generator
from floatlab.tensor.qtensor import QTensor

CODES = "codes"


@dataclass(frozen=True)
class FlipLog:
    """What :func:`flip_random` flipped: for each flip, the target (``"codes"`` or a scale name),
    the flat index of the element (logical index for codes, block index for scales) and the bit."""

    target: tuple[str, ...]
    index: torch.Tensor
    bit: torch.Tensor

    def __len__(self) -> int:
        return len(self.target)


def _check_q(q) -> QTensor:
    if not isinstance(q, QTensor):
        raise TypeError(f"expected a QTensor (from floatlab.encode), got {type(q).__name__}; "
                        "use floatlab.faults.inject for a float tensor")
    return q


def _width(q: QTensor, target: str) -> int:
    """Bits per addressable unit of ``target``: per element code, or per block of a scale."""
    if target == CODES:
        return q.element_bits
    if target not in q.scales:
        valid = [CODES, *q.scales]
        raise ValueError(f"unknown target {target!r} for a {q.format.name!r} QTensor (valid: {', '.join(valid)})")
    t = q.scales[target]
    per_block = t[0].numel() if t.dim() > 1 else 1
    return per_block * t.element_size() * 8


def _units(q: QTensor, target: str) -> int:
    if target == CODES:
        return q.numel
    t = q.scales[target]
    return t.shape[0] if t.dim() > 1 else t.numel()


def _as_bit_words(t: torch.Tensor) -> torch.Tensor:
    """(units, bytes_per_unit) uint8 view of a scale tensor (float32 as its 4 little-endian bytes)."""
    flat = t.contiguous().reshape(t.shape[0], -1) if t.dim() > 1 else t.contiguous().reshape(-1, 1)
    return flat.view(torch.uint8).reshape(flat.shape[0], -1)


def _xor_masks(index: torch.Tensor, bit: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(units, masks)``: the distinct units touched and the XOR of their flips (a pair listed
    twice flips twice, which restores the bit)."""
    units, inverse = torch.unique(index, return_inverse=True)
    parity = torch.zeros(units.numel(), width, dtype=torch.int64)
    parity.index_put_((inverse, bit), torch.ones_like(bit), accumulate=True)
    parity = parity % 2
    return units, (parity << torch.arange(width, dtype=torch.int64)).sum(1)


def _flip_scale(t: torch.Tensor, index: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    words = _as_bit_words(t).clone()
    units, masks = _xor_masks(index, bit, words.shape[1] * 8)
    for k in range(words.shape[1]):
        byte = ((masks >> (8 * k)) & 0xFF).to(torch.uint8)
        words[units, k] = torch.bitwise_xor(words[units, k], byte)
    shape = t.shape
    if t.dim() > 1:
        return words.reshape(shape[0], -1).view(t.dtype).reshape(shape)
    return words.reshape(-1).view(t.dtype).reshape(shape)


def _blocked_positions(q: QTensor, index: torch.Tensor) -> torch.Tensor:
    """Flat positions in ``q.blocked_codes()`` of logical flat indices ``index``."""
    from floatlab.plain.blocking import to_blocks

    marks = (torch.arange(q.numel, dtype=torch.float64) + 1).reshape(q.shape)
    blocks, _ = to_blocks(marks, q.format.block, q.meta.get("axis", -1))
    flat = blocks.reshape(-1)
    where = torch.zeros(q.numel + 1, dtype=torch.int64)
    nz = (flat > 0).nonzero()[:, 0]
    where[flat[nz].to(torch.int64)] = nz
    return where[index + 1]


def _apply(q: QTensor, target: str, index: torch.Tensor, bit: torch.Tensor) -> QTensor:
    if target != CODES:
        scales = dict(q.scales)
        scales[target] = _flip_scale(q.scales[target], index, bit)
        return QTensor(q.data, q.format, q.shape, q.dtype, scales, dict(q.meta))
    units, masks = _xor_masks(index, bit, q.element_bits)
    if q.is_block:
        blocked = q.blocked_codes().clone()
        flat = blocked.reshape(-1)
        pos = _blocked_positions(q, units)
        flat[pos] = torch.bitwise_xor(flat[pos], masks)
        return QTensor.from_codes(blocked, q.format, dtype=q.dtype, scales=dict(q.scales),
                                  meta=dict(q.meta), shape=q.shape)
    codes = q.codes.clone().reshape(-1)
    codes[units] = torch.bitwise_xor(codes[units], masks)
    return QTensor.from_codes(codes.reshape(q.shape), q.format, dtype=q.dtype)


def flip_bits(q: QTensor, bits, *, index=None, target: str = CODES) -> QTensor:
    """A copy of ``q`` with bit positions ``bits`` flipped in the chosen units of ``target``.

    Args:
        q: a QTensor from :func:`floatlab.encode` (scalar or block format).
        bits: an int or a sequence of ints, each in ``0 .. width - 1`` (``width``: the element's
            bits for ``"codes"``, the bits of one block's scale for a scale target).
        index: flat indices of the elements (``"codes"``: into the logical tensor, row-major) or
            blocks (scale targets) to flip, each at most once, or a boolean mask over them;
            ``None`` flips every one.
        target: ``"codes"`` or the name of a scale tensor (``"scale"``, ``"tensor_scale"``).

    Returns:
        A new QTensor of ``q``'s format, shape and dtype; ``q`` is unchanged. Exactly the named bits
        differ (the rest of the storage, packing padding included, is identical).

    Raises:
        TypeError: ``q`` is not a QTensor.
        ValueError: a bit position outside the width or repeated, an index out of range,
            repeated, not flat (more than one dimension) or not integer (a boolean mask of another
            length), an unknown target.
    """
    _check_q(q)
    width = _width(q, target)
    units = _units(q, target)
    bit_list = [bits] if isinstance(bits, int) else list(bits)
    if not bit_list or any(not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < width for b in bit_list):
        raise ValueError(f"bits must be ints in 0..{width - 1} for target {target!r} of "
                         f"{q.format.name!r}, got {bits!r}")
    if index is None:
        idx = torch.arange(units, dtype=torch.int64)
    else:
        raw = torch.as_tensor(index)
        if raw.numel() == 0:                             # [] reads as float32: flip nothing
            raw = raw.to(torch.int64)
        if raw.dtype == torch.bool:                      # a mask, not the indices 0 and 1
            if raw.numel() != units:
                raise ValueError(f"a boolean index is a mask over the {units} units of {target!r}; got {raw.numel()} "
                                 "values (give a mask of that many, or integer flat indices)")
            raw = raw.reshape(-1).nonzero()[:, 0]
        elif raw.is_floating_point() or raw.is_complex():
            raise ValueError(f"index must hold integer flat indices (or a boolean mask), got {raw.dtype}")
        idx = raw.to(torch.int64)
        if idx.dim() > 1:
            raise ValueError(f"index must be flat indices (an int or a 1-D sequence), got shape {tuple(idx.shape)}; "
                             f"for a position (i, j, ...) in the tensor pass its row-major flat index")
        idx = idx.reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= units):
            raise ValueError(f"index out of range: {target!r} has {units} units (0..{units - 1})")
        if torch.unique(idx).numel() != idx.numel():      # flipped twice = not flipped at all
            raise ValueError("index repeats an element; each listed element is flipped once, so give each once")
    if len(set(bit_list)) != len(bit_list):
        raise ValueError(f"bits repeats a position ({bits!r}); each listed bit is flipped once, so give each once")
    all_idx = idx.repeat_interleave(len(bit_list))
    all_bits = torch.tensor(bit_list, dtype=torch.int64).repeat(idx.numel())
    return _apply(q, target, all_idx, all_bits)


def flip_random(q: QTensor, n: int | None = None, *, rate: float | None = None, target: str = "all",
                generator: torch.Generator | None = None) -> tuple[QTensor, FlipLog]:
    """Flip random stored bits of ``q``: ``n`` distinct bits, or each bit with probability ``rate``.

    Args:
        q: a QTensor.
        n: number of distinct bits to flip, uniformly over every stored bit of ``target``.
        rate: bit error rate: every stored bit flips independently with this probability
            (exactly one of ``n`` and ``rate``).
        target: ``"all"`` (element codes and every scale), ``"codes"``, ``"scales"`` (every
            scale tensor) or one scale name.
        generator: ``torch.Generator`` (CPU): the same state flips the same bits.

    Returns:
        ``(flipped, log)``: a new QTensor of ``q``'s format, shape and dtype, and the
        :class:`FlipLog` of the flips (in storage order: codes first, then each scale).

    Raises:
        ValueError: both or neither of ``n``/``rate``, ``n`` larger than the stored bits,
            ``rate`` outside [0, 1], an unknown target.
        TypeError: ``q`` is not a QTensor, ``generator`` is not a ``torch.Generator``.
    """
    _check_q(q)
    check_generator(generator)
    if (n is None) == (rate is None):
        raise ValueError("give exactly one of n (number of flips) and rate (bit error rate)")
    if target == "all":
        targets = [CODES, *q.scales]
    elif target == "scales":
        targets = list(q.scales)
    else:
        _width(q, target)
        targets = [target]
    sizes = [_units(q, t) * _width(q, t) for t in targets]
    total = sum(sizes)
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= total:
            held = " + ".join(f"{t} {sz}" for t, sz in zip(targets, sizes))
            raise ValueError(f"n must be an int in 0..{total}: the {q.format.name!r} QTensor stores {total} bits "
                             f"in target {target!r} ({held}), got {n!r}")
        picks = torch.randperm(total, generator=generator)[:n]
    else:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {rate!r}")
        picks = (torch.rand(total, dtype=torch.float64, generator=generator) < rate).nonzero()[:, 0]
    picks, _ = torch.sort(picks)
    out = q
    names, idx_all, bit_all = [], [], []
    start = 0
    for t, size in zip(targets, sizes):
        mine = picks[(picks >= start) & (picks < start + size)] - start
        start += size
        if mine.numel() == 0:
            continue
        w = _width(q, t)
        idx, bit = mine // w, mine % w
        out = _apply(out, t, idx, bit)
        names += [t] * mine.numel()
        idx_all.append(idx)
        bit_all.append(bit)
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.int64))  # noqa: E731
    return out, FlipLog(tuple(names), cat(idx_all), cat(bit_all))


def inject(x: torch.Tensor, fmt, bits=None, *, index=None, n: int | None = None, rate: float | None = None,
           target: str = CODES, generator: torch.Generator | None = None, **encode_options) -> torch.Tensor:
    """``decode(flip(encode(x, fmt)))``: the values a soft error leaves in quantized memory.

    Give ``bits`` (with optional ``index``) for chosen flips, or ``n``/``rate`` for random ones
    (:func:`flip_random`, with ``target``). ``encode_options`` go to :func:`floatlab.encode`.

    Args:
        x: float tensor of any shape (block formats block its last axis unless ``axis`` is given
            in ``encode_options``).
        fmt: any floatlab format (name or spec).
        bits, index, target: as :func:`flip_bits`; n, rate, generator: as :func:`flip_random`.

    Returns:
        A float tensor of ``x``'s shape and dtype: the decoded values after the flips.

    Raises:
        ValueError: ``bits`` together with ``n``/``rate``, neither given, and every error of
            :func:`flip_bits`, :func:`flip_random` and :func:`floatlab.encode`.
        TypeError: as :func:`floatlab.encode` (a non-tensor ``x``).
    """
    if bits is None and n is None and rate is None:
        raise ValueError("give bits (chosen flips, with optional index) or n/rate (random flips)")
    q = encode(x, fmt, **encode_options)
    if bits is not None:
        if n is not None or rate is not None:
            raise ValueError("give either bits (chosen flips) or n/rate (random flips), not both")
        flipped = flip_bits(q, bits, index=index, target=target)
    else:
        flipped, _ = flip_random(q, n, rate=rate, target=target, generator=generator)
    return decode(flipped)


# ---- sensitivity of each bit position -------------------------------------------------------------
def _classify(v: torch.Tensor, w: torch.Tensor, large: float) -> dict[str, float]:
    nan = torch.isnan(w) & ~torch.isnan(v)
    inf = torch.isinf(w) & ~torch.isinf(v)
    fin = torch.isfinite(w) & torch.isfinite(v)
    big = fin & ((w - v).abs() > large)
    n = v.numel()
    return {"nan": float(nan.sum()) / n, "inf": float(inf.sum()) / n, "large": float(big.sum()) / n,
            "harmful": float((nan | inf | big).sum()) / n}


def bit_sensitivity(fmt, *, data: str = "codes", samples: int = 65536, large: float | None = None,
                    generator: torch.Generator | None = None) -> list[dict]:
    """For each stored bit position of ``fmt``: the fraction of flips that give NaN, Inf, or a
    finite error larger than ``large``.

    Args:
        fmt: a scalar format (8..16 bits: every code) or a block format (data only).
        data: ``"codes"`` (scalar formats: every finite code once, an exact census) or
            ``"normal"`` (``samples`` N(0, 1) values quantized to the format; block formats
            along the last axis, rows of 256).
        large: the error counted as large (default: for ``"codes"`` the value's own magnitude,
            ``|w - v| > max(|v|, smallest normal)``; for ``"normal"`` the largest magnitude of
            the clean quantized data, i.e. the flip creates a value outside the tensor's range).
        generator: for the ``"normal"`` data.

    Returns:
        Rows ``{"format", "target", "bit", "nan", "inf", "large", "harmful"}`` (fractions of the
        flipped elements), one per element bit and, for block formats, per scale bit.

    Raises:
        ValueError: ``data="codes"`` with a block format or a format of more than 16 bits.
        TypeError: ``generator`` is not a ``torch.Generator``.
    """
    check_generator(generator)
    spec = get_format(fmt)
    rows = []
    if data == "codes":
        if isinstance(spec, BlockFormat) or spec.bits > 16:
            raise ValueError(f"data='codes' enumerates every code of a scalar format of at most 16 bits; "
                             f"use data='normal' for {spec.name!r}")
        codes = torch.arange(2 ** spec.bits, dtype=torch.int64)
        v = spec.decode(codes)
        keep = torch.isfinite(v)
        codes, v = codes[keep], v[keep]
        floor = spec.smallest_normal
        for bit in range(spec.bits):
            w = spec.decode(codes ^ (1 << bit))
            thr = torch.clamp(v.abs(), min=floor) if large is None else torch.full_like(v, large)
            nan = torch.isnan(w)
            inf = torch.isinf(w)
            big = torch.isfinite(w) & ((w - v).abs() > thr)
            n = v.numel()
            rows.append({"format": spec.name, "target": CODES, "bit": bit, "nan": float(nan.sum()) / n,
                         "inf": float(inf.sum()) / n, "large": float(big.sum()) / n,
                         "harmful": float((nan | inf | big).sum()) / n})
        return rows
    if data != "normal":
        raise ValueError(f"data must be 'codes' or 'normal', got {data!r}")
    x = torch.randn(max(samples // 256, 1), 256, generator=generator)
    q = encode(x, spec)
    clean = decode(q, dtype=torch.float64)
    thr = float(clean[torch.isfinite(clean)].abs().max()) if large is None else large
    for target in [CODES, *q.scales]:
        width = _width(q, target)
        for bit in range(width):
            w = decode(flip_bits(q, bit, target=target), dtype=torch.float64)
            rows.append({"format": spec.name, "target": target, "bit": bit, **_classify(clean, w, thr)})
    return rows


def bit_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`bit_sensitivity` rows: one line per bit position (highest
    first), one column per (format, target), each cell ``NaN/Inf/large`` in percent of the flipped
    elements ("0" for none; two significant digits below 10 %).

    Args:
        rows: rows of one or more :func:`bit_sensitivity` calls, concatenated.

    Returns:
        The table as a string ending in a newline; a bit a format does not have is an empty cell.

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("bit_table needs the rows of at least one bit_sensitivity call")
    keys = list(dict.fromkeys((r["format"], r["target"]) for r in rows))
    maxbit = max(r["bit"] for r in rows)
    header = ["bit"] + [f"{f}{'' if t == CODES else ' ' + t} NaN/Inf/large %" for f, t in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bit in range(maxbit, -1, -1):
        cells = [str(bit)]
        for f, t in keys:
            m = [r for r in rows if (r["format"], r["target"], r["bit"]) == (f, t, bit)]
            cells.append("" if not m else "/".join(_pct(m[0][k]) for k in ("nan", "inf", "large")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    if x == 0:
        return "0"
    p = 100 * x
    return f"{p:.0f}" if p >= 10 else (f"{p:.1f}" if p >= 0.1 else f"{p:.2g}")


__all__ = ["FlipLog", "bit_sensitivity", "bit_table", "flip_bits", "flip_random", "inject"]
