"""Format names: the built-in registry, user registration, and parsing of spelled formats.

``get_format`` accepts (case-insensitive):

* a registered name or alias (:func:`list_formats`);
* any spelled minifloat ``[u]eXmY[fn|fnuz|fnone][_bBIAS][_nosub|_nozero][_inf]`` (a
  :class:`FloatFormat`; ``_inf`` puts +-Inf on the top non-NaN code, ``top_inf=True``);
* any ``intN`` / ``uintN`` (N = 2..16);
* fixed point ``q<i>.<f>`` / ``uq<i>.<f>`` (TI's Q notation: ``i`` integer bits not counting the
  sign, ``f`` fraction bits; ``q3.4`` is 8-bit signed, step 2^-4, range [-8, 8 - 2^-4]; ARM counts
  the sign in ``i``): an :class:`IntFormat` with ``frac_bits=f``, 2..16 bits in all;
* an IEEE P3109 binary8 format (interim report; the definitions of gfloat's
  ``format_info_p3109``): ``p3109_p<P>[s|u][e|f]``, also spelled ``p3109_k8p<P>[s|u][e|f]`` or
  ``binary8p<P>[s|u][e|f]``. ``P`` is the precision (significand bits with the implicit one):
  1..7 signed (``s``, the default), 1..8 unsigned (``u``); ``e`` (extended, the default) has
  +-Inf on the top code of each sign, ``f`` (finite) has none. Signed formats have one NaN at
  0x80 (no negative zero), unsigned ones at 0xFF; all have subnormals; the bias is
  ``2^(7-P)`` signed and ``2^(8-P)`` unsigned. They are ordinary :class:`FloatFormat` s named
  ``p3109_p<P><s|u><e|f>`` (``p3109_p3`` is ``p3109_p3se`` = ``e5m2fnuz_inf``; ``p3109_p4sf`` =
  ``e4m3fnuz``; ``p3109_p4ue`` = ``ue5m3fn_b16_inf``);
* a block format spelled ``<element>/<scale>/<block>[x<cols>][/<rule>][/ts][/<rounding>]`` (the default
  name of a :class:`~floatlab.formats.block.BlockFormat`): element and scale are scalar format
  names, the rule one of ``floor ceil even rceil amax four_over_six hif4`` (default: ``floor``
  for power-of-two scales such as E8M0, ``amax`` otherwise, as :func:`block_format`), ``/ts``
  adds NVFP4's FP32 per-tensor scale (only with ``amax`` and ``four_over_six``, the rules with a
  second level), a last ``/<rounding>`` (``rna``, ``sr``...) sets the elements' default rounding
  (``rne`` when left out). Blocks are 1D lengths or ``<rows>x<cols>`` tiles.
  ``e2m1/e8m0/32/floor`` is MXFP4's numerics, ``e2m1/e4m3/16/amax/ts`` NVFP4's,
  ``e2m1/ue5m3/64`` an E2M1 format with UE5M3 scales per 64 values;
* a format object (returned as is).

Unknown names fail with the closest valid names.
"""

from __future__ import annotations

import difflib
import functools
import re

from floatlab.formats.floating import FloatFormat, NanStyle
from floatlab.formats.hifloat8 import HiF8Format
from floatlab.formats.integer import IntFormat

_REGISTRY: dict[str, object] = {}
_ALIASES: dict[str, str] = {}


def register_format(name: str, fmt, aliases: tuple[str, ...] = (), *, replace: bool = False):
    """Register ``fmt`` under ``name`` (and ``aliases``) so every API accepts the name."""
    key = name.lower()
    if not replace and (key in _REGISTRY or key in _ALIASES):
        raise ValueError(f"format name {name!r} is already registered")
    _REGISTRY[key] = fmt
    for a in aliases:
        _ALIASES[a.lower()] = key
    return fmt


def _named(fmt, name):
    """A copy of a dataclass format carrying its registry name."""
    from dataclasses import replace
    return replace(fmt, name=name)


