"""The entry points ``quantize``, ``encode`` and ``decode`` (:mod:`floatlab.ops.api`).

Each call is validated here once, then runs either the plain reference path
(:mod:`floatlab.plain`: float64, obviously correct) or a fused kernel (:mod:`floatlab.kernels`),
which returns the same bits::

    floatlab.quantize ──> ops.api ──┬──> plain/    reference path (rounding core, block pipeline)
                                    └──> kernels/  fused fast paths (compiled, native C++)
"""
