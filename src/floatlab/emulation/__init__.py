"""Rounded arithmetic (`floatlab.emulate`): run ordinary PyTorch code with every floating result rounded to a format.

>>> import torch, floatlab
>>> x = torch.tensor([1.0, 2.0 ** -11, 2.0 ** -11])
>>> with floatlab.emulate("fp16"):
...     y = (x[0] + x[1]) + x[2]            # each addition rounded to fp16: 1 + 2^-11 ties to 1
>>> y.item()
1.0
>>> (x[0] + x[1] + x[2]).item()            # plain float32
1.0009765625

:func:`emulate` returns an :class:`Emulation`, a ``torch.utils._python_dispatch.TorchDispatchMode``:
every ATen operation that runs inside the ``with`` block, forward and backward, is intercepted
below autograd (as ``FlopCounterMode`` intercepts them to count FLOPs), computed in the
*working precision* and its floating outputs rounded with ``floatlab.quantize`` semantics (a
native torch cast where that is the same function, tested equal). How each operation is treated:

=============  ===============================================================================
kind           treatment (``floatlab.emulation.ops`` has the lists)
=============  ===============================================================================
elementwise    computed in the working precision, each floating output rounded once: ``add``,
               ``mul``, ``div``, ``sqrt``, ``exp``, ``log``, ``pow``, ``tanh``, ``sigmoid``,
               ``gelu``, ``silu``, ``abs``, ``relu``, ``clamp`` and their backward ops, and every
               operation not listed below
reduction      ``reductions="result"`` (default): computed in float64, the result rounded once.
               ``reductions="accumulator"``: ``sum``, ``mean``, ``nansum`` and ``cumsum`` round
               every partial sum in the accumulator (``accumulator``, or the format itself
               with chunk 1 = recursive summation); ``mean`` then rounds its division.
               ``prod``, ``cumprod``, ``trace`` are rounded once
contraction    ``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``addbmm``, ``mv``, ``addmv``, ``dot``
               (so ``@``, ``matmul``, ``linear``, ``einsum``, which lower to them).
               ``accumulator=None``: exact products summed in float64, result rounded once.
               With an accumulator (:class:`floatlab.gemm.Accumulator` or ``"fmt:rounding:chunk"``):
               chunks of ``chunk`` exact products, running sum rounded into the accumulator
               format in the given ``order``, then into ``fmt``; the bias of ``addmm``-style ops
               is added with one more rounding
convolution    rounded once (the accumulator does not apply)
fused          ``fused="decompose"`` (default): ``softmax``, ``log_softmax``, ``layer_norm``,
               ``batch_norm``, ``group_norm``, ``var``, ``std``, ``logsumexp``, ``addcmul``,
               ``addcdiv``, ``lerp``, losses, ``scaled_dot_product_attention``, ``vector_norm``,
               ``dropout`` run as PyTorch's decompositions, so every primitive inside is
               rounded; ``fused="result"``: rounded once
linalg         LAPACK operations (``linalg.solve``, ``inv``, ``lu_factor``, ``cholesky``, ``qr``,
               ``svd``, ``eigh``, ``det``, ``solve_triangular``, ...): ``linalg="result"``
               (default) computes them in the working precision and rounds each floating output
               once (no intermediate is rounded; :mod:`floatlab.linalg` has LU and triangular
               solves with every operation rounded); ``linalg="refuse"`` raises
               :class:`EmulationError`
convert        ``.to(dtype)`` / ``copy_``: rounded only when the target dtype narrows
move, source   views, indexing, ``cat``, ``where``, ``max``/``min``, ``sort``, factories, fills and
               random draws: passed through unrounded (every value is an input value or the
               program's own constant; ``round_inputs=True`` rounds those where they are used)
=============  ===============================================================================

Operations without floating outputs (comparisons, ``argmax``, integer arithmetic) are not
touched; complex results raise :class:`EmulationError`.

**Working precision** (``working=``): ``"float64"`` computes every operation in float64. There,
``+ - * /`` and ``sqrt`` of operands of at most 26 significant bits (every format up to fp32,
float32 inputs) round correctly in every mode: ``+ -`` and ``*`` carry their exact error (TwoSum,
TwoProduct) into the directed and stochastic modes, and a quotient or square root never lands on a
grid point it should not. Library functions (``exp``, ``tanh``, ...) are float64 libm results
rounded once (not correctly rounded in the rare cases where that result lies within a float64 ulp
of a rounding boundary). ``"auto"`` (default) gives the same bits faster: ``+ - * / sqrt`` and the
exact operations run in float32 under round-to-nearest into formats of at most 11 significant bits
(innocuous double rounding, 24 >= 2p + 2; Figueroa 1995), except where the float32 result is
subnormal (redone in float64); bf16 and tf32 too, redoing in float64 the float32 results that lie
exactly on one of their rounding midpoints (then equal to the float64 path for any float32
operands); the library functions of :data:`~floatlab.emulation.ops.TRANSCENDENTAL`
run in float32 in every deterministic mode, and an element is kept only when its float32 result and
the values 2^-19 below and above it round alike, the rest being redone in float64; everything else
(reductions, matrix products, stochastic modes, fixed point) runs in float64. ``"input"`` computes
in the tensors' own dtype (fastest; exact only where ``auto`` uses float32). The tensors' dtype
must hold every value of the format (float32 holds every format of floatlab up to fp32; use float64
tensors for ``"fp64"``).

**Inputs** are not rounded at entry: tensors made outside the context, parameters and constants
enter as they are, and the first operation on them rounds its result. ``round_inputs=True``
rounds every floating argument of every rounded operation first.

**Stochastic rounding** draws from ``generator`` in program order: the same program with an
equally seeded generator gives identical results. Without a generator the draws come from
torch's default generator (reproducible under ``torch.manual_seed``).

**Nesting**: the innermost context rounds (``with emulate("bf16"): ... with emulate("fp16"): ...``
rounds to fp16 inside and to bf16 outside); leaving it restores the outer one. Other dispatch
modes (``FlopCounterMode``) still see the program's operations, not the rounding's.

**Sources.** The model (each operation computed in a wider precision, then rounded once to the
target format, in any rounding mode) is that of chop (Higham and Pranesh, "Simulating Low
Precision Floating-Point Arithmetic", SIAM J. Sci. Comput. 41(5), 2019), CPFloat (Fasi and
Mikaitis, "CPFloat: A C Library for Simulating Low-Precision Arithmetic", ACM Trans. Math. Softw.
49(2), 2023) and Pychop (Chen and Carson, 2025), whose op-by-op results
``tests/test_pychop_agreement.py`` compares against. Double rounding through float32: Figueroa,
"When is double rounding innocuous?", ACM SIGNUM Newsletter 30(3), 1995. Exact errors of sums and
products: TwoSum (Knuth, TAOCP vol. 2) and TwoProduct (Dekker, Numer. Math. 18, 1971).
"""

