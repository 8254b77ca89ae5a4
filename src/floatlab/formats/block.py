"""Block-scaled formats: element format + scale format + block shape + scale rule.

One generic spec serves the OCP MX family, NVFP4 (two-level scaling, Four Over Six), HiFloat4
(three-level scaling) and any recipe a user defines with :func:`block_format`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from floatlab.formats.base import Choice, ScalarFormat
from floatlab.formats.hifloat4 import E6M2
from floatlab.rounding import RoundingMode


class ScaleRule(Choice):
    """How a block's scale is chosen from its values (FORMATS.md sections 2-4).

    The power-of-two rules are computed exactly from the block's amax (float64 holds every
    input exactly), then clamped to E8M0's range [2^-127, 2^127]. Two consequences, with the
    exact values (``tests/test_block_extremes.py`` computes them):

    * **RCEIL against NVIDIA's float32 pipeline.** NVIDIA computes ``amax / elem_max`` in
      float32 and rounds it up to a power of two (PTX ``cvt.rp.satfinite.ue8m0x2.f32``;
      TransformerEngine's ``amax * (1 / elem_max)`` gives the same scales here). For float32
      amax the two differ at exactly one value per element type, ``elem_max * 2^-127`` plus one
      float32 ulp, where the float32 quotient is subnormal and rounds down to 2^-127: floatlab's
      scale is 2^-126 (E8M0 code 1), NVIDIA's 2^-127 (code 0). E2M1: amax 3.52648333e-38;
      E3M2: 1.6456922e-37; E2M3: 4.4081041e-38; E4M3: 2.63310753e-36; E5M2: 3.37037763e-34.
      MXINT8's element (max 127/64): none (its quotient rounds up there).
    * **Inf for a finite input with CEIL, EVEN and RCEIL.** An amax near the largest value of
      the input dtype (2^k (1 - 2^-24) for float32, k = 128; bfloat16 likewise; float16 k = 16)
      gets the scale 2^(k - emax) (emax = floor(log2 elem_max)); its largest values round up to
      the element's 2^emax, i.e. to 2^k, which the dtype cannot hold: the result is +-Inf from
      ``amax >= 2^k (1 - 2^-(p + 2))``, p the element's mantissa bits. float32 and bfloat16:
      E2M1 2.97747071e38 (scale 2^126), E3M2 3.19014719e38 (2^124), E2M3 3.29648543e38
      (2^126), E4M3 3.29648543e38 (2^120), E5M2 3.19014719e38 (2^113); float16: 57344, 61440,
      63488, 63488, 61440. MXINT8 elements: never in float32/bfloat16 (the scale 2^128 clamps to
      2^127), in float16 from 65024 (CEIL), 65056 (RCEIL) or 65280 (EVEN). ``encode`` stores the finite
      codes and ``decode(q, dtype=torch.float64)`` returns 2^k exactly. FLOOR never overflows
      (it clips the block max instead).
    """

    FLOOR = "floor"    # OCP MX: X = 2^(floor(log2 amax) - emax_elem); may clip the block max
    CEIL = "ceil"      # 2^(ceil(log2 amax) - emax_elem)
    EVEN = "even"      # amax first rounded (RNE) to the element's mantissa width, then FLOOR
    RCEIL = "rceil"    # NVIDIA: amax / elem_max rounded up to a power of two (never clips)
    AMAX = "amax"      # NVFP4: amax / elem_max (x tensor scale) rounded to the scale format, RNE
    FOUR_OVER_SIX = "four_over_six"  # NVFP4 "4/6": AMAX with max->6 or max->4, lower error wins
    HIF4 = "hif4"      # HiFloat4: E6M2 level-1 scale and 1-bit level-2/3 micro-exponents

    def __str__(self) -> str:
        return self.value


POWER_OF_TWO_RULES = (ScaleRule.FLOOR, ScaleRule.CEIL, ScaleRule.EVEN, ScaleRule.RCEIL)


def _same_numbers(a, b) -> bool:
    """Are two scalar formats the same apart from their display names?"""
    from dataclasses import is_dataclass, replace
    if not (is_dataclass(a) and is_dataclass(b)) or type(a) is not type(b):
        return False
    return replace(a, name="") == replace(b, name="")


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format.

    Args:
        element: the element format (a scalar format).
        scale: the format of each block's scale (E8M0 for MX, E4M3 for NVFP4, E6M2 for HiF4).
        block: elements per block along the block axis, or a ``(rows, cols)`` 2D tile.
        rule: the :class:`ScaleRule`.
        tensor_scale: add NVFP4's second-level FP32 per-tensor scale (``amax / (emax * smax)``).
        element_rounding: the default rounding of elements (``rne``; HiF4's reference uses ``rna``).
        scale_bits: storage bits of the scale metadata per block (default: the scale format's).
        name: display name; by default the spelling :func:`~floatlab.get_format` reads back,
            ``<element>/<scale>/<block>[x<cols>]/<rule>[/ts][/<element rounding>]``
            (``e2m1/ue5m3/32/amax``; the rounding only when it is not ``rne``). A format
            that only a non-default ``scale_bits`` tells apart needs a name of its own.

    Raises:
        ValueError: a block that is not a positive int or a 2D tile, the HiF4 rule on a block
            other than 64 values, ``tensor_scale`` with a rule that has no second scaling level
            (only ``amax`` and ``four_over_six`` have one), hybrid element rounding.
    """

    element: ScalarFormat
    scale: ScalarFormat
    block: tuple[int, ...]
    rule: ScaleRule = ScaleRule.FLOOR
    tensor_scale: bool = False
    element_rounding: RoundingMode = RoundingMode.RNE
    scale_bits: int | None = None
    name: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        block = (self.block,) if isinstance(self.block, int) else tuple(self.block)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "rule", ScaleRule(self.rule))
        object.__setattr__(self, "element_rounding", RoundingMode(self.element_rounding))
        if not 1 <= len(block) <= 2 or any((not isinstance(b, int)) or b < 1 for b in block):
            raise ValueError(f"block must be a positive int or a (rows, cols) tile, got {self.block!r}")
        if self.rule is ScaleRule.HIF4 and self.block_numel != 64:
            raise ValueError("the HiF4 rule works on blocks of 64 elements")
        if self.rule is ScaleRule.HIF4 and not _same_numbers(self.scale, E6M2):
            # the HiF4 pipeline always rounds its level-1 scale to E6M2: another scale format
            # would be ignored by the numerics and miscounted by everything reading fmt.scale
            raise ValueError(f"the HiF4 rule's level-1 scale is E6M2 (bias 48, no zero, no subnormals; "
                             f"spelled ue6m2 in a hif4 block name), not {self.scale.name!r}")
        if self.tensor_scale and self.rule not in (ScaleRule.AMAX, ScaleRule.FOUR_OVER_SIX):
            # the power-of-two and HiF4 pipelines have no second level: it would be ignored
            raise ValueError(f"tensor_scale (NVFP4's FP32 per-tensor scale) works with the scale rules "
                             f"amax and four_over_six, not {self.rule.value!r}: the {self.rule.value} "
                             "rule has no second scaling level, so the tensor scale would be ignored")
        if self.element_rounding is RoundingMode.HYBRID:
            raise ValueError("hybrid rounding is HiFloat8's; block formats take rne, rna, rnz, rtz, rup, "
                             "rdn, rto, sr or sr_half as element rounding")
        if self.scale_bits is None:
            # HiF4 stores 4 bytes per block: the E6M2 byte, 8 level-2 and 16 level-3 bits
            object.__setattr__(self, "scale_bits", 32 if self.rule is ScaleRule.HIF4 else self.scale.bits)
        if not self.name:
            # the spelling get_format parses back:
            # <element>/<scale>/<block>[x<cols>]/<rule>[/ts][/<element rounding, if not rne>]
            tile = "x".join(map(str, block))
            ts = "/ts" if self.tensor_scale else ""
            rnd = "" if self.element_rounding is RoundingMode.RNE else f"/{self.element_rounding.value}"
            object.__setattr__(self, "name",
                               f"{self.element.name}/{self.scale.name}/{tile}/{self.rule.value}{ts}{rnd}")

    @property
    def kind(self) -> str:
        return "block"

    @property
    def block_numel(self) -> int:
        return math.prod(self.block)

    @property
    def bits(self) -> int:
        return self.element.bits

    @property
    def element_bits(self) -> int:
        return self.element.bits

    @property
    def bits_per_value(self) -> float:
        """Element bits plus the block's scale bits amortized over the block (4.25 for MXFP4)."""
        return self.element.bits + self.scale_bits / self.block_numel

    @property
    def default_rounding(self) -> RoundingMode:
        return self.element_rounding

    def valid_rounding(self, mode: RoundingMode) -> bool:
        return mode is not RoundingMode.HYBRID

    def __str__(self) -> str:
        return self.name


