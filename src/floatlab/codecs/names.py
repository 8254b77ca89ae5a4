"""Short codec names (what the CLI's ``--format`` accepts) and codecs from their dicts.

========================================== =========================================================
name                                       codec
========================================== =========================================================
``int{b}_asym``, ``int{b}_asym_g{G}``      :class:`AffineInt` (b = 2..8), per row or per G columns
``binary``, ``binary_mean``, ``..._cf``,   :class:`Binary`: sign x scale, around the row mean,
``..._g{G}``                               with a stored per-column factor, per G columns
``ternary``, ``ternary_g{G}``              :class:`Ternary` (TWN threshold 0.7 mean|w|)
``{low}_salient{P}[wmag|rand][_{wide}]``   :class:`Masked`: P% of the input channels (chosen by
                                           activation max; ``wmag``: weight magnitude; ``rand``:
                                           at random) in ``wide`` (default ``int4_asym``), the
                                           rest in ``low``
``ptq161``                                 ``binary_mean_cf_salient20``: PTQ1.61's layout
``fineq``, ``fineq_g{G}``                  :class:`ClusterCodec`: FineQ's clusters of 3 (2-bit index)
``cluster_{L1}-{L2}-..[_g{G}]``            :class:`ClusterCodec` with the layouts spelled as digits
                                           (``cluster_222-330``: clusters of 3, widths 2,2,2 or 3,3,0)
========================================== =========================================================

Every floatlab format name is a codec too (:class:`FormatCodec`), but names it directly; the
functions here answer ``None`` for a name that is not one of the codec names above.
"""

from __future__ import annotations

import re

from floatlab.codecs.affine import AffineInt
from floatlab.codecs.base import CodecError, WeightCodec
from floatlab.codecs.binary import Binary, Ternary
from floatlab.codecs.cluster import ClusterCodec, fineq
from floatlab.codecs.format import FormatCodec
from floatlab.codecs.masked import Masked

ALIASES = {"ptq161": "binary_mean_cf_salient20"}
_AFFINE = re.compile(r"^int(\d+)_asym(?:_g(\d+))?$")
_BINARY = re.compile(r"^binary(_mean)?(_cf)?(?:_g(\d+))?$")
_TERNARY = re.compile(r"^ternary(?:_g(\d+))?$")
_FINEQ = re.compile(r"^fineq(?:_g(\d+))?$")
_CLUSTER = re.compile(r"^cluster_(\d+(?:-\d+)*)(?:_g(\d+))?$")
_MASKED = re.compile(r"^(?P<low>.+?)_salient(?P<pct>\d+(?:\.\d+)?)(?P<rule>wmag|rand)?(?:_(?P<wide>.+))?$")
_RULES = {None: "act_max", "wmag": "weight", "rand": "random"}
EXAMPLES = ("int3_asym_g128", "int2_asym", "binary", "binary_mean", "ternary", "binary_mean_salient20", "ptq161")


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _simple(key: str, pad: bool) -> WeightCodec | None:
    m = _AFFINE.match(key)
    if m:
        return AffineInt(int(m.group(1)), _int(m.group(2)), pad)
    m = _BINARY.match(key)
    if m:
        return Binary(bool(m.group(1)), bool(m.group(2)), _int(m.group(3)), pad)
    m = _TERNARY.match(key)
    if m:
        return Ternary(_int(m.group(1)), pad)
    m = _FINEQ.match(key)
    if m:
        return fineq(_int(m.group(1)), pad)
    m = _CLUSTER.match(key)
    if m:
        layouts = tuple(tuple(int(ch) for ch in part) for part in m.group(1).split("-"))
        if len({len(l) for l in layouts}) != 1:
            raise CodecError(f"{key!r}: every layout must spell one width per position of the cluster (all the same "
                             f"length), e.g. cluster_222-330")
        return ClusterCodec(len(layouts[0]), layouts, None, _int(m.group(2)), pad)
    return None


def get_codec(name: str, pad: bool = True) -> WeightCodec | None:
    """The codec a short name describes (see the module docstring), or ``None`` when ``name``
    is not a codec name. Raises :class:`CodecError` for a codec name with a bad value (e.g. a
    salient fraction outside (0, 1), ``int9_asym``)."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    simple = _simple(key, pad)
    if simple is not None:
        return simple
    m = _MASKED.match(key)
    if not m:
        return None
    low = _simple(m.group("low"), pad)
    if low is None:
        raise CodecError(f"{name!r}: the low-bit part {m.group('low')!r} is not a codec name "
                         "(int{b}_asym[_g{G}], binary[_mean][_cf][_g{G}], ternary[_g{G}])")
    wide = AffineInt(4, None, pad)
    if m.group("wide"):
        wide = _simple(m.group("wide"), pad)
        if wide is None:
            raise CodecError(f"{name!r}: the salient part {m.group('wide')!r} is not a codec name")
    pct = float(m.group("pct"))
    return Masked(low, wide, pct / 100.0 if 0 < pct < 100 else _bad_fraction(name, pct), _RULES[m.group("rule")])


def _bad_fraction(name: str, pct: float):
    raise CodecError(f"{name!r}: the salient share must be a percentage strictly between 0 and 100 (a fraction "
                     f"in (0, 1)), got {pct:g}%")


def is_codec_name(name) -> bool:
    try:
        return get_codec(name) is not None
    except CodecError:
        return True


_TYPES = {"affine": AffineInt, "binary": Binary, "ternary": Ternary}


def _cluster(d: dict) -> WeightCodec:
    d = dict(d)
    d["layouts"] = tuple(tuple(l) for l in d["layouts"])
    return ClusterCodec(**d)


def codec_from_dict(d: dict) -> WeightCodec:
    """Inverse of ``codec.to_dict()``. Raises ``ValueError`` for an unknown or malformed dict
    (the file may be untrusted: only known fields of known codecs are accepted)."""
    if not isinstance(d, dict) or "codec" not in d:
        raise CodecError(f"not a codec description: {d!r}")
    d = dict(d)
    kind = d.pop("codec")
    try:
        if kind == "masked":
            return Masked(codec_from_dict(d["low"]), codec_from_dict(d["wide"]), d["fraction"], d["select"])
        if kind == "format":
            return FormatCodec.from_reference(d)
        if kind == "cluster":
            return _cluster(d)
        if kind in _TYPES:
            return _TYPES[kind](**d)
    except (TypeError, KeyError) as err:
        raise CodecError(f"malformed {kind!r} codec description {d!r}: {err}") from None
    raise CodecError(f"unknown codec kind {kind!r}")
