"""JAX arrays in and out of floatlab: ``quantize``, ``encode``, ``decode`` (optional extra ``jax``).

::

    import jax, jax.numpy as jnp
    from floatlab.interop import jax as fj
    fj.quantize(jnp.array([1.0625, 300.0]), "e4m3")            # Array([  1., 288.], dtype=float32)
    jax.jit(lambda v: fj.quantize(v, "hif8") * 2)(x)            # inside jit: a host callback
    fj.quantize(x, "bf16", "sr", key=jax.random.key(0))         # reproducible stochastic rounding

(No doctest here: the module needs the optional JAX.)

* **Eager arrays** cross by DLPack: ``torch.from_dlpack`` reads the JAX buffer without copying,
  floatlab computes, and ``jax.numpy.from_dlpack`` wraps the torch result without copying (JAX
  copies only when a buffer's alignment or layout does not suit it).
* **Inside** ``jax.jit`` (and ``vmap``/``grad``), :func:`quantize` and :func:`decode` run as a
  ``jax.pure_callback`` on the host: JAX hands the values over as NumPy arrays, which torch reads
  in place. :func:`quantize` carries the straight-through gradient (``d quantize(x) / dx = 1``, as
  ``floatlab.quantize``'s default ``grad="ste"``) through a ``jax.custom_jvp``.
* **Stochastic rounding** takes a JAX PRNG ``key`` (``jax.random.key(0)`` or the legacy
  ``PRNGKey``): the key's bits seed a ``torch.Generator``, so a key gives the same draws inside
  and outside ``jit`` and a callback stays a pure function of its inputs.

Devices: floatlab's torch here runs on the CPU (and on CUDA when torch has it). A JAX array on
another device (a TPU, or a GPU with a CPU-only torch) raises ``ValueError`` naming the device and
the fix (``jax.device_put(x, jax.devices("cpu")[0])``); inside ``jit`` the callback moves values to
the host itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from floatlab.formats.block import BlockFormat
from floatlab.formats.registry import get_format
from floatlab.ops import api
from floatlab.tensor.qtensor import QTensor

try:  # the optional extra: pip install 'floatlab[jax]'
    import jax
    import jax.numpy as jnp
except ImportError as _err:  # pragma: no cover - exercised only without JAX
    raise ImportError("floatlab.interop.jax needs JAX: pip install 'floatlab[jax]' "
                      "(or pip install jax jaxlib)") from _err

_TORCH_OF = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
             "float64": torch.float64}


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_array(x, what: str = "x"):
    if not isinstance(x, jax.Array):
        raise TypeError(f"{what} must be a JAX array, got {type(x).__name__} (torch tensors go to "
                        "floatlab.quantize directly)")
    return x


def check_device(x) -> None:
    """Raise ``ValueError`` if the JAX array lives where floatlab's torch cannot read it."""
    cuda = torch.cuda.is_available()
    for d in x.devices():
        if d.platform == "cpu" or (d.platform in ("gpu", "cuda") and cuda):
            continue
        raise ValueError(f"the JAX array is on {d} ({d.platform}), which floatlab's torch "
                         f"({torch.__version__}{', with CUDA' if cuda else ', CPU only'}) cannot read; "
                         "move it first: jax.device_put(x, jax.devices('cpu')[0]) (inside jax.jit "
                         "floatlab runs as a host callback and needs no move)")


def to_torch(x) -> torch.Tensor:
    """The torch view of an eager JAX array (DLPack, no copy)."""
    _check_array(x)
    if _is_tracer(x):
        raise TypeError("to_torch needs a concrete array, not a tracer inside jax.jit")
    check_device(x)
    return torch.from_dlpack(x)


def from_torch(t: torch.Tensor):
    """The JAX view of a torch tensor (DLPack, no copy where JAX accepts the buffer)."""
    return jnp.from_dlpack(t.contiguous())


def _np_to_torch(a: np.ndarray) -> torch.Tensor:
    """A torch view of a (read-only) host array from a callback; floatlab never writes to it."""
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if a.dtype.name == "bfloat16":    # ml_dtypes bfloat16: torch reads its bits
            return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(a)


def _torch_to_np(t: torch.Tensor, like: np.dtype) -> np.ndarray:
    t = t.contiguous()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(like)
    return t.numpy()


def _key_data(key):
    """The uint32 words of a PRNG key (typed ``jax.random.key`` or legacy ``PRNGKey``)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return key


def _seed(words) -> int:
    """A torch seed from a key's words (the same key gives the same seed everywhere)."""
    s = 0
    for w in np.asarray(words).astype(np.uint64).reshape(-1).tolist():
        s = (s * 4294967296 + int(w)) % (2 ** 63)
    return s


def _generator(seed):
    return None if seed is None else torch.Generator().manual_seed(seed)


def _check_float(x):
    if x.dtype.name not in _TORCH_OF:
        raise TypeError(f"x has dtype {x.dtype}; floatlab quantizes floating arrays only "
                        "(float16, bfloat16, float32, float64)")