def _builtin() -> None:
    F, N = FloatFormat, NanStyle
    floats = [
        ("fp32", F(8, 23), ("float32", "f32", "single")),
        ("tf32", F(8, 10), ("tensorfloat32",)),
        ("bf16", F(8, 7), ("bfloat16",)),
        ("fp16", F(5, 10), ("float16", "half", "f16")),
        ("e5m2", F(5, 2), ("fp8_e5m2", "float8_e5m2")),
        ("e4m3", F(4, 3, nan=N.FN), ("e4m3fn", "fp8_e4m3", "float8_e4m3fn", "fp8")),
        ("e4m3fnuz", F(4, 3, nan=N.FNUZ), ("float8_e4m3fnuz",)),
        ("e5m2fnuz", F(5, 2, nan=N.FNUZ), ("float8_e5m2fnuz",)),
        ("e3m4", F(3, 4), ("float8_e3m4",)),
        ("e3m2", F(3, 2, nan=N.NONE), ("fp6_e3m2", "float6_e3m2fn", "e3m2fn")),
        ("e2m3", F(2, 3, nan=N.NONE), ("fp6_e2m3", "float6_e2m3fn", "e2m3fn")),
        ("e2m1", F(2, 1, nan=N.NONE), ("fp4", "fp4_e2m1", "float4_e2m1fn", "e2m1fn")),
        ("e1m2", F(1, 2, bias=1, nan=N.NONE), ("fp4_e1m2", "float4_e1m2")),
        ("e8m0", F(8, 0, bias=127, subnormals=False, nan=N.FN, signed=False, zero=False),
         ("e8m0fnu", "float8_e8m0fnu", "ue8m0")),
        ("ue4m3", F(4, 3, nan=N.FN, signed=False), ()),
        ("ue5m3", F(5, 3, nan=N.FN, signed=False), ()),
    ]
    for name, fmt, aliases in floats:
        register_format(name, _named(fmt, name), aliases, replace=True)
    for n in (8, 4, 2):
        register_format(f"int{n}", IntFormat(n), replace=True)
    register_format("hif8", HiF8Format(), ("hifloat8",), replace=True)
    _builtin_blocks()


def _builtin_blocks() -> None:
    from floatlab.formats.block import BlockFormat, ScaleRule
    from floatlab.formats.hifloat4 import E6M2
    from floatlab.rounding import RoundingMode

    g, R = get_format, ScaleRule
    e8m0 = g("e8m0")
    mxint8_elem = IntFormat(8, frac_bits=6, symmetric=True, name="int8_f6_sym")
    blocks = [
        ("mxfp8_e4m3", BlockFormat(g("e4m3"), e8m0, 32), ("mxfp8",)),
        ("mxfp8_e5m2", BlockFormat(g("e5m2"), e8m0, 32), ()),
        ("mxfp6_e3m2", BlockFormat(g("e3m2"), e8m0, 32), ()),
        ("mxfp6_e2m3", BlockFormat(g("e2m3"), e8m0, 32), ("mxfp6",)),
        ("mxfp4", BlockFormat(g("e2m1"), e8m0, 32), ("mxfp4_e2m1",)),
        ("mxint8", BlockFormat(mxint8_elem, e8m0, 32), ()),
        ("nvfp4", BlockFormat(g("e2m1"), g("e4m3"), 16, R.AMAX, tensor_scale=True), ()),
        ("nvfp4_46", BlockFormat(g("e2m1"), g("e4m3"), 16, R.FOUR_OVER_SIX, tensor_scale=True),
         ("nvfp4_four_over_six",)),
        ("nvfp4_2d", BlockFormat(g("e2m1"), g("e4m3"), (16, 16), R.AMAX, tensor_scale=True), ()),
        ("hif4", BlockFormat(g("e1m2"), E6M2, 64, R.HIF4, element_rounding=RoundingMode.RNA,
                             scale_bits=32), ("hifloat4",)),
    ]
    for name, fmt, aliases in blocks:
        register_format(name, _named(fmt, name), aliases, replace=True)


