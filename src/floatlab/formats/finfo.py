"""Facts about a format, derived from its spec (never typed in)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from floatlab.formats.base import ScalarFormat
from floatlab.formats.registry import get_format


@dataclass(frozen=True)
class FInfo:
    """What :func:`finfo` returns (the fields of ``torch.finfo``/``numpy.finfo`` where they exist,
    under the same names, in float64 values).

    Attributes:
        name: the format's canonical name. bits: its width.
        max: the largest finite value. lowest: the most negative finite value (the smallest value
            for an unsigned format: 0, or the smallest positive one without a zero).
        smallest_normal: the smallest positive normal value (``torch.finfo.tiny``; for formats
            without subnormals, fixed point and integers, the smallest positive value).
        smallest_subnormal: the smallest positive value.
        eps: the spacing of the grid at 1.0 (its step for fixed point and integers).
        num_finite: distinct finite values (+0 and -0 counted once).
        binades: powers of two from the smallest positive to the largest finite value.
        has_inf, has_nan, has_neg_zero: which special codes exist.
        overflow: what rounding past ``max`` gives by default (``"saturate"``, ``"inf"``, ``"nan"``).
    """

    name: str
    bits: int
    max: float
    lowest: float
    smallest_normal: float
    smallest_subnormal: float
    eps: float
    num_finite: int
    binades: int
    has_inf: bool
    has_nan: bool
    has_neg_zero: bool
    overflow: str


def _count_finite(fmt: ScalarFormat) -> int:
    """Distinct finite values: every code is decoded (formats up to 24 bits), else a formula."""
    if fmt.bits <= 24:
        v = fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int64))
        v = v[torch.isfinite(v)]
        return int(torch.unique(v).numel())  # +0 and -0 compare equal: one zero
    # IEEE-style beyond 24 bits: each sign has codes 1..max_code of distinct nonzero values
    positive = fmt.max_code if fmt.has_zero else fmt.max_code + 1
    return positive * (2 if fmt.signed else 1) + int(fmt.has_zero)


def finfo(fmt) -> FInfo:
    """Derived facts of a scalar format: range, precision, count of values, specials.

    ``eps`` is the spacing of the grid at 1.0 (the gap from 1.0 to the next value); ``binades`` counts the powers of two
    from the smallest positive value to the largest finite value. Every field is derived from the
    spec (decoding codes), never typed in; tests compare them with ``torch.finfo`` and
    ``ml_dtypes.finfo`` where those know the format.

    Args:
        fmt: a scalar format's name or spec (``"e4m3"``, ``"fp16"``, ``"q3.4"``, ``"int8"``, ...).

    Returns:
        :class:`FInfo`.

    Raises:
        TypeError: ``fmt`` is a block format (ask about its element format).
        ValueError: an unknown format name (with did-you-mean suggestions).
    """
    spec = get_format(fmt)
    if not isinstance(spec, ScalarFormat):
        raise TypeError(f"finfo describes scalar formats; {spec.name!r} is a block format "
                        f"(see its element format {getattr(spec, 'element', None)})")
    spacing_at_one = 2.0 ** int(spec.quantum_exponent(torch.tensor([0])).item())
    smallest = spec.smallest_positive
    return FInfo(
        name=spec.name, bits=spec.bits, max=spec.max_value,
        lowest=-spec.max_negative if spec.signed else (0.0 if spec.has_zero else smallest),
        smallest_normal=spec.smallest_normal, smallest_subnormal=smallest,
        eps=spacing_at_one, num_finite=_count_finite(spec),
        binades=math.floor(math.log2(spec.max_value)) - math.floor(math.log2(smallest)) + 1,
        has_inf=spec.has_inf, has_nan=spec.has_nan, has_neg_zero=spec.neg_zero,
        overflow=spec.overflow.value,
    )
