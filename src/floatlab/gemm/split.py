"""Operand splitting for precision-recovery GEMM.

Three families of splits are provided; all take a float32 tensor and return
low-precision pieces whose (scaled) sum reproduces the input:

* :func:`split_scaled` -- ``a ~= hi + lo * 2**-s`` with ``hi = fp16_RN(a)`` and
  ``lo = fp16_RN((a - hi) * 2**s)`` (SGEMM-cube / Ootomo & Yokota).
* :func:`split_bf16` -- ``a == b0 + b1 + b2`` with each piece the bf16 RNE
  rounding of the remaining residual (BF16x3 / BF16x6).
* :func:`ozaki_split` -- error-free row-/column-wise slicing into
  integer-valued FP16 slices with a power-of-two scale per row (column), such
  that products of slices are exact in an FP32 accumulator (Ozaki scheme).

The residual ``a - hi`` is computed in float32 and is exact whenever ``hi`` is
finite: ``hi`` is a round-to-nearest of ``a`` on a coarser grid, so the
difference is a multiple of the float32 ulp of ``a`` with at most 13
significant bits.
"""

from __future__ import annotations

import math

import torch

from floatlab.formats.base import pow2

FP16_MAX = 65504.0
"""Largest finite FP16 value; inputs beyond it make FP16 splits overflow."""

LOW_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
FP32_PRECISION = 24  # significand bits of float32, the accumulator format


