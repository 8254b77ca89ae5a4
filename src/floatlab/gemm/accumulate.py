"""Emulated matrix-engine accumulator: a blocked K-loop with explicit rounding.

A tensor core (or an Ascend cube unit) computes ``D = A_chunk @ B_chunk + C``
for a short inner dimension (the *chunk*) with exact or nearly exact
products, then rounds the result into the accumulator format -- on NVIDIA
tensor cores with round-toward-zero rather than round-to-nearest. This module
emulates that: the chunk's dot products are computed in float64 (exact for
FP16/BF16 inputs up to rounding at 2**-53, which is far below any format
emulated here), then the running sum is rounded into the accumulator format
with the chosen rounding mode.

Two accumulation styles are provided:

* *inside* (default): ``acc = round(acc + chunk_product)`` -- the running sum
  lives in the matrix engine, as with a plain FP16-input/FP32-accumulate GEMM.
* *outside*: ``acc = fp32_RN(acc + round(chunk_product))`` -- each chunk is
  computed from zero by the engine (rounded with its mode) and the sum over
  chunks is kept in FP32 registers with round-to-nearest, as proposed by
  Ootomo & Yokota to avoid the engine's round-toward-zero accumulation.

Rounding goes through ``floatlab.quantize`` (the core library), which rounds a
float64 value directly into the target format (no intermediate float32). The
only double rounding left is the float64 addition ``acc + chunk_product``
(53 bits); it can change a directed rounding only in the rare case where that
addition rounds exactly onto a grid point of the accumulator format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from floatlab.formats import BlockFormat, get_format
from floatlab.rounding import parse_rounding

ROUNDINGS = ("rne", "rna", "rnz", "rtz", "rup", "rdn", "rto", "sr", "sr_half")
DEFAULT_CHUNK = 16   # inner dimension of an FP16 tensor-core MMA (m16n8k16)


@dataclass(frozen=True)
class Accumulator:
    """Description of an emulated accumulator.

    Attributes:
        fmt: accumulator format name understood by ``floatlab.quantize``
            (``"fp32"``, ``"tf32"``, ``"bf16"``, ``"fp16"``, ...).
        rounding: rounding applied each time the running sum is written back
            (``"rne"`` like a CPU/SIMT FP32 add, ``"rtz"`` like a tensor core).
        chunk: number of K-terms summed exactly before each rounding.
        seed: seed for stochastic rounding modes (``"sr"``, ``"sr_half"``).
    """

    fmt: str = "fp32"
    rounding: str = "rne"
    chunk: int = DEFAULT_CHUNK
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, str) or not self.fmt:
            raise ValueError(f"accumulator format must be a non-empty string, got {self.fmt!r}")
        # checked here, not at the first rounding: an unknown name gets its did-you-mean now,
        # and a block format (which would round the running sum block by block) is refused
        if isinstance(get_format(self.fmt), BlockFormat):
            raise ValueError(f"accumulator format {self.fmt!r} is a block format: an accumulator rounds "
                             "each running sum on its own, so it takes a scalar format (fp32, tf32, "
                             "bf16, fp16, e4m3, ...)")
        try:   # the rounding names (and aliases) quantize takes, canonical from here on
            mode = parse_rounding(self.rounding).value
        except (ValueError, TypeError) as err:
            raise ValueError(f"accumulator rounding: {err}") from None
        if mode not in ROUNDINGS:
            raise ValueError(f"accumulator rounding {self.rounding!r} is not available for an accumulator; "
                             f"choose one of {', '.join(ROUNDINGS)}")
        object.__setattr__(self, "rounding", mode)
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {self.chunk!r}")

    @classmethod
    def parse(cls, spec: str | Accumulator | None) -> Accumulator | None:
        """Build an accumulator from ``"fmt[:rounding[:chunk]]"`` (e.g. ``"fp32:rtz:16"``).

        ``None`` (and the string ``"none"``) mean "no emulation": plain float32
        matmul, i.e. an FP32 round-to-nearest accumulator with the BLAS's order.
        """
        if spec is None or isinstance(spec, Accumulator):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"accumulator must be None, a str or an Accumulator, got {type(spec).__name__}")
        if spec.strip().lower() in ("", "none"):
            return None
        parts = [p.strip() for p in spec.split(":")]
        if len(parts) > 3:
            raise ValueError(f"accumulator spec {spec!r} must look like 'fmt[:rounding[:chunk]]'")
        fmt = parts[0]
        rounding = parts[1] if len(parts) > 1 and parts[1] else "rne"
        try:
            chunk = int(parts[2]) if len(parts) > 2 else DEFAULT_CHUNK
        except ValueError:
            raise ValueError(f"chunk in accumulator spec {spec!r} must be an integer") from None
        try:
            return cls(fmt=fmt, rounding=rounding, chunk=chunk)
        except ValueError as err:
            raise ValueError(f"accumulator spec {spec!r}: {err}") from None

    def __str__(self) -> str:
        return f"{self.fmt}:{self.rounding}:{self.chunk}"


def round_to(x: torch.Tensor, fmt: str, rounding: str = "rne", generator: torch.Generator | None = None) -> torch.Tensor:
    """Round float64 ``x`` into ``fmt`` with ``rounding`` via ``floatlab.quantize``; float64 result.

    FP32 round-to-nearest-even (the FP32 register sum of the *outside* mode) is
    torch's own float64 -> float32 conversion, used directly as a fast path.
    """
    if fmt == "fp32" and rounding == "rne":
        return x.float().double()
    from floatlab import quantize  # imported lazily: the core package imports nothing from here

    from floatlab.rounding import resolve_rounding
    from floatlab.formats.registry import get_format

    stochastic = resolve_rounding(get_format(fmt), rounding, None).is_stochastic
    return quantize(x, fmt, rounding=rounding, generator=generator if stochastic else None).double()


def accumulate(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    acc: Accumulator,
    *,
    outside: bool = False,
) -> torch.Tensor:
    """Emulate ``sum_i X_i @ Y_i`` on a matrix engine with accumulator ``acc``.

    All pairs share one accumulator; within each K-chunk the products of every
    pair are added in turn (like issuing one MMA per pair). Inputs are
    converted to float64 (exact); the result is returned as float32.

    Args:
        pairs: ``(X, Y)`` operand pairs with identical ``X @ Y`` shapes and the
            same inner dimension.
        acc: accumulator format, rounding and chunk size.
        outside: if True, each chunk product is rounded from zero with
            ``acc`` and then added to an FP32 round-to-nearest running sum
            (Ootomo & Yokota); if False the running sum itself is rounded with
            ``acc`` after every chunk (tensor-core style).
    """
    if not pairs:
        raise ValueError("accumulate needs at least one operand pair")
    ops = [(x.double(), y.double()) for x, y in pairs]
    k = ops[0][0].shape[1]
    if any(x.shape[1] != k or y.shape[0] != k for x, y in ops):
        raise ValueError("all operand pairs must share the inner dimension")
    gen = None
    if acc.rounding.startswith("sr"):
        gen = torch.Generator().manual_seed(0 if acc.seed is None else acc.seed)
    total = torch.zeros(ops[0][0].shape[0], ops[0][1].shape[1], dtype=torch.float64)
    for k0 in range(0, k, acc.chunk):
        k1 = min(k0 + acc.chunk, k)
        for x, y in ops:
            partial = x[:, k0:k1] @ y[k0:k1, :]
            if outside:
                total = round_to(total + round_to(partial, acc.fmt, acc.rounding, gen), "fp32", "rne")
            else:
                total = round_to(total + partial, acc.fmt, acc.rounding, gen)
    return total.float()


def blocked_matmul(a: torch.Tensor, b: torch.Tensor, acc: Accumulator, *, outside: bool = False) -> torch.Tensor:
    """Emulated ``a @ b`` with accumulator ``acc`` (see :func:`accumulate`)."""
    return accumulate([(a, b)], acc, outside=outside)