from __future__ import annotations

import torch

from floatlab.gemm.accumulate import Accumulator

from .mode import Emulation, EmulationError
from .ops import Kind, classify, describe
from .rounding import FP64, Rounder, resolve_format

__all__ = ["Accumulator", "Emulation", "EmulationError", "FP64", "Kind", "Rounder", "classify",
           "describe", "emulate", "resolve_format"]


def emulate(fmt, rounding=None, *, saturate: bool | None = None,
            generator: torch.Generator | None = None, sr_bits: int | None = None,
            accumulator: str | Accumulator | None = None, order: str = "forward",
            reductions: str = "result", fused: str = "decompose", linalg: str = "result",
            working: str = "auto", round_inputs: bool = False,
            backend: str | None = None) -> Emulation:
    """Context manager: every floating operation's result inside it rounded to ``fmt``
    (the chop/CPFloat model, Higham and Pranesh 2019: the module docstring has the sources).

    Args:
        fmt: a scalar format name or object: ``"fp16"``, ``"bf16"``, ``"tf32"``, ``"e4m3"``,
            ``"e5m2"``, ``"hif8"``, fixed point ``"q3.4"``, any ``"eXmY"``, ``"fp64"``.
        rounding: a :class:`~floatlab.RoundingMode` or its name (``rne``, ``rna``, ``rnz``,
            ``rtz``, ``rup``, ``rdn``, ``rto``, ``sr``, ``sr_half``); ``None`` = the format's default.
        saturate: clamp overflow to +-max (``None``: the format's own rule, e.g. fp16 -> Inf).
        generator: ``torch.Generator`` for the stochastic modes (reproducible draws).
        sr_bits: random bits for ``rounding="sr"`` (``None``: exact probability).
        accumulator: ``None`` (matrix products summed in float64, rounded once), or a
            :class:`floatlab.gemm.Accumulator` / spec ``"fmt[:rounding[:chunk]]"`` such as
            ``"fp32:rtz:16"`` (a tensor core) or ``"bf16:rne:1"``.
        order: order of the accumulator's chunk sums: ``"forward"``, ``"reverse"``, ``"pairwise"``.
        reductions: ``"result"`` (rounded once) or ``"accumulator"`` (every partial sum of
            ``sum``/``mean``/``nansum``/``cumsum`` rounded; see the module table).
        fused: ``"decompose"`` (softmax, layer_norm, ... as rounded primitives) or ``"result"``.
        linalg: ``"result"`` (LAPACK outputs rounded once) or ``"refuse"``.
        working: ``"auto"``, ``"float64"`` or ``"input"`` (see the module docstring).
        round_inputs: also round every floating argument before each rounded operation.
        backend: ``floatlab.quantize``'s backend for the rounding (``None``: its default).

    Returns:
        An :class:`Emulation` to use as ``with floatlab.emulate(...) as em:``; ``em.counts`` and
        ``em.report()`` say which operations ran and how each was treated.

    Raises:
        ValueError: an unknown format, rounding mode, order, or option value.
        TypeError: a block format (``"mxfp4"``), a bad generator.
        EmulationError (inside the block): ``linalg="refuse"`` on a LAPACK op, complex results,
            tensors whose dtype cannot hold the format (float16 tensors under ``"bf16"``).

    Example:
        >>> import torch, floatlab
        >>> a = torch.tensor([0.1, 0.2])
        >>> with floatlab.emulate("bf16", rounding="rtz"):
        ...     s = a.sum()
        >>> s.item()                     # 0.3 truncated to bf16
        0.298828125
    """
    return Emulation(fmt, rounding, saturate=saturate, generator=generator, sr_bits=sr_bits,
                     accumulator=accumulator, order=order, reductions=reductions, fused=fused,
                     linalg=linalg, working=working, round_inputs=round_inputs, backend=backend)