def _require_fp32(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")


def _low_dtype(fmt: str) -> torch.dtype:
    try:
        return LOW_DTYPES[fmt]
    except KeyError:
        raise ValueError(f"unknown split format {fmt!r}; expected one of {sorted(LOW_DTYPES)}") from None


def split_scaled(a: torch.Tensor, s: int = 11, fmt: str = "fp16") -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``a`` into a high part and a residual scaled by ``2**s``.

    Returns ``(hi, lo)`` as tensors of the low-precision dtype with
    ``hi = RN(a)`` and ``lo = RN((a - hi) * 2**s)``, so that
    ``a ~= hi + lo * 2**-s`` with ``|a - (hi + lo * 2**-s)| <= u * |a - hi|``
    (``u = 2**-11`` for fp16) as long as ``lo`` is a normal number.

    Values whose ``hi`` overflows (``|a| >= 65520`` for fp16) give ``hi = inf``
    and a non-finite ``lo``: the split has no range beyond the format.
    """
    _require_fp32(a, "a")
    if not isinstance(s, int) or isinstance(s, bool):
        raise TypeError(f"s must be an int, got {type(s).__name__}")
    dtype = _low_dtype(fmt)
    hi = a.to(dtype)
    residual = a - hi.float()  # exact in float32 when hi is finite
    lo = (residual * (2.0**s)).to(dtype)  # scaling by 2**s is exact barring over/underflow
    return hi, lo


def merge_scaled(hi: torch.Tensor, lo: torch.Tensor, s: int) -> torch.Tensor:
    """Reconstruct ``hi + lo * 2**-s`` exactly, in float64."""
    return hi.double() + lo.double() * (2.0**-s)


def split_bf16(a: torch.Tensor, pieces: int = 3) -> list[torch.Tensor]:
    """Split ``a`` into ``pieces`` bfloat16 tensors ``b0, b1, ...``.

    ``b0 = bf16_RNE(a)`` and ``b_i = bf16_RNE(a - b0 - ... - b_{i-1})``. Each
    residual is exact in float32, and three pieces reproduce every normal
    float32 value exactly (8 + 8 + 8 significand bits, the rounding signs
    absorbing the missing bits), ignoring bf16 underflow of the last piece for
    inputs below about 2**-110.
    """
    _require_fp32(a, "a")
    if not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"pieces must be a positive int, got {pieces!r}")
    out: list[torch.Tensor] = []
    residual = a
    for _ in range(pieces):
        piece = residual.to(torch.bfloat16)
        out.append(piece)
        residual = residual - piece.float()  # exact (see module docstring)
    return out


def ozaki_rho(k: int, acc_bits: int = FP32_PRECISION, input_bits: int = 11) -> int:
    """Bits per Ozaki slice so that slice products are exact in the accumulator.

    A slice holds integers ``|t| <= 2**rho``; a dot product of length ``k``
    of two slices is bounded by ``k * 2**(2*rho)`` and is exact in an
    accumulator with ``acc_bits`` significand bits when that is
    ``<= 2**acc_bits``: ``rho = (acc_bits - ceil(log2 k)) // 2``, capped at
    ``input_bits`` so that slices are exact in FP16 (integers up to 2**11).
    """
    if k < 0:
        raise ValueError(f"inner dimension must be >= 0, got {k}")
    rho = (acc_bits - math.ceil(math.log2(max(k, 1)))) // 2
    rho = min(rho, input_bits)
    if rho < 1:
        raise ValueError(f"inner dimension {k} too long for an exact {acc_bits}-bit accumulator")
    return rho


def ozaki_default_slices(k: int, target_bits: int = FP32_PRECISION + 2) -> int:
    """Default number of slices: enough to cover ``target_bits`` below each row maximum."""
    return math.ceil(target_bits / ozaki_rho(k))


def ozaki_split(x: torch.Tensor, slices: int, rho: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Error-free slicing of ``x`` with one power-of-two scale per row or column.

    ``dim`` is the dimension reduced to find the scale: ``dim=1`` gives one
    exponent per row (use for A), ``dim=0`` one per column (use for B).

    Returns ``(T, e)`` where ``T`` has shape ``(slices, *x.shape)`` and dtype
    float16 holding integers with ``|T[0]| <= 2**rho`` and
    ``|T[p]| <= 2**(rho-1)`` for ``p >= 1``, and ``e`` (int64, broadcastable
    against ``x``) satisfies ``max|x| < 2**e`` along ``dim``, such that::

        x == sum_p T[p] * 2**(e - rho*(p+1)) + r,   |r| <= 2**(e - rho*slices - 1)

    Elements far below their row (column) maximum keep fewer significant
    bits, so the slices needed for a given accuracy grow with the dynamic
    range of each row (column).
    """
    _require_fp32(x, "x")
    if not isinstance(slices, int) or slices < 1:
        raise ValueError(f"slices must be a positive int, got {slices!r}")
    if not 1 <= rho <= 11:
        raise ValueError(f"rho must be in [1, 11] for FP16 slices, got {rho}")
    if not torch.isfinite(x).all():
        raise ValueError("ozaki_split needs finite inputs")
    x64 = x.double()
    amax = x64.abs().amax(dim=dim, keepdim=True) if x.numel() else torch.zeros_like(x64.sum(dim, keepdim=True))
    _, e = torch.frexp(amax)  # amax = m * 2**e with m in [0.5, 1), so amax < 2**e
    e = torch.where(amax > 0, e, torch.zeros_like(e)).to(torch.int64)
    r = x64 * pow2(-e)  # |r| < 1, exact (power-of-two scaling in float64)
    out = []
    for p in range(1, slices + 1):
        t = torch.round(r * 2.0 ** (rho * p))
        out.append(t.to(torch.float16))  # integers <= 2**11: exact in fp16
        r = r - t * 2.0 ** (-rho * p)  # exact: removes leading bits of r
    return torch.stack(out), e


def ozaki_merge(t: torch.Tensor, e: torch.Tensor, rho: int) -> torch.Tensor:
    """Reconstruct ``sum_p T[p] * 2**(e - rho*(p+1))`` in float64 (exact)."""
    total = torch.zeros(t.shape[1:], dtype=torch.float64)
    for p in range(t.shape[0]):
        total = total + t[p].double() * pow2(e - rho * (p + 1))
    return total
