"""Fused fast paths: the same bits as :mod:`floatlab.plain`, at memory speed.

* :mod:`~floatlab.kernels.dispatch`: backend choice (``auto``/``compiled``/``eager``/``plain``)
  and the scalar fast path;
* :mod:`~floatlab.kernels.scalar`: the fused scalar rounding kernel (integer bit manipulation);
* :mod:`~floatlab.kernels.block`: the fused block kernels (MX, NVFP4, HiF4);
* :mod:`~floatlab.kernels.compiler`: one ``torch.compile``'d function per plan, with fallback;
* :mod:`~floatlab.kernels.native`: small C++ kernels built on first use (HiF4's scale pass);
* :mod:`~floatlab.kernels.rng`: the in-kernel counter-based random numbers;
* :mod:`~floatlab.kernels.memory`: huge-page backed outputs.

Nothing here is needed for correctness: wherever a kernel cannot run, the plain path does.
"""
