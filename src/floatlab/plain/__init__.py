"""The plain reference path: every format rounded in float64, step by step, obviously correct.

* :mod:`~floatlab.plain.scalar`: the one rounding core for every scalar format and mode;
* :mod:`~floatlab.plain.blocking`: cutting a tensor into blocks along any axis (or 2D tiles);
* :mod:`~floatlab.plain.block`: the block pipeline (scale rules FLOOR/CEIL/EVEN/RCEIL, AMAX,
  Four Over Six) and :mod:`~floatlab.plain.hif4`, HiFloat4's three-level rule;
* :mod:`~floatlab.plain.packing`: codes into their storage (the bit stream of sub-byte codes),
  the layout every encoder, kernel and codec writes.

The fused kernels (:mod:`floatlab.kernels`) are tested equal to this path bit for bit, and this
path is tested against the oracles (ml_dtypes, en_dtypes, :mod:`floatlab.reference`).
"""
