"""floatlab.interop.jax: JAX arrays through DLPack, inside jax.jit via host callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
fj = pytest.importorskip("floatlab.interop.jax")

FORMATS = ["e4m3", "e5m2", "hif8", "bf16", "fp16", "int4", "e2m1", "mxfp4", "nvfp4", "hif4"]


def _x(dtype=jnp.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((4, 64)) * 3, dtype=dtype)


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.array_equal(a, b, equal_nan=True))


@pytest.mark.parametrize("fmt", FORMATS)
def test_eager_and_jit_equal_floatlab_quantize(fmt):
    x = _x()
    want = floatlab.quantize(torch.from_numpy(np.array(x)), fmt)
    eager = fj.quantize(x, fmt)
    jitted = jax.jit(lambda v: fj.quantize(v, fmt))(x)
    assert eager.dtype == x.dtype and eager.shape == x.shape
    assert _same(eager, want.numpy()) and _same(jitted, want.numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtypes(dtype):
    x = _x(getattr(jnp, dtype))
    t = torch.from_dlpack(x)
    assert t.dtype == getattr(torch, dtype)
    want = floatlab.quantize(t, "e4m3").float().numpy()
    assert _same(fj.quantize(x, "e4m3").astype(jnp.float32), want)
    assert _same(jax.jit(lambda v: fj.quantize(v, "e4m3"))(x).astype(jnp.float32), want)


def test_dlpack_without_copies():
    x = _x()
    t = fj.to_torch(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer()
    y = torch.arange(16, dtype=torch.float32)
    assert fj.from_torch(y).unsafe_buffer_pointer() == y.data_ptr()


def test_vmap_and_straight_through_gradient():
    x = _x()
    v = jax.vmap(lambda r: fj.quantize(r, "bf16"))(x)
    assert _same(v, fj.quantize(x, "bf16"))
    g = jax.jit(jax.grad(lambda w: (fj.quantize(w, "fp16") ** 2).sum()))(x)
    assert _same(g, 2 * fj.quantize(x, "fp16"))


def test_stochastic_rounding_with_a_key_is_reproducible_in_and_out_of_jit():
    x = jnp.full((1000,), 1 / 3, dtype=jnp.float32)
    k = jax.random.key(7)
    a = fj.quantize(x, "bf16", "sr", key=k)
    b = jax.jit(lambda v, kk: fj.quantize(v, "bf16", "sr", key=kk))(x, k)
    c = fj.quantize(x, "bf16", "sr", key=jax.random.key(8))
    legacy = fj.quantize(x, "bf16", "sr", key=jax.random.PRNGKey(7))
    assert _same(a, b) and not _same(a, c)
    assert _same(legacy, a)
    assert len(set(np.asarray(a).tolist())) == 2


def test_encode_decode():
    x = _x()
    q = fj.encode(x, "nvfp4")
    assert isinstance(q, floatlab.QTensor)
    assert _same(fj.decode(q), floatlab.decode(floatlab.encode(torch.from_numpy(np.array(x)), "nvfp4")).numpy())
    codes = fj.encode_codes(x, "hif8")
    assert codes.dtype == jnp.uint8
    assert _same(jax.jit(lambda v: fj.encode_codes(v, "hif8"))(x), codes)
    assert _same(fj.decode(codes, "hif8"), fj.quantize(x, "hif8"))
    assert _same(jax.jit(lambda c: fj.decode(c, "hif8"))(codes), fj.quantize(x, "hif8"))


class _FakeDevice:
    platform = "tpu"

    def __str__(self):
        return "TPU_0"


class _FakeArray:
    def devices(self):
        return {_FakeDevice()}


def test_bad_input():
    with pytest.raises(TypeError, match="JAX array"):
        fj.quantize(torch.ones(3), "e4m3")
    with pytest.raises(TypeError, match="floating"):
        fj.quantize(jnp.arange(3), "e4m3")
    with pytest.raises(ValueError, match="unknown format"):
        jax.jit(lambda v: fj.quantize(v, "e9m9x"))(_x())
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda v: fj.encode(v, "e4m3"))(_x())
    with pytest.raises(TypeError, match="block format"):
        fj.encode_codes(_x(), "mxfp4")
    with pytest.raises(ValueError, match="TPU_0.*jax.device_put"):
        fj.check_device(_FakeArray())
