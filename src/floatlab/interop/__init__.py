"""Other array libraries in and out of floatlab.

* :mod:`floatlab.interop.jax`: JAX arrays (DLPack, ``jax.jit`` via host callbacks); needs the
  optional extra ``jax`` (``pip install 'floatlab[jax]'``).
"""