def block_format(elem="e2m1", scale="e8m0", block=32, rule=None, *, tensor_scale=False,
                 element_rounding="rne", name="") -> BlockFormat:
    """Define a block format from names, e.g. ``block_format(elem="e2m1", scale="ue5m3", block=32)``.

    ``rule`` defaults to OCP's FLOOR for power-of-two scales (no mantissa bits, like E8M0) and
    to AMAX (scale = amax / elem_max rounded to the scale format) otherwise.
    """
    from floatlab.formats.registry import get_format

    if (rule is not None and ScaleRule(rule) is ScaleRule.HIF4 and isinstance(scale, str)
            and scale.strip().lower() == E6M2.name):
        scale = E6M2        # "ue6m2" spelled alone is the IEEE-biased format; HiF4's has bias 48
    e, s = get_format(elem), get_format(scale)
    for what, f in (("element", e), ("scale", s)):
        if not isinstance(f, ScalarFormat):
            raise TypeError(f"the {what} format must be a scalar format, got {f.name!r}")
    if rule is None:
        rule = ScaleRule.FLOOR if getattr(s, "mbits", 1) == 0 else ScaleRule.AMAX
    rule = ScaleRule(rule)
    if rule in POWER_OF_TWO_RULES and getattr(s, "mbits", 1) != 0:
        raise ValueError(f"scale rule {rule.value!r} makes power-of-two scales; scale format "
                         f"{s.name!r} has mantissa bits (use rule='amax')")
    return BlockFormat(e, s, block, rule, tensor_scale, RoundingMode(element_rounding), name=name)