def quantize(x, fmt, rounding=None, *, saturate: bool | None = None, sr_bits: int | None = None,
             key=None, **block_options):
    """``floatlab.quantize`` for a JAX array (eager or traced): same shape and dtype.

    Args:
        x: a JAX array (float16, bfloat16, float32, float64), or a tracer inside ``jax.jit``.
        fmt, rounding, saturate, sr_bits, block_options: as :func:`floatlab.quantize`.
        key: a JAX PRNG key for the stochastic modes (required inside ``jit`` for reproducible
            draws; without one, torch's default generator is used eagerly).

    Raises:
        TypeError: not a JAX array, or not floating. ValueError: as :func:`floatlab.quantize`, or
            an array on a device torch cannot read (see the module docstring).
    """
    _check_array(x)
    _check_float(x)
    spec = get_format(fmt)                       # a bad name fails here, also under jit
    has_key = key is not None
    words = _key_data(key) if has_key else jnp.zeros(2, jnp.uint32)

    def host(values, kw):
        t = _np_to_torch(np.asarray(values))
        gen = _generator(_seed(kw) if has_key else None)
        y = api.quantize(t, spec, rounding, saturate, gen, sr_bits, grad="none", **block_options)
        return _torch_to_np(y, np.asarray(values).dtype)

    @jax.custom_jvp
    def q(v, kw):
        if _is_tracer(v) or _is_tracer(kw):
            method = "sequential" if isinstance(spec, BlockFormat) else "broadcast_all"
            return jax.pure_callback(host, jax.ShapeDtypeStruct(v.shape, v.dtype), v, kw,
                                     vmap_method=method)
        check_device(v)
        gen = _generator(_seed(kw) if has_key else None)
        y = api.quantize(torch.from_dlpack(v), spec, rounding, saturate, gen, sr_bits, grad="none",
                         **block_options)
        return from_torch(y)

    @q.defjvp
    def _ste(primals, tangents):               # straight-through: d quantize(x) / dx = 1
        return q(*primals), tangents[0]

    return q(x, words)


def encode(x, fmt, rounding=None, *, saturate: bool | None = None, sr_bits: int | None = None,
           key=None, **block_options) -> QTensor:
    """``floatlab.encode`` for an eager JAX array: a :class:`~floatlab.QTensor` (torch storage).

    A QTensor is not a JAX value, so this runs outside ``jax.jit`` only; inside, use
    :func:`encode_codes` (scalar formats) for the codes as a JAX integer array.
    """
    _check_array(x)
    if _is_tracer(x):
        raise TypeError("encode returns a QTensor, which is not a JAX value: call it outside jax.jit, "
                        "or use floatlab.interop.jax.encode_codes inside")
    _check_float(x)
    gen = None if key is None else _generator(_seed(_key_data(key)))
    return api.encode(to_torch(x), fmt, rounding, saturate, gen, sr_bits, **block_options)


def encode_codes(x, fmt, rounding=None, *, saturate: bool | None = None, key=None):
    """The integer codes of a scalar format as a JAX array (uint8 up to 8 bits, else int32);
    works inside ``jax.jit``. A NaN into a format without a NaN code raises (as ``encode``)."""
    _check_array(x)
    _check_float(x)
    spec = get_format(fmt)
    if isinstance(spec, BlockFormat):
        raise TypeError(f"{spec.name!r} is a block format: its codes come with scales; use encode "
                        "(outside jit) for a QTensor")
    out_dtype = np.uint8 if spec.bits <= 8 else np.int32
    seed = None if key is None else _seed(_key_data(key))

    def host(values):
        t = _np_to_torch(np.asarray(values))
        return api.encode(t, spec, rounding, saturate, _generator(seed)).codes.numpy().astype(out_dtype)

    if _is_tracer(x):
        return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, out_dtype), x, vmap_method="broadcast_all")
    check_device(x)
    codes = api.encode(torch.from_dlpack(x), spec, rounding, saturate, _generator(seed)).codes
    return from_torch(codes.to(torch.uint8 if spec.bits <= 8 else torch.int32))


def decode(codes, fmt=None, dtype=None):
    """Values of codes: a QTensor (returns a JAX array) or a JAX integer array of codes of a
    scalar format; ``dtype`` a JAX float dtype (default float32). Works inside ``jax.jit``."""
    dt = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if dt.name not in _TORCH_OF:
        raise TypeError(f"dtype must be a floating dtype (float16, bfloat16, float32, float64), got {dt}")
    tdt = _TORCH_OF[dt.name]
    if isinstance(codes, QTensor):
        return from_torch(api.decode(codes, fmt, tdt))
    _check_array(codes, "codes")
    if fmt is None:
        raise TypeError("decode(codes, fmt): fmt is required unless codes is a QTensor")
    spec = get_format(fmt)
    if jnp.issubdtype(codes.dtype, jnp.floating):
        raise TypeError("codes must be an integer JAX array of format codes")

    def host(c):
        y = api.decode(torch.from_numpy(np.asarray(c).astype(np.int64)), spec, tdt)
        return _torch_to_np(y, dt)

    if _is_tracer(codes):
        return jax.pure_callback(host, jax.ShapeDtypeStruct(codes.shape, dt), codes, vmap_method="broadcast_all")
    check_device(codes)
    return from_torch(api.decode(torch.from_dlpack(codes).to(torch.int64), spec, tdt))


__all__ = ["check_device", "decode", "encode", "encode_codes", "from_torch", "quantize", "to_torch"]
