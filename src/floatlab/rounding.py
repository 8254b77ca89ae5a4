"""Rounding modes: one enum, with the tie rule in every name.

The names follow ``FORMATS.md`` section 0. A mode says how a real number that lies between two
neighbouring representable values ``lo < x < hi`` is mapped to one of them:

======== ==================================================================================
``rne``  nearest; a tie goes to the neighbour with an *even significand* (counted in units
         of the spacing between the two neighbours), as IEEE 754 and ml_dtypes do
``rna``  nearest; a tie goes away from zero (HiFloat8's "TA", AscendC ``CAST_ROUND``)
``rnz``  nearest; a tie goes toward zero
``rtz``  toward zero (truncation)
``rup``  toward +infinity (ceiling)
``rdn``  toward -infinity (floor)
``rto``  round to odd: exact values stay, anything else goes to the neighbour with an odd
         significand (useful to avoid double rounding)
``sr``   stochastic: away from zero with probability ``(|x| - |lo|) / (|hi| - |lo|)``;
         with ``sr_bits=k`` that fraction is truncated to ``k`` bits and compared with a
         ``k``-bit random integer, as hardware does
``sr_half`` stochastic with probability 1/2 for every inexact value
``hybrid`` HiFloat8 only: Huawei's hybrid rounding (HR), ties-away where ``|E| < 4`` and
         self-stochastic rounding elsewhere (see :mod:`floatlab.formats.hifloat8`)
======== ==================================================================================

Exactly representable values are never moved by any mode.
"""

from __future__ import annotations

import difflib
import enum

import torch


class RoundingMode(str, enum.Enum):
    RNE = "rne"
    RNA = "rna"
    RNZ = "rnz"
    RTZ = "rtz"
    RUP = "rup"
    RDN = "rdn"
    RTO = "rto"
    SR = "sr"
    SR_HALF = "sr_half"
    HYBRID = "hybrid"

    @property
    def is_stochastic(self) -> bool:
        return self in (RoundingMode.SR, RoundingMode.SR_HALF, RoundingMode.HYBRID)

    @property
    def is_nearest(self) -> bool:
        return self in (RoundingMode.RNE, RoundingMode.RNA, RoundingMode.RNZ)

    @property
    def is_symmetric(self) -> bool:
        """True when ``round(-x) == -round(x)`` (every deterministic mode except rup/rdn)."""
        return self in (RoundingMode.RNE, RoundingMode.RNA, RoundingMode.RNZ,
                        RoundingMode.RTZ, RoundingMode.RTO)

    def __str__(self) -> str:  # so f-strings print "rne", not "RoundingMode.RNE"
        return self.value


_ALIASES = {
    "nearest_even": "rne", "even": "rne", "rint": "rne",
    "nearest_away": "rna", "ta": "rna", "away": "rna", "round": "rna",
    "nearest_zero": "rnz",
    "trunc": "rtz", "toward_zero": "rtz", "truncate": "rtz",
    "ceil": "rup", "up": "rup",
    "floor": "rdn", "down": "rdn",
    "odd": "rto",
    "stochastic": "sr",
    "hr": "hybrid",
}


def parse_rounding(mode: "str | RoundingMode") -> RoundingMode:
    """Turn a name (or an enum member) into a :class:`RoundingMode`, or raise a clear error."""
    if isinstance(mode, RoundingMode):
        return mode
    if not isinstance(mode, str):
        raise TypeError(f"rounding must be a string or RoundingMode, got {type(mode).__name__}")
    key = mode.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return RoundingMode(key)
    except ValueError:
        valid = [m.value for m in RoundingMode]
        close = difflib.get_close_matches(key, valid + list(_ALIASES), n=3, cutoff=0.5)
        # an alias is shown with the mode it names, so every suggestion ties to the list below
        hint = (" Did you mean: " + ", ".join(f"{c} (= {_ALIASES[c]})" if c in _ALIASES else c for c in close)
                + "?") if close else ""
        raise ValueError(
            f"unknown rounding mode {mode!r}.{hint} Valid modes: {', '.join(valid)}") from None


def check_flag(value, name: str, optional: bool = False) -> bool | None:
    """``value`` as a bool: ``True``/``False`` (numpy's bool too; ``None`` where ``optional``),
    else a ``TypeError`` naming ``name``. A string such as ``"no"`` is truthy in Python, so
    ``saturate="no"`` would silently saturate: it is refused instead."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value)
    raise TypeError(f"{name} must be True or False{' (or None)' if optional else ''}, "
                    f"got {type(value).__name__} {value!r}")


def check_generator(generator, device=None) -> None:
    """Refuse a ``generator`` that is not a ``torch.Generator`` (``TypeError``), or, given the
    ``device`` of the tensor it draws for, one on another device type (``ValueError``)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
                        f"got {type(generator).__name__}")
    if device is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {device}")


MAX_SR_BITS = 52


def resolve_rounding(fmt, rounding, sr_bits) -> RoundingMode:
    """Parse and validate a rounding mode (and ``sr_bits``) for the format ``fmt``.

    ``rounding=None`` takes ``fmt.default_rounding``. Raises ``ValueError`` for a mode the format
    does not define (hybrid outside hif8) and for ``sr_bits`` outside ``1..52`` or given with a
    mode other than ``sr``.
    """
    mode = fmt.default_rounding if rounding is None else parse_rounding(rounding)
    if not fmt.valid_rounding(mode):
        raise ValueError(f"rounding {mode.value!r} is not valid for format {fmt.name!r} "
                         "(hybrid rounding is defined for hif8 only)")
    if sr_bits is not None:
        if mode is not RoundingMode.SR:
            raise ValueError(f"sr_bits applies to rounding='sr' only, not {mode.value!r}")
        if isinstance(sr_bits, bool) or not isinstance(sr_bits, int) or not 1 <= sr_bits <= MAX_SR_BITS:
            raise ValueError(f"sr_bits must be an integer in 1..{MAX_SR_BITS}, got {sr_bits!r}")
    return mode
