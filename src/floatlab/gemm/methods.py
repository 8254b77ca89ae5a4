"""Precision-recovery GEMM methods and the :func:`matmul` entry point.

Every method takes float32 ``A`` (M x K) and ``B`` (K x N) and returns a
float32 ``C``. Low-precision GEMMs are emulated: their operands are FP16/BF16
values (upcast exactly to float32, products of two such values are exact in
float32) and the sum is done either by torch's float32 matmul (``accumulator``
None: FP32 round-to-nearest accumulation in the BLAS's order) or by the
emulated blocked accumulator of :mod:`floatlab.gemm.accumulate`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from floatlab.formats.base import pow2

from .accumulate import Accumulator, accumulate
from .split import (
    ozaki_default_slices,
    ozaki_rho,
    ozaki_split,
    split_bf16,
    split_scaled,
)

DEFAULT_S = 11
"""Default residual scale of ``sgemm_cube`` (and the fixed one of ``ootomo``).

With ``|a - hi| <= 2**(e-11)`` for ``|a|`` in ``[2**e, 2**(e+1))`` (half an fp16
ulp), scaling by ``2**11`` maps the residual into the binade of ``a`` itself:
``lo`` can only overflow where ``hi`` already has, and ``lo`` stays a normal
fp16 number (keeping all 11 bits, i.e. 22 bits in total) for ``|a|`` down to
about ``2**-13``, which is essentially the fp16 normal range of ``hi``. A larger
``s`` gains range for tiny inputs but overflows ``lo`` for inputs near 65504.
"""


@dataclass(frozen=True)
class MethodInfo:
    """Static description of a GEMM method.

    Attributes:
        description: one-line summary.
        cost: number of GEMMs issued on the input format (``ozaki``: for its
            default 4 slices, i.e. inner dimensions up to 1024; see
            :func:`method_cost`).
        input_format: format of the operands fed to the (emulated) engine.
        target: accuracy class the method aims for (``"fp32"``, ``"fp16"`` or
            ``"bf16"``); used by the analysis to decide when it breaks.
    """

    description: str
    cost: int
    input_format: str
    target: str


METHODS: dict[str, MethodInfo] = {
    "fp32": MethodInfo("reference float32 GEMM (FP32 inputs and accumulation)", 1, "fp32", "fp32"),
    "fp16": MethodInfo("inputs rounded to FP16 (RNE), FP32 accumulation", 1, "fp16", "fp16"),
    "bf16": MethodInfo("inputs rounded to BF16 (RNE), FP32 accumulation", 1, "bf16", "bf16"),
    "sgemm_cube": MethodInfo(
        "FP16 hi + FP16 residual*2^s, hi*hi + (hi*lo + lo*hi)*2^-s, each term accumulated separately",
        3, "fp16", "fp32"),
    "ootomo": MethodInfo(
        "FP16 hi + FP16 residual*2^11, chunk products summed outside the engine in FP32 RN",
        3, "fp16", "fp32"),
    "bf16x3": MethodInfo("3-way BF16 split, products b0b0 + b0b1 + b1b0", 3, "bf16", "fp32"),
    "bf16x6": MethodInfo("3-way BF16 split, products b0b0 + b0b1 + b1b0 + b0b2 + b2b0 + b1b1", 6, "bf16", "fp32"),
    "ozaki": MethodInfo(
        "Ozaki scheme: k error-free FP16 integer slices per row/column, k(k+1)/2 exact slice products",
        10, "fp16", "fp32"),
}


def _closest(name: str) -> str:
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown method {name!r}{hint} (valid: {', '.join(METHODS)})"


def check_method(method: str) -> str:
    """Return ``method`` if it is known, else raise ``ValueError`` naming the closest ones."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(_closest(method))
    return method


