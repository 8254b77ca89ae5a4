"""Asymmetric integer grids with a zero point (GPTQ/AWQ/OmniQuant's ``w = (q - z) * s``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import floatlab
from floatlab.codecs.base import (CodecError, WeightCodec, as_storage, check_group, check_scale_dtype, grouped,
                                  group_count, positive_scale, scale_bits, ungrouped)
from floatlab.formats.integer import IntFormat
from floatlab.ops.autograd import check_grad
from floatlab.plain.packing import pack, unpack
from floatlab.tensor.qtensor import QTensor

_INT16 = IntFormat(16)


@dataclass(frozen=True)
class AffineInt(WeightCodec):
    """``nbits``-bit unsigned codes ``q`` with a zero point ``z``: ``w = (q - z) * s``.

    Per row (``group_size=None``) or per group of ``group_size`` input columns, the range
    ``[min(w_min, 0), max(w_max, 0)]`` (it always holds 0, so ``z`` fits in ``nbits`` bits) is
    mapped onto ``[0, 2^nbits - 1]``: ``s = (max - min) / (2^nbits - 1)`` rounded to
    ``scale_dtype``, ``z = round(-min / s)``, ``q = clamp(round(w / s) + z, 0, 2^nbits - 1)``,
    all rounding ties-to-even through :func:`floatlab.quantize` (GPTQ's and OmniQuant's
    convention). Stored: ``nbits`` per code, and per row/group one ``scale_dtype`` scale plus an
    ``nbits`` zero point: ``nbits + (16 + nbits) / group_size`` bits per weight with fp16 scales.

    Args:
        nbits: 2..8.
        group_size: input columns per group, ``None`` for one group per row.
        pad: a group that does not divide ``in_features`` leaves a shorter last group (``False``
            refuses such a weight).
        scale_dtype: ``"fp16"`` (default), ``"bf16"`` or ``"fp32"``.
    """

    nbits: int
    group_size: int | None = None
    pad: bool = True
    scale_dtype: str = "fp16"

    def __post_init__(self) -> None:
        if isinstance(self.nbits, bool) or not isinstance(self.nbits, int) or not 2 <= self.nbits <= 8:
            raise CodecError(f"asymmetric integer codecs take 2..8 bits, got {self.nbits!r}")
        check_group(self.group_size)
        check_scale_dtype(self.scale_dtype)

    @property
    def name(self) -> str:
        g = f"_g{self.group_size}" if self.group_size else ""
        return f"int{self.nbits}_asym{g}"

    @property
    def element_bits(self) -> int:
        return self.nbits

    @property
    def qmax(self) -> int:
        return 2 ** self.nbits - 1

    @property
    def uint(self) -> IntFormat:
        return IntFormat(self.nbits, signed=False)

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        group_count(shape[1], self.group_size, self.pad, self.name)

    # ---- parameters ---------------------------------------------------------------------------
    def fit(self, w, stats=None, generator=None) -> dict:
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        wg = grouped(w, self.group_size)            # zero padding leaves min(.,0)/max(.,0) unchanged
        return self.from_range(wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0))

    def from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> dict:
        """``{"scale", "zero"}`` ``(out, groups)`` for the range ``[lo, hi]`` (``lo <= 0 <= hi``):
        the scale at storage precision, the zero point an integer in ``[0, 2^nbits - 1]``.
        OmniQuant's learnable clipping calls this with its clipped range (detached)."""
        s = positive_scale((hi - lo) / self.qmax, self.scale_dtype, "scale", self.name)
        z = floatlab.quantize(-lo / s, self.uint, saturate=True, grad="none")
        return {"scale": s, "zero": z}

    # ---- the grid -----------------------------------------------------------------------------
    def grid(self, w: torch.Tensor, params: dict, grad: str = "ste") -> torch.Tensor:
        """Float codes ``(out, groups, g)``: ``clamp(round(w / s) + z, 0, qmax)``, the rounding
        through :func:`floatlab.quantize` (ties to even). ``grad``: "ste" passes the gradient
        through the rounding and the clamp; "clipped" passes none where the clamp acts
        (OmniQuant's ``clamp(round_ste(.))``, torch.clamp's gradient); "none" detaches."""
        check_grad(grad)
        s, z = params["scale"][..., None], params["zero"][..., None]
        r = floatlab.quantize(grouped(w, self.group_size) / s, _INT16, saturate=True,
                              grad="none" if grad == "none" else "ste")
        x = r + z                                   # an exact integer (|r| <= 2^15)
        q = x.clamp(0, self.qmax)
        return x + (q - x).detach() if grad == "ste" else q

    def _values(self, q: torch.Tensor, params: dict, cols: int) -> torch.Tensor:
        return ungrouped((q - params["zero"][..., None]) * params["scale"][..., None], cols)

    def codes_of(self, w, params) -> torch.Tensor:
        return ungrouped(self.grid(w.to(torch.float32), params, "none"), w.shape[1]).to(torch.int64)

    def values_of(self, codes, params) -> torch.Tensor:
        return self._values(grouped(codes.to(torch.float32), self.group_size), params, codes.shape[1])

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        w = w.to(torch.float32)
        self.check_shape(w.shape)
        if params is None:
            params = self.fit(w)
        return self._values(self.grid(w, params, grad), params, w.shape[1])

    # ---- storage ------------------------------------------------------------------------------
    def pack(self, codes, params) -> QTensor:
        rows, cols = codes.shape
        scales = {"scale": as_storage(params["scale"], self.scale_dtype),
                  "zero": pack(params["zero"].to(torch.int64), self.nbits)}
        return QTensor(pack(codes, self.nbits), self, (rows, cols), torch.float32, scales, {})

    def unpack(self, qt) -> tuple[torch.Tensor, dict]:
        rows, cols = qt.shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        codes = unpack(qt.data, self.nbits, rows * cols).reshape(rows, cols)
        scale = qt.scales["scale"].to(torch.float32).reshape(rows, groups)
        zero = unpack(qt.scales["zero"], self.nbits, rows * groups).reshape(rows, groups).to(torch.float32)
        return codes, {"scale": scale, "zero": zero}

    def bits(self, shape) -> int:
        self.check_shape(shape)
        rows, cols = shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        return rows * cols * self.nbits + rows * groups * (scale_bits(self.scale_dtype) + self.nbits)

    def to_dict(self) -> dict:
        return {"codec": "affine", "nbits": self.nbits, "group_size": self.group_size, "pad": self.pad,
                "scale_dtype": self.scale_dtype}
