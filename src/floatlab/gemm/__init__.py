"""Precision-recovery GEMM: emulate FP32 matrix products with FP16/BF16 engines.

Public API:

* :func:`matmul` -- ``matmul(A, B, method=..., s=..., slices=..., accumulator=...)``
* :data:`METHODS` -- method name -> :class:`MethodInfo` (description, cost, ...)
* :class:`Accumulator`, :func:`accumulate`, :func:`blocked_matmul` -- emulated
  matrix-engine accumulation (FP32 or lower, any rounding mode, blocked K-loop)
* :mod:`floatlab.gemm.split` -- operand splits (scaled FP16, BF16 pieces, Ozaki)
* :mod:`floatlab.gemm.analysis` -- error analysis over sizes and distributions

See ``docs/gemm.md``.
"""

from .accumulate import Accumulator, accumulate, blocked_matmul
from .methods import DEFAULT_S, METHODS, MethodInfo, check_method, matmul, method_cost
from .split import merge_scaled, ozaki_merge, ozaki_split, split_bf16, split_scaled

__all__ = [
    "DEFAULT_S",
    "METHODS",
    "Accumulator",
    "MethodInfo",
    "accumulate",
    "blocked_matmul",
    "check_method",
    "matmul",
    "merge_scaled",
    "method_cost",
    "ozaki_merge",
    "ozaki_split",
    "split_bf16",
    "split_scaled",
]
