"""A first-principles cost model of a multiply-accumulate (MAC) and of the bits a format moves.

**Relative numbers only.** The absolute picojoules and square micrometres of a real chip depend
on the process, the voltage, the library and the layout; this model keeps only how the cost of
each part grows with its bit widths, with coefficients fitted to one published table, and
reports every cost relative to an int8 MAC (int8 x int8 product, int32-class accumulation).

Anchors: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
Table/figure of 45 nm, 0.9 V energies and areas (:data:`HOROWITZ_45NM`): integer add 8/16/32 bit
0.03/0.05/0.1 pJ (36/67/137 um^2), fp16/fp32 add 0.4/0.9 pJ (1360/4184 um^2), int8/int32
multiply 0.2/3.1 pJ (282/3495 um^2), fp16/fp32 multiply 1.1/3.7 pJ (1640/7700 um^2).

The parts (each an energy and an area, with its own fitted coefficients):

* **integer adder** of ``w`` bits: ``c_add * w`` (ripple/carry-select: linear in width), one
  coefficient fitted by least squares to the three integer adds;
* **integer multiplier** ``n x m``: ``c_mul * n * m`` (an array of n*m partial-product cells),
  fitted exactly to int8 (int32 is then a check: 3.2 pJ predicted vs 3.1 published);
* **float multiplier** with significands of ``p`` bits (implicit one included) and ``e``
  exponent bits: ``a * p^2`` (significand array) + an ``e``-bit integer adder (exponents)
  + ``r * p * log2 p`` (normalize and round); ``a`` and ``r`` solved exactly from fp16 and fp32;
* **float adder** (the accumulator): integer adders over ``p + 3`` significand bits and ``e``
  exponent bits + ``s * p * log2 p`` (alignment and normalization shifters) + a constant
  ``k``; ``s, k`` solved from fp16/fp32 add, with ``k`` dropped (0) when the solve makes it
  negative (then ``s`` by least squares).

A MAC of a format with itself (both operands in the format):

* scalar integer ``intN``: an ``N x N`` multiplier and an integer accumulator of ``2N + log2 K``
  bits (exact sums of ``K`` products; ``K`` = ``reduction``, default 4096);
* scalar float (fp32 ... e2m1, hif8): the float multiplier and an fp32 accumulator add (the
  usual tensor-core choice). HiF8 (tapered) is costed as its widest case: 4 significand bits
  (3 mantissa) and 6 exponent bits (its exponents reach +-15 and need the dot field decoded);
* block format (MX, NVFP4, HiF4): per element, the element multiplier and an exact fixed-point
  add of ``2 * span + log2(block)`` bits (``span`` = bits of ``max / smallest positive`` plus a
  sign: the block's products are summed exactly as integers, as MX dot-product units do); per
  block (amortized over the block): combining the two block scales (an exponent add for
  power-of-two scales, a float multiply for E4M3/E6M2 scales), applying it to the block sum
  (a shift for power-of-two scales, else an integer multiply of the sum by the scale
  significand product), one fp32 accumulator add (a 2D tile counts its extent along the
  reduction, ``block[-1]``). HiF4's level-2/3 micro-exponents add a
  shift of the partial sum per 8 and per 4 elements. NVFP4's per-tensor FP32 scale is applied
  once per output (not counted);
* ``binary`` (+-1 weights and activations): XNOR and a popcount tree, about one adder bit
  each per element (XNOR-Net's datapath); ``ternary``: sign/zero gating and an integer
  accumulator of ``log2 K + 2`` bits.

Bits moved per value: the element bits plus the block's scale bits amortized over the block
(``BlockFormat.bits_per_value``: mxfp4 4.25, nvfp4 and hif4 4.5, mxfp8 8.25); scalar formats
move their element bits (a per-tensor scale is negligible); ``binary`` 1, ``ternary`` 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Horowitz, ISSCC 2014, 45 nm: operation -> (energy pJ, area um^2)
HOROWITZ_45NM = {
    "int8_add": (0.03, 36.0), "int16_add": (0.05, 67.0), "int32_add": (0.1, 137.0),
    "fp16_add": (0.4, 1360.0), "fp32_add": (0.9, 4184.0),
    "int8_mul": (0.2, 282.0), "int32_mul": (3.1, 3495.0),
    "fp16_mul": (1.1, 1640.0), "fp32_mul": (3.7, 7700.0),
}
#: significand bits (implicit one included) and exponent bits of the anchors' floats
_FP16, _FP32 = (11, 5), (24, 8)
#: default reduction length (products summed per output) for accumulator widths
REDUCTION = 4096


def _plogp(p: int) -> float:
    return p * math.log2(p) if p > 1 else 0.0


@dataclass(frozen=True)
class Coefficients:
    """Fitted coefficients of one quantity (energy in pJ or area in um^2) at 45 nm."""

    add: float          # per integer adder bit
    mul: float          # per integer multiplier cell (n*m)
    fmul_sig: float     # float multiplier: per p^2
    fmul_norm: float    # float multiplier: per p log2 p
    fadd_shift: float   # float adder: per p log2 p
    fadd_const: float   # float adder: constant

    def int_add(self, w: float) -> float:
        return self.add * w

    def int_mul(self, n: float, m: float) -> float:
        return self.mul * n * m

    def fp_mul(self, p: int, e: int) -> float:
        return self.fmul_sig * p * p + self.int_add(e) + self.fmul_norm * _plogp(p)

    def fp_add(self, p: int, e: int) -> float:
        return self.int_add(p + 3 + e) + self.fadd_shift * _plogp(p) + self.fadd_const


def _solve2(a11, a12, b1, a21, a22, b2) -> tuple[float, float]:
    det = a11 * a22 - a12 * a21
    return (b1 * a22 - a12 * b2) / det, (a11 * b2 - b1 * a21) / det


def fit(which: int) -> Coefficients:
    """The coefficients fitted to :data:`HOROWITZ_45NM` (``which`` 0: energy, 1: area)."""
    h = {k: v[which] for k, v in HOROWITZ_45NM.items()}
    adds = [(8, h["int8_add"]), (16, h["int16_add"]), (32, h["int32_add"])]
    c_add = sum(w * v for w, v in adds) / sum(w * w for w, _ in adds)
    c_mul = h["int8_mul"] / 64.0
    # float multiply: a p^2 + r p log2 p = anchor - exponent adder
    (p1, e1), (p2, e2) = _FP16, _FP32
    a, r = _solve2(p1 * p1, _plogp(p1), h["fp16_mul"] - c_add * e1,
                   p2 * p2, _plogp(p2), h["fp32_mul"] - c_add * e2)
    # float add: s p log2 p + k = anchor - integer adders
    y1 = h["fp16_add"] - c_add * (p1 + 3 + e1)
    y2 = h["fp32_add"] - c_add * (p2 + 3 + e2)
    s, k = _solve2(_plogp(p1), 1.0, y1, _plogp(p2), 1.0, y2)
    if k < 0:                                   # no negative constant: least squares in s alone
        s = (_plogp(p1) * y1 + _plogp(p2) * y2) / (_plogp(p1) ** 2 + _plogp(p2) ** 2)
        k = 0.0
    if min(c_add, c_mul, a, r, s) <= 0:         # pragma: no cover - the published table gives positive ones
        raise ValueError("the cost model's fit gave a non-positive coefficient")
    return Coefficients(c_add, c_mul, a, r, s, k)


ENERGY, AREA = fit(0), fit(1)


@dataclass(frozen=True)
class MacCost:
    """The cost of one MAC of a format with itself, split into parts (pJ or um^2 at 45 nm,
    before normalization). ``multiply``: the element product; ``accumulate``: the per-element
    add; ``per_block``: the block-scale work amortized per element."""

    multiply: float
    accumulate: float
    per_block: float = 0.0

    @property
    def total(self) -> float:
        return self.multiply + self.accumulate + self.per_block


@dataclass(frozen=True)
class FormatCost:
    """Cost-model row of one format. ``energy``/``area``: of a MAC relative to an int8 MAC;
    ``bits_moved``: bits per value (element plus amortized scales); ``energy_parts`` and
    ``area_parts``: the unnormalized :class:`MacCost` (45 nm pJ / um^2, model values)."""

    format: str
    bits_moved: float
    energy: float
    area: float
    energy_parts: MacCost
    area_parts: MacCost
    datapath: str


def _span(fmt) -> int:
    """Bits of a fixed-point integer holding every value of ``fmt`` exactly (magnitude + sign)."""
    ratio = fmt.max_value / fmt.smallest_positive
    return math.ceil(math.log2(ratio + 1)) + (1 if fmt.signed else 0)


def _sig_exp(fmt) -> tuple[int, int]:
    """(significand bits incl. the implicit one, exponent bits) of a scalar format."""
    if getattr(fmt, "kind", "scalar") != "scalar":
        raise TypeError(f"{fmt} is not a scalar format")
    if hasattr(fmt, "mbits"):
        return fmt.mbits + 1, fmt.ebits
    if type(fmt).__name__ == "HiF8Format":
        return 4, 6
    return 0, 0                                 # an integer: see _mac


def _is_int(fmt) -> bool:
    return not hasattr(fmt, "mbits") and type(fmt).__name__ == "IntFormat"


def _scalar_mac(fmt, c: Coefficients, reduction: int) -> tuple[MacCost, str]:
    if _is_int(fmt):
        n = fmt.bits
        acc = 2 * n + math.ceil(math.log2(reduction))
        return MacCost(c.int_mul(n, n), c.int_add(acc)), f"{n}x{n} int mult, int{acc} accumulate"
    p, e = _sig_exp(fmt)
    return (MacCost(c.fp_mul(p, e), c.fp_add(*_FP32)),
            f"float mult (p={p}, e={e}), fp32 accumulate")


def _block_mac(fmt, c: Coefficients, reduction: int) -> tuple[MacCost, str]:
    el, sc = fmt.element, fmt.scale
    b = fmt.block[-1]          # a 2D tile's scale changes every block[-1] products along the reduction
    span = _span(el)
    acc = 2 * span + math.ceil(math.log2(b))
    if _is_int(el):
        mul = c.int_mul(el.bits, el.bits)
        mdesc = f"{el.bits}x{el.bits} int mult"
    else:
        p, e = _sig_exp(el)
        mul = c.fp_mul(p, e)
        mdesc = f"float mult (p={p}, e={e})"
    ps, es = _sig_exp(sc)
    if ps <= 1:                                 # power-of-two scales: exponent add, then a shift
        combine, apply = c.int_add(es + 1), c.int_add(acc)
        sdesc = f"scale exponents added ({es} bits), sum shifted"
    else:
        combine, apply = c.fp_mul(ps, es), c.int_mul(acc, 2 * ps)
        sdesc = f"scales multiplied (p={ps}, e={es}), sum x {2 * ps}-bit significand"
    per_block = (combine + apply + c.fp_add(*_FP32)) / b
    extra = ""
    if fmt.rule.value == "hif4":                # level-2 (per 8) and level-3 (per 4) micro-exponent shifts
        per_block += c.int_add(acc) / 8 + c.int_add(acc) / 4
        extra = ", micro-exponent shifts per 8 and 4"
    return (MacCost(mul, c.int_add(acc), per_block),
            f"{mdesc}, exact {acc}-bit block sum; per {b}: {sdesc}, fp32 accumulate{extra}")


def _binary_mac(name: str, c: Coefficients, reduction: int) -> tuple[MacCost, str]:
    logk = math.ceil(math.log2(reduction))
    scale = (c.fp_mul(*_FP32)) / reduction                  # one per-row scale multiply per output
    if name == "binary":
        return MacCost(c.int_add(1), c.int_add(1), scale), "XNOR + popcount tree (about 1 adder bit each)"
    return MacCost(c.int_add(2), c.int_add(logk + 2), scale), f"sign/zero gating, int{logk + 2} accumulate"


PSEUDO = ("binary", "ternary")


def _resolve(fmt):
    if isinstance(fmt, str) and fmt.strip().lower() in PSEUDO:
        return fmt.strip().lower()
    from floatlab.formats.registry import get_format
    try:
        return get_format(fmt)
    except ValueError as err:
        raise ValueError(f"{err} The cost model also knows: {', '.join(PSEUDO)}.") from None


def _raw(fmt, c: Coefficients, reduction: int) -> tuple[MacCost, str]:
    if isinstance(fmt, str):
        return _binary_mac(fmt, c, reduction)
    if getattr(fmt, "kind", "scalar") == "block":
        return _block_mac(fmt, c, reduction)
    return _scalar_mac(fmt, c, reduction)


def bits_moved(fmt) -> float:
    """Bits per value a format moves: element bits plus amortized scale bits (4.25 for MXFP4,
    4.5 for NVFP4 and HiF4, 8.25 for MXFP8); ``binary`` 1, ``ternary`` 2. Raises
    ``ValueError`` for an unknown name (listing close ones)."""
    f = _resolve(fmt)
    if isinstance(f, str):
        return 1.0 if f == "binary" else 2.0
    return float(getattr(f, "bits_per_value", f.bits))


def mac_cost(fmt, *, reduction: int = REDUCTION) -> FormatCost:
    """The cost-model row of ``fmt`` (a format name or object, or ``"binary"``/``"ternary"``):
    MAC energy and area relative to an int8 MAC, and bits moved per value.

    Args:
        fmt: format name (see :func:`floatlab.list_formats`), format object, ``"binary"``, ``"ternary"``.
        reduction: products summed per output (sets integer accumulator widths; default 4096).

    Raises:
        ValueError: unknown format name, or ``reduction < 2``.

    >>> from floatlab.hw import mac_cost
    >>> mac_cost("int8").energy
    1.0
    >>> mac_cost("mxfp4").bits_moved, mac_cost("nvfp4").bits_moved
    (4.25, 4.5)
    """
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 2:
        raise ValueError(f"reduction (products per output) must be an int >= 2, got {reduction!r}")
    f = _resolve(fmt)
    (e, desc), (a, _) = _raw(f, ENERGY, reduction), _raw(f, AREA, reduction)
    ref = _resolve("int8")
    e8, a8 = _raw(ref, ENERGY, reduction)[0], _raw(ref, AREA, reduction)[0]
    name = f if isinstance(f, str) else getattr(f, "name", str(f))
    return FormatCost(name, bits_moved(f), e.total / e8.total, a.total / a8.total, e, a, desc)


def cost_table(names=None, *, reduction: int = REDUCTION) -> list[FormatCost]:
    """:func:`mac_cost` of every built-in format (scalar, block) and ``binary``/``ternary``,
    or of ``names``."""
    if names is None:
        from floatlab.formats.registry import list_formats
        names = [*list_formats("scalar"), *list_formats("block"), *PSEUDO]
    return [mac_cost(n, reduction=reduction) for n in names]