def method_cost(method: str, *, k: int | None = None, slices: int | None = None) -> int:
    """Number of low-precision GEMMs ``method`` issues (``ozaki``: ``k(k+1)/2`` for k slices)."""
    check_method(method)
    if method != "ozaki":
        return METHODS[method].cost
    if slices is None:
        slices = ozaki_default_slices(k if k is not None else 1024)
    return slices * (slices + 1) // 2


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> None:
    for name, x in (("A", a), ("B", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {x.dtype} (convert with .float())")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions do not match: A is {tuple(a.shape)}, B is {tuple(b.shape)}")


def _gemm(x: torch.Tensor, y: torch.Tensor, acc: Accumulator | None, *, outside: bool = False) -> torch.Tensor:
    """One low-precision GEMM with FP32 accumulation (exact products, float32 result)."""
    if acc is None:
        return x.float() @ y.float()
    return accumulate([(x, y)], acc, outside=outside)


def _fp32(a, b, acc, **_):
    return _gemm(a, b, acc)


def _fp16(a, b, acc, **_):
    return _gemm(a.half(), b.half(), acc)


def _bf16(a, b, acc, **_):
    return _gemm(a.bfloat16(), b.bfloat16(), acc)


def _sgemm_cube(a, b, acc, *, s: int, **_):
    """Term-wise: three separately accumulated products, combined at the end."""
    hi_a, lo_a = split_scaled(a, s)
    hi_b, lo_b = split_scaled(b, s)
    p_hh = _gemm(hi_a, hi_b, acc)
    p_hl = _gemm(hi_a, lo_b, acc)
    p_lh = _gemm(lo_a, hi_b, acc)
    return p_hh + (p_hl + p_lh) * (2.0**-s)


def _ootomo(a, b, acc, **_):
    """Split with s = 11; every chunk product is summed outside the engine in FP32 RN."""
    s = DEFAULT_S
    hi_a, lo_a = split_scaled(a, s)
    hi_b, lo_b = split_scaled(b, s)
    if acc is None:
        p_hh = hi_a.float() @ hi_b.float()
        corr = lo_a.float() @ hi_b.float() + hi_a.float() @ lo_b.float()
    else:
        p_hh = accumulate([(hi_a, hi_b)], acc, outside=True)
        corr = accumulate([(lo_a, hi_b), (hi_a, lo_b)], acc, outside=True)
    return p_hh + corr * (2.0**-s)


def _bf16x3(a, b, acc, **_):
    a0, a1 = split_bf16(a, 2)
    b0, b1 = split_bf16(b, 2)
    small = _gemm(a0, b1, acc) + _gemm(a1, b0, acc)
    return small + _gemm(a0, b0, acc)


def _bf16x6(a, b, acc, **_):
    a0, a1, a2 = split_bf16(a, 3)
    b0, b1, b2 = split_bf16(b, 3)
    smallest = _gemm(a1, b1, acc) + _gemm(a0, b2, acc) + _gemm(a2, b0, acc)
    small = _gemm(a0, b1, acc) + _gemm(a1, b0, acc)
    return (smallest + small) + _gemm(a0, b0, acc)


def _ozaki(a, b, acc, *, slices: int | None, **_):
    """Exact slice products (p + q <= k + 1), scaled back and summed in FP32, smallest first."""
    k = a.shape[1]
    rho = ozaki_rho(k)
    if slices is None:
        slices = ozaki_default_slices(k)
    t_a, e_a = ozaki_split(a, slices, rho, dim=1)  # e_a: (M, 1)
    t_b, e_b = ozaki_split(b, slices, rho, dim=0)  # e_b: (1, N)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32)
    for level in range(slices + 1, 1, -1):  # level = p + q (1-based), smallest terms first
        for p in range(1, level):
            q = level - p
            if q > slices or p > slices:
                continue
            exact = _gemm(t_a[p - 1], t_b[q - 1], acc)  # integer sums < 2**24: exact in FP32
            scale = pow2(e_a + e_b - rho * level)
            out = out + (exact.double() * scale).float()
    return out


_IMPL: dict[str, Callable[..., torch.Tensor]] = {
    "fp32": _fp32,
    "fp16": _fp16,
    "bf16": _bf16,
    "sgemm_cube": _sgemm_cube,
    "ootomo": _ootomo,
    "bf16x3": _bf16x3,
    "bf16x6": _bf16x6,
    "ozaki": _ozaki,
}


def matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    method: str = "fp32",
    *,
    s: int | None = None,
    slices: int | None = None,
    accumulator: str | Accumulator | None = None,
) -> torch.Tensor:
    """Emulate ``A @ B`` with a (precision-recovery) low-precision GEMM method.

    Args:
        A: float32 matrix of shape (M, K).
        B: float32 matrix of shape (K, N).
        method: one of :data:`METHODS`.
        s: residual scale exponent for ``sgemm_cube`` (default :data:`DEFAULT_S`).
        slices: number of slices per operand for ``ozaki`` (default: enough
            for 26 bits below each row/column maximum, see
            :func:`~floatlab.gemm.split.ozaki_default_slices`).
        accumulator: ``None`` for plain FP32 round-to-nearest accumulation, or
            an :class:`Accumulator` / spec string ``"fmt[:rounding[:chunk]]"``
            (e.g. ``"fp32:rtz:16"`` for a tensor-core-like accumulator).

    Returns:
        float32 tensor of shape (M, N).
    """
    _check_operands(A, B)
    check_method(method)
    if s is not None:
        if method != "sgemm_cube":
            raise ValueError(f"s applies only to method 'sgemm_cube' (ootomo fixes s = {DEFAULT_S}), not {method!r}")
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 40:
            raise ValueError(f"s must be an int in [0, 40], got {s!r}")
    if slices is not None:
        if method != "ozaki":
            raise ValueError(f"slices applies only to method 'ozaki', not {method!r}")
        if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1:
            raise ValueError(f"slices must be a positive int, got {slices!r}")
    acc = Accumulator.parse(accumulator)
    return _IMPL[method](A, B, acc, s=DEFAULT_S if s is None else s, slices=slices)