_SPELLED_FLOAT = re.compile(
    r"^(u)?e(\d+)m(\d+)(fnuz|fnone|fn)?(?:_b(-?\d+))?(_nosub|_nozero)?(_inf)?$")
_SPELLED_INT = re.compile(r"^(u)?int(\d+)$")
_SPELLED_P3109 = re.compile(r"^(?:p3109_(?:k8)?|binary8)p(\d+)([su])?([ef])?$")
_NAN_SUFFIX = {None: NanStyle.IEEE, "fn": NanStyle.FN, "fnuz": NanStyle.FNUZ, "fnone": NanStyle.NONE}


def p3109_format(precision: int, signed: bool = True, extended: bool = True) -> FloatFormat:
    """The IEEE P3109 binary8 format of ``precision`` P as a :class:`FloatFormat`.

    Signed: ``e(8-P)m(P-1)``, bias ``2^(7-P)``, NaN at 0x80 (``nan="fnuz"``). Unsigned:
    ``ue(9-P)m(P-1)``, bias ``2^(8-P)``, NaN at 0xFF (``nan="fn"``). Extended formats put +-Inf
    on the top code below the NaN (``top_inf=True``: 0x7F/0xFF signed, 0xFE unsigned). Source:
    the P3109 interim report as gfloat 0.5.2 ``format_info_p3109(8, P, ...)`` defines it.

    Raises:
        ValueError: P outside 1..7 (signed) or 1..8 (unsigned).
    """
    top = 7 if signed else 8
    if not 1 <= precision <= top:
        raise ValueError(f"P3109 binary8 formats have precision 1..{top} when "
                         f"{'signed' if signed else 'unsigned'}, got P = {precision}")
    name = f"p3109_p{precision}{'s' if signed else 'u'}{'e' if extended else 'f'}"
    ebits = 8 - precision + (0 if signed else 1)
    return FloatFormat(ebits, precision - 1, bias=2 ** (ebits - 1), nan=NanStyle.FNUZ if signed
                       else NanStyle.FN, signed=signed, top_inf=extended, name=name)


#: IEEE double's names: a spelled format (e11m52), not registered, so that listings and sweeps
#: over the registry (``floatlab formats``, quality tables) stay about low precision
FP64_NAMES = ("fp64", "float64", "double", "f64")
FP64 = FloatFormat(11, 52, name="fp64")


def _parse(key: str):
    if key in FP64_NAMES:
        return FP64
    m = _SPELLED_FLOAT.match(key)
    if m:
        unsigned, e, mb, nan, bias, sub, inf = m.groups()
        return FloatFormat(int(e), int(mb), bias=None if bias is None else int(bias),
                           subnormals=sub is None, zero=sub != "_nozero",
                           nan=_NAN_SUFFIX[nan], signed=unsigned is None, top_inf=inf is not None)
    m = _SPELLED_INT.match(key)
    if m:
        return IntFormat(int(m.group(2)), signed=m.group(1) is None)
    m = _SPELLED_P3109.match(key)
    if m:
        return p3109_format(int(m.group(1)), signed=m.group(2) != "u", extended=m.group(3) != "f")
    if "/" in key:
        return _parse_block(key)
    m = re.match(r"^(u)?q(\d+)\.(\d+)$", key)          # fixed point, TI's Q notation
    if m:
        signed, i, f = m.group(1) is None, int(m.group(2)), int(m.group(3))
        if not 2 <= i + f + signed <= 16:
            raise ValueError(f"{'q' if signed else 'uq'}{i}.{f} has {i + f + signed} bits; fixed-point "
                             "formats take 2..16 (q: sign + i + f bits, uq: i + f)")
        return IntFormat(i + f + signed, signed=signed, frac_bits=f, name=key)
    return None


