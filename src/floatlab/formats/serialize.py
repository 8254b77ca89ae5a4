"""Formats to and from JSON-able dicts (for checkpoints and recipes)."""

from __future__ import annotations

import dataclasses

from floatlab.formats.block import BlockFormat
from floatlab.formats.floating import FloatFormat
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.integer import IntFormat
from floatlab.formats.registry import get_format

_KINDS = {"float": FloatFormat, "int": IntFormat, "hif8": HiF8Format, "block": BlockFormat}


def format_to_dict(fmt) -> dict:
    """A plain dict that :func:`format_from_dict` turns back into an equal format."""
    kind = next(k for k, cls in _KINDS.items() if isinstance(fmt, cls))
    out = {"kind": kind}
    for f in dataclasses.fields(fmt):
        v = getattr(fmt, f.name)
        if f.name in ("element", "scale"):
            v = format_to_dict(v)
        elif hasattr(v, "value"):  # enums
            v = v.value
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def format_from_dict(d: dict):
    d = dict(d)
    cls = _KINDS[d.pop("kind")]
    for key in ("element", "scale"):
        if key in d:
            d[key] = format_from_dict(d[key])
    if "block" in d:
        d["block"] = tuple(d["block"])
    return cls(**d)


_codec_loader = None


def register_codec_loader(loader) -> None:
    """``floatlab.codecs`` registers how a codec comes back from its dict (formats know nothing of
    codecs; a codec is recognized by ``kind == "codec"`` and its ``to_dict()``)."""
    global _codec_loader
    _codec_loader = loader


def format_reference(fmt) -> dict:
    """The registered name when the name alone recreates ``fmt``, else the full spec; a weight
    codec (``kind == "codec"``) as ``{"codec": codec.to_dict()}``."""
    if getattr(fmt, "kind", None) == "codec":
        return {"codec": fmt.to_dict()}
    try:
        if get_format(fmt.name) == fmt:
            return {"name": fmt.name}
    except ValueError:
        pass
    return {"spec": format_to_dict(fmt)}


def format_from_reference(ref: dict):
    if "codec" in ref:
        if _codec_loader is None:
            raise ValueError("this tensor was stored with a weight codec; import floatlab.codecs to read it")
        return _codec_loader(ref["codec"])
    return get_format(ref["name"]) if "name" in ref else format_from_dict(ref["spec"])
