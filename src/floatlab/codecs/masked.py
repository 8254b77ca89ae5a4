"""A structured salient-channel mask: a few input channels in a wider codec, the rest in a
low-bit one (PTQ1.61's 1-D mask, Zhao et al., ACL 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from floatlab.codecs.affine import AffineInt
from floatlab.codecs.base import CodecError, WeightCodec
from floatlab.codecs.binary import Binary, Ternary
from floatlab.plain.packing import pack, unpack
from floatlab.tensor.qtensor import QTensor

#: how the salient input channels are chosen
SELECT_RULES = ("act_max", "weight", "random")
_SUFFIX = {"act_max": "", "weight": "wmag", "random": "rand"}


@dataclass(frozen=True)
class Masked(WeightCodec):
    """Input columns (channels) chosen as salient are stored in ``wide``, the others in ``low``.

    Args:
        low: the codec of the ordinary columns (e.g. :class:`Binary` around the row mean).
        wide: the codec of the salient columns; default 4-bit asymmetric per row
            (:class:`AffineInt` ``(4)``), PTQ1.61's choice.
        fraction: the share of input columns that are salient, in (0, 1); ``k = round(fraction *
            in_features)`` columns, at least 1 and at most ``in_features - 1``.
        select: ``"act_max"`` (default, PTQ1.61): the ``k`` channels with the largest calibration
            activation max ``max|x_j|`` (``stats["act_max"]``; ties go to the lower index);
            ``"weight"``: the largest mean ``|W[:, j]|``; ``"random"``: a random set drawn from
            the ``generator`` passed to :meth:`fit`.

    Each part is fitted on its own columns (the wide codec's scale sees the salient columns
    only; PTQ1.61's code takes the 4-bit range from the whole row). Stored: one mask bit per
    input column (a bitmap shared by all rows), plus everything each part stores.
    """

    low: WeightCodec
    wide: WeightCodec = field(default_factory=lambda: AffineInt(4))
    fraction: float = 0.2
    select: str = "act_max"

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise CodecError(f"the salient fraction must be in (0, 1) (e.g. 0.2 for 20% of the input channels), "
                             f"got {f!r}")
        if self.select not in SELECT_RULES:
            raise CodecError(f"select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")
        for what, c in (("low", self.low), ("wide", self.wide)):
            if not isinstance(c, (AffineInt, Binary, Ternary)):
                raise CodecError(f"the {what} part of a salient-channel mask must be an int*_asym, binary* or ternary* "
                                 f"codec, got {getattr(c, 'name', c)!r}")

    @property
    def element_bits(self) -> int:
        return max(self.low.element_bits, self.wide.element_bits)

    @property
    def needs_stats(self) -> bool:
        return self.select == "act_max"

    @property
    def name(self) -> str:
        pct = f"{self.fraction * 100:.6g}"
        wide = "" if self.wide == AffineInt(4) else f"_{self.wide.name}"
        return f"{self.low.name}_salient{pct}{_SUFFIX[self.select]}{wide}"

    def salient_count(self, cols: int) -> int:
        return min(cols - 1, max(1, round(self.fraction * cols)))

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        rows, cols = shape
        if cols < 2:
            raise CodecError(f"codec {self.name!r} needs at least 2 input columns, got {cols}")
        k = self.salient_count(cols)
        self.low.check_shape((rows, cols - k))
        self.wide.check_shape((rows, k))

    # ---- the mask -----------------------------------------------------------------------------
    def salience(self, w: torch.Tensor, stats: dict | None, generator: torch.Generator | None) -> torch.Tensor:
        cols = w.shape[1]
        if self.select == "weight":
            return w.detach().abs().mean(0)
        if self.select == "random":
            return torch.rand(cols, generator=generator)
        act = (stats or {}).get("act_max")
        if act is None:
            raise CodecError(f"codec {self.name!r} picks salient input channels by their calibration activation max: "
                             "it needs calibration statistics (run a calibrating method with calibration data, or "
                             "use a mask by weight magnitude ('...wmag') or a random one ('...rand'))")
        act = act.detach().to(torch.float32).reshape(-1)
        if act.numel() != cols:
            raise CodecError(f"codec {self.name!r}: act_max has {act.numel()} channels, the weight {cols} input columns")
        if not bool(torch.isfinite(act).all()):
            raise CodecError(f"codec {self.name!r}: act_max has non-finite values (NaN/Inf calibration activations)")
        return act

    def choose(self, w: torch.Tensor, stats: dict | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The boolean mask ``(in,)`` of the salient columns."""
        cols = w.shape[1]
        order = torch.argsort(self.salience(w, stats, generator), descending=True, stable=True)
        mask = torch.zeros(cols, dtype=torch.bool)
        mask[order[: self.salient_count(cols)]] = True
        return mask

    # ---- parameters and grid ------------------------------------------------------------------
    def fit(self, w, stats=None, generator=None) -> dict:
        w = w.detach().to(torch.float32)
        self.check_shape(w.shape)
        mask = self.choose(w, stats, generator)
        return self.fit_parts(w, mask)

    def fit_parts(self, w: torch.Tensor, mask: torch.Tensor) -> dict:
        """The parameters for a given ``mask``: each part fitted on its own columns."""
        return {"mask": mask, "low": self.low.fit(w[:, ~mask]), "wide": self.wide.fit(w[:, mask])}

    @staticmethod
    def _order(mask: torch.Tensor) -> torch.Tensor:
        """Column permutation that puts the low columns first, then the salient ones; its
        inverse puts the parts back."""
        perm = torch.cat([torch.nonzero(~mask).reshape(-1), torch.nonzero(mask).reshape(-1)])
        return torch.argsort(perm)

    def _join(self, lo: torch.Tensor, hi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([lo, hi], dim=1)[:, self._order(mask)]

    def _parts(self, fn: str, x: torch.Tensor, params: dict, dtype, **kw) -> torch.Tensor:
        """``fn`` of each part on its columns (a part without columns, as in one GPTQ column,
        gives an empty result), joined back into ``x``'s column order."""
        m = params["mask"]
        out = []
        for codec, cols, p in ((self.low, ~m, params["low"]), (self.wide, m, params["wide"])):
            sub = x[:, cols]
            out.append(getattr(codec, fn)(sub, p, **kw) if sub.shape[1] else torch.zeros(x.shape[0], 0, dtype=dtype))
        return self._join(out[0], out[1], m)

    def codes_of(self, w, params) -> torch.Tensor:
        return self._parts("codes_of", w, params, torch.int64)

    def values_of(self, codes, params) -> torch.Tensor:
        return self._parts("values_of", codes, params, torch.float32)

    def quantize(self, w, params=None, *, stats=None, grad="ste") -> torch.Tensor:
        w = w.to(torch.float32)
        if params is None:
            params = self.fit(w, stats)
        return self._parts("quantize", w, params, torch.float32, grad=grad)

    def column_params(self, params, j) -> dict:
        m = params["mask"]
        if bool(m[j]):
            part, sub = "wide", int(m[:j].sum())
        else:
            part, sub = "low", int((~m[:j]).sum())
        codec = self.wide if part == "wide" else self.low
        if codec.group_size is not None:
            raise CodecError(f"codec {self.name!r}: GPTQ rounds a salient-channel mask column by column only with "
                             "per-row parts (no groups)")
        empty = {"mask": torch.tensor([part == "wide"]), "low": params["low"], "wide": params["wide"]}
        empty[part] = codec.column_params(params[part], sub)
        return empty

    def merge_groups(self, parts):
        raise CodecError(f"codec {self.name!r} has no column groups")

    # ---- storage ------------------------------------------------------------------------------
    def pack(self, codes, params) -> QTensor:
        m = params["mask"]
        lo = self.low.pack(codes[:, ~m], params["low"])
        hi = self.wide.pack(codes[:, m], params["wide"])
        scales = {"mask": pack(m.to(torch.int64), 1)}
        scales.update({f"low.{k}": v for k, v in lo.scales.items()})
        scales.update({f"wide.{k}": v for k, v in hi.scales.items()})
        meta = {"low_nbytes": int(lo.data.numel()), "low": lo.meta, "wide": hi.meta}
        return QTensor(torch.cat([lo.data, hi.data]), self, tuple(codes.shape), torch.float32, scales, meta)

    def unpack(self, qt) -> tuple[torch.Tensor, dict]:
        rows, cols = qt.shape
        m = unpack(qt.scales["mask"], 1, cols).to(torch.bool)
        k = int(m.sum())
        if k != self.salient_count(cols):
            raise CodecError(f"codec {self.name!r}: the stored mask marks {k} salient columns, expected "
                             f"{self.salient_count(cols)} of {cols}: the data is corrupt")
        n = int(qt.meta["low_nbytes"])
        part = {p: {key[len(p) + 1:]: v for key, v in qt.scales.items() if key.startswith(p + ".")} for p in ("low", "wide")}
        lo = QTensor(qt.data[:n], self.low, (rows, cols - k), torch.float32, part["low"], qt.meta.get("low", {}))
        hi = QTensor(qt.data[n:], self.wide, (rows, k), torch.float32, part["wide"], qt.meta.get("wide", {}))
        (clo, plo), (chi, phi) = self.low.unpack(lo), self.wide.unpack(hi)
        codes = self._join(clo, chi, m)
        return codes, {"mask": m, "low": plo, "wide": phi}

    def bits(self, shape) -> int:
        self.check_shape(shape)
        rows, cols = shape
        k = self.salient_count(cols)
        return cols + self.low.bits((rows, cols - k)) + self.wide.bits((rows, k))

    def to_dict(self) -> dict:
        return {"codec": "masked", "low": self.low.to_dict(), "wide": self.wide.to_dict(), "fraction": self.fraction,
                "select": self.select}