def get_format(fmt):
    """Return the format object for a name, a spelled format, or a format object."""
    if not isinstance(fmt, str):
        if hasattr(fmt, "quantum_exponent") or hasattr(fmt, "block_numel"):
            return fmt
        raise TypeError(f"a format must be a name or a format object, got {type(fmt).__name__}")
    key = fmt.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    try:
        parsed = _parse(key)
    except ValueError as err:
        raise ValueError(f"format {fmt!r} is not valid: {err}") from None
    if parsed is not None:
        return parsed
    names = list(_REGISTRY) + list(_ALIASES)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown format {fmt!r}.{hint} See floatlab.list_formats() (or `floatlab formats`); "
        "any eXmY[fn|fnuz|fnone][_bBIAS][_inf], intN/uintN, qI.F, p3109_p<P>[s|u][e|f] or fp64 "
        "spelling also works.")


def list_formats(kind: str | None = None) -> list[str]:
    """Registered format names, in registration order; ``kind`` filters ("scalar", "block")."""
    return [n for n, f in _REGISTRY.items() if kind is None or getattr(f, "kind", "scalar") == kind]


_builtin()


_SPELLED_BLOCK = re.compile(r"^([^/]+)/([^/]+)/(\d+)(?:x(\d+))?((?:/[^/]+)*)$")
_BLOCK_SPELLING = ("a block format is spelled <element>/<scale>/<block>[x<cols>][/<rule>][/ts]"
                   "[/<element rounding>], e.g. e2m1/ue5m3/32, e2m1/e4m3/16/amax/ts or e2m1/e8m0/32/rceil")


@functools.lru_cache(maxsize=256)
def _parse_block(key: str):
    """``<element>/<scale>/<block>[x<cols>][/<rule>][/ts][/<rounding>]`` as a BlockFormat
    (ValueError naming the part at fault)."""
    from floatlab.formats.block import ScaleRule, block_format
    from floatlab.rounding import RoundingMode

    m = _SPELLED_BLOCK.match(key)
    if not m:
        raise ValueError(_BLOCK_SPELLING)
    elem, scale, rows, cols, tail = m.groups()
    rules = [r.value for r in ScaleRule]
    roundings = [r.value for r in RoundingMode if r is not RoundingMode.HYBRID]
    rule = rounding = None
    ts = False
    order = ("rule", "ts", "rounding")      # the tail's parts, each at most once, in this order
    last = -1
    for part in tail.split("/")[1:]:
        if part in rules:
            what = "rule"
        elif part == "ts":
            what = "ts"
        elif part in roundings:
            what = "rounding"
        else:
            raise ValueError(f"{part!r} is neither a scale rule ({', '.join(rules)}), 'ts' (a tensor "
                             f"scale) nor an element rounding ({', '.join(roundings)}); {_BLOCK_SPELLING}")
        if order.index(what) <= last:
            raise ValueError(f"{part!r} is out of place or repeated: {_BLOCK_SPELLING}")
        last = order.index(what)
        if what == "rule":
            rule = part
        elif what == "ts":
            ts = True
        else:
            rounding = part
    block = int(rows) if cols is None else (int(rows), int(cols))
    if (int(rows) < 1) or (cols is not None and int(cols) < 1):
        raise ValueError(f"the block size must be at least 1, got {rows if cols is None else f'{rows}x{cols}'}")
    parts = []
    for what, name in (("element", elem), ("scale", scale)):
        if what == "scale" and rule == "hif4" and name == "ue6m2":
            from floatlab.formats.hifloat4 import E6M2   # HiF4's E6M2 carries that display name
            parts.append(E6M2)
            continue
        try:
            f = get_format(name)
        except ValueError as err:
            raise ValueError(f"the {what} format: {err}") from None
        if getattr(f, "kind", "scalar") != "scalar":
            raise ValueError(f"the {what} format must be a scalar format, not the block format {name!r}")
        parts.append(f)
    try:
        return block_format(elem=parts[0], scale=parts[1], block=block, rule=rule, tensor_scale=ts,
                            element_rounding=rounding or "rne")
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None
