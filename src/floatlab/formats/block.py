"""Block-scaled formats: element format + scale format + block shape + scale rule.

One generic spec serves the OCP MX family, NVFP4 (two-level scaling, Four Over Six), HiFloat4
(three-level scaling) and any recipe a user defines with :func:`block_format`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from floatlab.formats.base import ScalarFormat
from floatlab.rounding import RoundingMode


class ScaleRule(str, enum.Enum):
    """How a block's scale is chosen from its values (FORMATS.md sections 2-4)."""

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
        name: display name.
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
        if self.scale_bits is None:
            object.__setattr__(self, "scale_bits", self.scale.bits)
        if not self.name:
            tile = "x".join(map(str, block))
            object.__setattr__(self, "name", f"{self.element.name}/{self.scale.name}/{tile}/{self.rule.value}")

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
