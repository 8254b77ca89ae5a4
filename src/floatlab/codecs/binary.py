"""1-bit and ternary weights: sign times a scale (optionally around a mean), and {-a, 0, +a}."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from floatlab.codecs.base import (CodecError, WeightCodec, as_storage, check_group, check_scale_dtype, group_count,
                                  grouped, scale_bits, stored, ungrouped, valid_mask)
from floatlab.ops.autograd import check_grad, straight_through
from floatlab.plain.packing import pack, unpack
from floatlab.tensor.qtensor import QTensor


def _group_means(wg: torch.Tensor, cols: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-(row, group) count of real elements and the validity mask of the padded layout."""
    vm = valid_mask(cols, group_size)
    if vm is None:
        return torch.full(wg.shape[:2], float(wg.shape[-1])), None
    return vm.sum(-1).to(torch.float32).expand(wg.shape[0], -1), vm


def _mean(t: torch.Tensor, n: torch.Tensor, vm: torch.Tensor | None) -> torch.Tensor:
    return (t if vm is None else t * vm).sum(-1) / n


def _signs(d: torch.Tensor, limit: torch.Tensor, grad: str) -> torch.Tensor:
    """+1 where ``d >= 0``, -1 elsewhere, straight-through; ``"clipped"`` passes the gradient
    only where ``|d| <= limit`` (the span the binary grid reaches)."""
    check_grad(grad)

    def sign(t):
        return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)

    def clip(t):
        return sign(t), t.abs() <= limit
    return straight_through(d, sign, grad, clip)


@dataclass(frozen=True)
class Binary(WeightCodec):
    """One bit per weight: ``w = c_j * (s * b + m)`` with ``b = sign(w - m)`` in {-1, +1}.

    Per row (``group_size=None``) or per group of input columns: ``m`` is the mean of the group
    (``mean=True``, "binarization around the row mean" as in PTQ1.61 and BiLLM; else 0) and ``s``
    the mean of ``|w - m|``, the scale that minimizes the squared error for these signs
    (XNOR-Net's alpha). ``col_factor=True`` adds a stored per-input-column factor ``c_j``
    (initially 1): PTQ1.61 learns it (with a per-row factor folded into ``s`` and ``m``), its
    "angular bias" correction. Ties (``w == m``) take +1.

    Stored: 1 bit per weight, per row/group one ``scale_dtype`` scale (and mean), and with
    ``col_factor`` one ``scale_dtype`` factor per input column.
    """

    mean: bool = False
    col_factor: bool = False
    group_size: int | None = None
    pad: bool = True
    scale_dtype: str = "fp16"

    def __post_init__(self) -> None:
        check_group(self.group_size)
        check_scale_dtype(self.scale_dtype)

    @property
    def name(self) -> str:
        return ("binary" + ("_mean" if self.mean else "") + ("_cf" if self.col_factor else "")
                + (f"_g{self.group_size}" if self.group_size else ""))

    @property
    def element_bits(self) -> int:
        return 1

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        group_count(shape[1], self.group_size, self.pad, self.name)

    def fit(self, w, stats=None, generator=None) -> dict:
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        wg = grouped(w, self.group_size)
        n, vm = _group_means(wg, w.shape[1], self.group_size)
        p = {}
        m = torch.zeros(wg.shape[:2])
        if self.mean:
            m = p["mean"] = stored(_mean(wg, n, vm), self.scale_dtype, "mean", self.name)
        p["scale"] = stored(_mean((wg - m[..., None]).abs(), n, vm), self.scale_dtype, "scale", self.name)
        if self.col_factor:
            p["col"] = torch.ones(w.shape[1])
        return p

    def _center(self, params: dict) -> torch.Tensor | float:
        """The signs are taken around ``params["center"]`` if given (PTQ1.61 keeps the signs of
        the original mean while it learns the stored mean), else around the stored mean."""
        if "center" in params:
            return params["center"][..., None]
        return params["mean"][..., None] if self.mean else 0.0

    def _values(self, b: torch.Tensor, params: dict, cols: int) -> torch.Tensor:
        v = b * params["scale"][..., None]
        if self.mean:
            v = v + params["mean"][..., None]
        v = ungrouped(v, cols)
        return v * params["col"] if self.col_factor else v

    def _signs(self, w: torch.Tensor, params: dict, grad: str) -> torch.Tensor:
        return _signs(grouped(w, self.group_size) - self._center(params), params["scale"][..., None].abs(), grad)

    def codes_of(self, w, params) -> torch.Tensor:
        b = self._signs(w.to(torch.float32), params, "none")
        return (ungrouped(b, w.shape[1]) > 0).to(torch.int64)

    def values_of(self, codes, params) -> torch.Tensor:
        b = grouped(codes.to(torch.float32) * 2 - 1, self.group_size)
        return self._values(b, params, codes.shape[1])

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        w = w.to(torch.float32)
        self.check_shape(w.shape)
        if params is None:
            params = self.fit(w)
        return self._values(self._signs(w, params, grad), params, w.shape[1])

    def column_params(self, params, j) -> dict:
        return {**params, "col": params["col"][j:j + 1]} if self.col_factor else params

    def pack(self, codes, params) -> QTensor:
        scales = {"scale": as_storage(params["scale"], self.scale_dtype)}
        if self.mean:
            scales["mean"] = as_storage(params["mean"], self.scale_dtype)
        if self.col_factor:
            scales["col"] = as_storage(params["col"], self.scale_dtype)
        return QTensor(pack(codes, 1), self, tuple(codes.shape), torch.float32, scales, {})

    def unpack(self, qt) -> tuple[torch.Tensor, dict]:
        rows, cols = qt.shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        codes = unpack(qt.data, 1, rows * cols).reshape(rows, cols)
        p = {"scale": qt.scales["scale"].to(torch.float32).reshape(rows, groups)}
        if self.mean:
            p["mean"] = qt.scales["mean"].to(torch.float32).reshape(rows, groups)
        if self.col_factor:
            p["col"] = qt.scales["col"].to(torch.float32).reshape(cols)
        return codes, p

    def bits(self, shape) -> int:
        self.check_shape(shape)
        rows, cols = shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        sb = scale_bits(self.scale_dtype)
        return rows * cols + rows * groups * sb * (2 if self.mean else 1) + (cols * sb if self.col_factor else 0)

    def to_dict(self) -> dict:
        return {"codec": "binary", "mean": self.mean, "col_factor": self.col_factor, "group_size": self.group_size,
                "pad": self.pad, "scale_dtype": self.scale_dtype}


