"""Fused fast paths: the same bits as :mod:`floatlab.plain`, at memory speed.

* :mod:`~floatlab.kernels.dispatch`: backend choice (``auto``/``compiled``/``eager``/``plain``)
  and the scalar fast path;
* :mod:`~floatlab.kernels.scalar`: the fused scalar rounding kernel (integer bit manipulation);
* :mod:`~floatlab.kernels.block`: the fused block kernels (MX, NVFP4, HiF4);
* :mod:`~floatlab.kernels.compiler`: one ``torch.compile``'d function per plan, with fallback;
* :mod:`~floatlab.kernels.codes`: ``encode``/``decode`` (packed codes) on the fast paths;
* :mod:`~floatlab.kernels.native`: the build/load/thread helpers of the C++ kernels (built on
  first use; ``native_common.h`` holds what they share) and HiF4's scale pass;
* :mod:`~floatlab.kernels.native_scalar`: scalar rounding, encode and decode in one native pass;
* :mod:`~floatlab.kernels.native_block`: the block formats (MX, NVFP4, HiF4) in one native pass,
  values (``quantize``) or packed codes and scale codes (``encode``);
* :mod:`~floatlab.kernels.lookup`: the training layers' operand rounding in one native pass
  (table lookup for <= 3 mantissa bits, a loop for saturating integers), fused with the scale;
* :mod:`~floatlab.kernels.rng`: the in-kernel counter-based random numbers;
* :mod:`~floatlab.kernels.memory`: huge-page backed outputs.

Nothing here is needed for correctness: wherever a kernel cannot run, the plain path does.
"""
