"""Fine-grained mixed precision inside small weight clusters (FineQ, Xie et al. 2025).

A row of the weight is cut into *clusters* of ``cluster`` consecutive input columns. Each cluster
picks one of a few *layouts*: a tuple of per-position widths (bits per weight at each position of
the cluster; 0 stores nothing and decodes to 0). An ``index_bits`` field per cluster says which
layout it uses, and every layout's data are padded to the widest layout's data bits, so every
cluster occupies exactly ``index_bits + data_bits`` bits: fixed-size, aligned records that a
decoder reads without any prefix sum (FineQ's index+data encoding for aligned memory access).
Outliers keep the wide widths (3 bits in the FineQ preset), the other weights fewer.

The grid (one shared step for all widths, so the wide codes reach further, which is what an
outlier needs): per row (``group_size=None``) or per group of input columns, the stored scale
``s`` (``scale_dtype``, default fp16) is the group's absmax; the step is
``d = s / 2^(wmax - 1)`` (``wmax``: the widest width of any layout), and a ``b``-bit code ``k``
(``0 .. 2^b - 1``) means ``(k - 2^(b-1) + 0.5) * d``: a symmetric mid-rise grid of ``2^b``
levels with no zero (width 0 means exactly 0). A ``b``-bit code is
``clamp(floor(w / d) + 2^(b-1), 0, 2^b - 1)``: the nearest level; a value exactly on a boundary
between two levels goes to the upper one. So 3-bit codes cover ``[-s, s]`` (levels up to
``7/8 s``) and 2-bit codes ``[-s/2, s/2]`` (levels ``+-s/8, +-3s/8``).

Which layout (the **outlier rule**, stated): the one whose quantized cluster has the smallest
squared error; ties go to the lower layout index. A cluster holding a weight beyond the 2-bit reach
(an outlier) takes a layout that gives that position 3 bits; since the mid-rise grid has no zero,
a layout with a 0-width position also wins where one weight is nearer 0 than the smallest level.

**FineQ preset** (``"fineq"``, ``"fineq_g{G}"``): clusters of 3 weights, a 2-bit index choosing
among ``(2,2,2)`` (no outlier) and ``(3,3,0)``, ``(3,0,3)``, ``(0,3,3)`` (two 3-bit weights, the
third set to 0): ``2 + 6 = 8`` bits per cluster, **8/3 = 2.667 bits per weight** plus the scale
(16 bits per row, or per group). The paper's exact cluster encoding could not be verified here;
a 1-bit index with 6 data bits (``2.33`` bits per weight, one reading of the paper) is
``"cluster_222-330"`` (outliers then only at the first two positions of a cluster). Every
layout set is configuration: ``ClusterCodec(cluster, layouts, index_bits, group_size)``.

Stored (:meth:`pack`): one bit stream of cluster records (index, then each position's code at its
width, LSB first, zero padding up to ``data_bits``) and the scales; :meth:`bits` counts exactly
``rows * clusters * (index_bits + data_bits) + rows * groups * scale bits`` (a last cluster cut
short by ``in_features`` still occupies a whole record).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from floatlab.codecs.base import (CodecError, WeightCodec, as_storage, check_group, check_scale_dtype, grouped,
                                  group_count, positive_scale, scale_bits, ungrouped)
from floatlab.ops.autograd import check_grad
from floatlab.plain.packing import pack, unpack
from floatlab.tensor.qtensor import QTensor

#: the FineQ preset's layouts (see the module docstring)
FINEQ_LAYOUTS = ((2, 2, 2), (3, 3, 0), (3, 0, 3), (0, 3, 3))


@dataclass(frozen=True)
class ClusterCodec(WeightCodec):
    """Clusters of ``cluster`` input columns, each in one of ``layouts`` (see the module docstring).

    Args:
        cluster: weights per cluster (1..16).
        layouts: per-position widths (0..8 bits) of each layout, each of length ``cluster``.
        index_bits: bits of the layout index; ``None``: the fewest that count the layouts
            (``ceil(log2(len(layouts)))``).
        group_size: input columns per scale, a multiple of ``cluster``; ``None``: one per row.
        pad: a width not a multiple of ``cluster`` (or of ``group_size``) pads its last cluster
            with zeros; ``False`` refuses such a weight.
        scale_dtype: ``"fp16"`` (default), ``"bf16"`` or ``"fp32"``.
        preset: the name of a preset (``"fineq"``) for :attr:`name`; ``""`` spells the layouts.

    Raises:
        CodecError: a bad cluster, layout, index width or group.
    """

    cluster: int = 3
    layouts: tuple = FINEQ_LAYOUTS
    index_bits: int | None = None
    group_size: int | None = None
    pad: bool = True
    scale_dtype: str = "fp16"
    preset: str = ""

    def __post_init__(self) -> None:
        c = self.cluster
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 16:
            raise CodecError(f"cluster (weights per cluster) must be an int in 1..16, got {c!r}")
        try:
            lay = tuple(tuple(int(b) for b in l) for l in self.layouts)
        except (TypeError, ValueError):
            raise CodecError(f"layouts must be tuples of per-position widths, got {self.layouts!r}") from None
        if not lay:
            raise CodecError("layouts must list at least one layout")
        for l in lay:
            if len(l) != c or any(not 0 <= b <= 8 for b in l):
                raise CodecError(f"layout {l} must give each of the {c} positions of a cluster a width in 0..8 bits")
        if len(set(lay)) != len(lay):
            raise CodecError(f"layouts repeat: {lay}")
        if max(max(l) for l in lay) == 0:
            raise CodecError("every layout stores nothing (all widths 0)")
        object.__setattr__(self, "layouts", lay)
        need = max(0, math.ceil(math.log2(len(lay))))
        if self.index_bits is None:
            object.__setattr__(self, "index_bits", need)
        elif isinstance(self.index_bits, bool) or not isinstance(self.index_bits, int) or not need <= self.index_bits <= 16:
            raise CodecError(f"index_bits must be an int from {need} (to count {len(lay)} layouts) to 16, "
                             f"got {self.index_bits!r}")
        check_group(self.group_size)
        if self.group_size is not None and self.group_size % c:
            raise CodecError(f"group_size {self.group_size} must be a multiple of the cluster size {c} "
                             "(a cluster shares one scale)")
        check_scale_dtype(self.scale_dtype)

    # ---- description --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        g = f"_g{self.group_size}" if self.group_size else ""
        if self.preset:
            return f"{self.preset}{g}"
        return "cluster_" + "-".join("".join(map(str, l)) for l in self.layouts) + g

    @property
    def data_bits(self) -> int:
        """Data bits per cluster: the widest layout's sum of widths (the others are padded)."""
        return max(sum(l) for l in self.layouts)

    @property
    def record_bits(self) -> int:
        """Bits per cluster record: the index plus the data."""
        return self.index_bits + self.data_bits

    @property
    def wmax(self) -> int:
        return max(max(l) for l in self.layouts)

    @property
    def element_bits(self) -> int:
        return 1                                  # the records are one packed bit stream

    def _widths(self) -> torch.Tensor:
        return torch.tensor(self.layouts, dtype=torch.int64)          # (L, cluster)

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        cols = shape[1]
        if not self.pad and cols % self.cluster:
            raise CodecError(f"codec {self.name!r}: clusters of {self.cluster} do not divide in_features {cols} and "
                             f"padding is off; allow padding (the last cluster is filled with zeros)")
        group_count(cols, self.group_size, self.pad, self.name)

    def clusters(self, cols: int) -> int:
        return -(-cols // self.cluster)

    # ---- the grid -----------------------------------------------------------------------------
    def _steps(self, scale: torch.Tensor, cols: int) -> torch.Tensor:
        """Per-column step ``(out, cols)`` from the per-(row, group) scale."""
        d = scale / 2.0 ** (self.wmax - 1)
        if self.group_size is None:
            return d[:, :1].expand(-1, cols)
        return d.repeat_interleave(self.group_size, dim=1)[:, :cols]

    def _col_widths(self, layout: torch.Tensor, cols: int, offset: int = 0) -> torch.Tensor:
        """Width ``(out, cols)`` of each column under the per-cluster ``layout`` ``(out, clusters)``;
        ``offset``: the first column's index in the cluster grid."""
        j = torch.arange(offset, offset + cols)
        return self._widths()[layout[:, j // self.cluster], j % self.cluster]

    @staticmethod
    def _codes(w: torch.Tensor, d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        half = torch.where(b > 0, 2 ** (b - 1).clamp(min=0), torch.zeros_like(b))
        k = torch.floor(w / d).to(torch.int64) + half
        return torch.where(b > 0, torch.minimum(k.clamp(min=0), 2 * half - 1), torch.zeros_like(k))

    @staticmethod
    def _values(k: torch.Tensor, d: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        half = torch.where(b > 0, 2.0 ** (b - 1).clamp(min=0), torch.zeros_like(b, dtype=torch.float32))
        return torch.where(b > 0, (k.to(torch.float32) - half + 0.5) * d, torch.zeros_like(d))

    # ---- parameters ---------------------------------------------------------------------------
    def fit(self, w, stats=None, generator=None) -> dict:
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        rows, cols = w.shape
        s = positive_scale(grouped(w, self.group_size).abs().amax(-1), self.scale_dtype, "scale", self.name)
        d = self._steps(s, cols)
        n = self.clusters(cols)
        padc = n * self.cluster - cols
        wp = torch.nn.functional.pad(w, (0, padc))
        dp = torch.nn.functional.pad(d, (0, padc), value=1.0)
        errs = []
        for l in self.layouts:
            b = torch.tensor(l, dtype=torch.int64).repeat(n)[None, :].expand(rows, -1)
            v = self._values(self._codes(wp, dp, b), dp, b)
            errs.append(((v - wp) ** 2).reshape(rows, n, self.cluster).sum(-1))
        layout = torch.stack(errs, -1).argmin(-1)            # first minimum: the lower index wins ties
        return {"scale": s, "layout": layout}

    def codes_of(self, w, params) -> torch.Tensor:
        w = w.to(torch.float32)
        cols = w.shape[1]
        return self._codes(w, self._steps(params["scale"], cols), self._col_widths(params["layout"], cols))

    def values_of(self, codes, params) -> torch.Tensor:
        cols = codes.shape[1]
        return self._values(codes, self._steps(params["scale"], cols), self._col_widths(params["layout"], cols))

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        check_grad(grad)
        w = w.to(torch.float32)
        self.check_shape(w.shape)
        if params is None:
            params = self.fit(w)
        cols = w.shape[1]
        b = self._col_widths(params["layout"], cols)
        d = self._steps(params["scale"], cols)
        k = self._codes(w.detach(), d.detach(), b)
        v = self._values(k, d, b)                 # differentiable in the scale
        if grad == "none":
            return v.detach()
        if grad == "clipped":
            reach = 2.0 ** (b - 1).clamp(min=0).to(torch.float32) * d.detach()
            keep = (w.detach().abs() <= reach) & (b > 0)
            return v + (w - w.detach()) * keep
        return v + (w - w.detach())

    def frozen_grid(self, params: dict) -> "_ClusterGrid":
        return _ClusterGrid(self, params)

    # ---- storage ------------------------------------------------------------------------------
    def _record_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layout and position: the bit offset of its field inside the data part ``(L, cluster)``."""
        w = self._widths()
        return w, torch.cumsum(w, 1) - w

    def pack(self, codes, params) -> QTensor:
        rows, cols = codes.shape
        n = self.clusters(cols)
        layout = params["layout"].to(torch.int64)
        k = torch.nn.functional.pad(codes.to(torch.int64), (0, n * self.cluster - cols)).reshape(rows, n, self.cluster)
        widths, offsets = self._record_layout()
        bits = torch.zeros(rows, n, self.record_bits, dtype=torch.int64)
        for i in range(self.index_bits):
            bits[..., i] = (layout >> i) & 1
        for p in range(self.cluster):
            wp, op = widths[layout, p], offsets[layout, p]                # (rows, n)
            for t in range(self.wmax):
                on = t < wp
                val = (k[..., p] >> t) & 1
                pos = (self.index_bits + op + t).clamp(max=self.record_bits - 1)
                bits.scatter_add_(2, pos[..., None], (val * on)[..., None])
        scales = {"scale": as_storage(params["scale"], self.scale_dtype)}
        return QTensor(pack(bits, 1), self, (rows, cols), torch.float32, scales, {})

    def unpack(self, qt) -> tuple[torch.Tensor, dict]:
        rows, cols = qt.shape
        n = self.clusters(cols)
        bits = unpack(qt.data, 1, rows * n * self.record_bits).reshape(rows, n, self.record_bits)
        layout = (bits[..., : self.index_bits] * 2 ** torch.arange(self.index_bits)).sum(-1)
        if self.index_bits and int(layout.max()) >= len(self.layouts):
            raise CodecError(f"codec {self.name!r}: a stored layout index ({int(layout.max())}) names no layout; "
                             "the data are corrupt or were written by another codec")
        widths, offsets = self._record_layout()
        k = torch.zeros(rows, n, self.cluster, dtype=torch.int64)
        for p in range(self.cluster):
            wp, op = widths[layout, p], offsets[layout, p]
            for t in range(self.wmax):
                pos = (self.index_bits + op + t).clamp(max=self.record_bits - 1)
                val = bits.gather(2, pos[..., None])[..., 0]
                k[..., p] += torch.where(t < wp, val << t, torch.zeros_like(val))
        groups = group_count(cols, self.group_size, self.pad, self.name)
        scale = qt.scales["scale"].to(torch.float32).reshape(rows, groups)
        return k.reshape(rows, -1)[:, :cols], {"scale": scale, "layout": layout}

    def bits(self, shape) -> int:
        self.check_shape(shape)
        rows, cols = shape
        groups = group_count(cols, self.group_size, self.pad, self.name)
        return rows * self.clusters(cols) * self.record_bits + rows * groups * scale_bits(self.scale_dtype)

    def to_dict(self) -> dict:
        return {"codec": "cluster", "cluster": self.cluster, "layouts": [list(l) for l in self.layouts],
                "index_bits": self.index_bits, "group_size": self.group_size, "pad": self.pad,
                "scale_dtype": self.scale_dtype, "preset": self.preset}


class _ClusterGrid:
    """GPTQ's frozen grid for a cluster codec: column ``j`` (its index in the weight the
    parameters were fitted on) is rounded at its cluster's width with its group's step."""

    def __init__(self, codec: ClusterCodec, params: dict):
        self.codec, self.params = codec, params

    def round(self, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, p = self.codec, self.params
        b = c._widths()[p["layout"][:, j // c.cluster], j % c.cluster][:, None]
        g = 0 if c.group_size is None else j // c.group_size
        d = (p["scale"][:, g] / 2.0 ** (c.wmax - 1))[:, None]
        k = c._codes(col.to(torch.float32)[:, None], d, b)
        return k[:, 0], c._values(k, d, b)[:, 0]


def fineq(group_size: int | None = None, pad: bool = True, scale_dtype: str = "fp16") -> ClusterCodec:
    """The FineQ preset: clusters of 3, 2-bit index, layouts (2,2,2), (3,3,0), (3,0,3), (0,3,3)."""
    return ClusterCodec(3, FINEQ_LAYOUTS, None, group_size, pad, scale_dtype, "fineq")