@dataclass(frozen=True)
class Ternary(WeightCodec):
    """Ternary weights ``w = a * t``, ``t`` in {-1, 0, +1}, per row or group (TWN, Li, Zhang and
    Liu 2016, arXiv 1605.04711): the threshold is ``delta = threshold * mean|w|`` (TWN's 0.7
    approximation of the optimal threshold for Gaussian-like weights), ``t = sign(w)`` where
    ``|w| > delta`` and 0 elsewhere, and ``a`` is the mean of ``|w|`` over ``|w| > delta`` (0 when
    no weight exceeds it).

    Stored: 2 bits per weight (two's complement -1/0/+1; a base-3 packing would take 1.6) and
    one ``scale_dtype`` scale per row/group. The threshold is a fitting choice and is not stored.
    """

    group_size: int | None = None
    pad: bool = True
    scale_dtype: str = "fp16"
    threshold: float = 0.7

    def __post_init__(self) -> None:
        check_group(self.group_size)
        check_scale_dtype(self.scale_dtype)
        if not 0 < float(self.threshold) < 2:
            raise CodecError(f"the ternary threshold factor must be in (0, 2), got {self.threshold!r}")

    @property
    def name(self) -> str:
        t = "" if self.threshold == 0.7 else f"_t{self.threshold:g}"
        return "ternary" + t + (f"_g{self.group_size}" if self.group_size else "")

    @property
    def element_bits(self) -> int:
        return 2

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        group_count(shape[1], self.group_size, self.pad, self.name)

    def fit(self, w, stats=None, generator=None) -> dict:
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        wg = grouped(w, self.group_size)
        n, vm = _group_means(wg, w.shape[1], self.group_size)
        a = wg.abs()
        delta = self.threshold * _mean(a, n, vm)
        above = (a > delta[..., None]) & (True if vm is None else vm)
        cnt = above.sum(-1)
        scale = torch.where(cnt > 0, (a * above).sum(-1) / cnt.clamp(min=1), torch.zeros_like(delta))
        return {"scale": stored(scale, self.scale_dtype, "scale", self.name), "threshold": delta}

    def _trits(self, w: torch.Tensor, params: dict, grad: str) -> torch.Tensor:
        check_grad(grad)
        delta = params["threshold"][..., None]

        def trit(t):
            return torch.where(t > delta, 1.0, torch.where(t < -delta, -1.0, 0.0)).to(t.dtype)

        def clip(t):
            return trit(t), t.abs() <= params["scale"][..., None].abs()
        return straight_through(grouped(w, self.group_size), trit, grad, clip)

    def codes_of(self, w, params) -> torch.Tensor:
        t = ungrouped(self._trits(w.to(torch.float32), params, "none"), w.shape[1]).to(torch.int64)
        return t & 3

    def values_of(self, codes, params) -> torch.Tensor:
        if bool((codes == 2).any()):
            raise CodecError("ternary codes hold the unused code 2: the data is corrupt")
        t = torch.where(codes == 3, -1, codes).to(torch.float32)
        return ungrouped(grouped(t, self.group_size) * params["scale"][..., None], codes.shape[1])

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        w = w.to(torch.float32)
        self.check_shape(w.shape)
        if params is None:
            params = self.fit(w)
        return ungrouped(self._trits(w, params, grad) * params["scale"][..., None], w.shape[1])

    def merge_groups(self, parts):
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in ("scale", "threshold")}

    def pack(self, codes, params) -> QTensor:
        return QTensor(pack(codes, 2), self, tuple(codes.shape), torch.float32,
                       {"scale": as_storage(params["scale"], self.scale_dtype)}, {})

    def unpack(self, qt) -> tuple[torch.Tensor, dict]:
        rows, cols = qt.shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        codes = unpack(qt.data, 2, rows * cols).reshape(rows, cols)
        return codes, {"scale": qt.scales["scale"].to(torch.float32).reshape(rows, groups)}

    def bits(self, shape) -> int:
        self.check_shape(shape)
        rows, cols = shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        return rows * cols * 2 + rows * groups * scale_bits(self.scale_dtype)

    def to_dict(self) -> dict:
        return {"codec": "ternary", "group_size": self.group_size, "pad": self.pad, "scale_dtype": self.scale_dtype,
                "threshold": self.threshold}
