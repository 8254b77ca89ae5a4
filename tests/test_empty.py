"""Empty and 0-d inputs at every entry point, for every format and backend (issue 12 fault 7).

``quantize(torch.empty(0), "mxfp4", backend="eager")`` raised "the fast path does not support
'mxfp4'" while ``auto`` and ``plain`` returned an empty tensor. Now an empty tensor of any shape
goes through quantize (every backend), encode, decode, QTensor, save/load and torch.save/load
and comes back empty with its shape and dtype; a 0-d tensor works for scalar formats and is
refused for block formats with the true reason (a single value has no block axis), the same
on every backend. What a backend cannot run at all is refused as for non-empty input.
"""

from __future__ import annotations

import io

import pytest
import torch

import floatlab
from floatlab.kernels.dispatch import FastPathUnsupported

BACKENDS = ["auto", "eager", "compiled", "plain"]
FORMATS = floatlab.list_formats() + ["custom_ceil", "custom_amax"]
CUSTOM = {"custom_ceil": floatlab.block_format(elem="e4m3", scale="e8m0", rule="ceil"),
          "custom_amax": floatlab.block_format(elem="e2m1", scale="ue5m3", block=32)}


def _fmt(name):
    return CUSTOM.get(name) or floatlab.get_format(name)


def _empty_shapes(fmt):
    if fmt.kind != "block":
        return [(0,), (3, 0), (0, 5, 2)]
    if len(fmt.block) == 2:
        return [(0, 16), (16, 0), (2, 0, 32), (0, 0)]
    return [(0,), (3, 0), (0, 64), (2, 0, 64)]


def _fused_refuses(fmt) -> bool:
    """Formats the fused kernels never run (non-empty input is refused the same way)."""
    try:
        floatlab.quantize(torch.ones(2, 64), fmt, backend="eager")
    except FastPathUnsupported:
        return True
    return False


@pytest.mark.parametrize("name", FORMATS)
def test_empty_tensors_at_every_entry_point(name, tmp_path):
    fmt = _fmt(name)
    refused = _fused_refuses(fmt)
    for shape in _empty_shapes(fmt):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            x = torch.empty(shape, dtype=dtype)
            for backend in BACKENDS:
                if refused and backend in ("eager", "compiled"):
                    with pytest.raises(FastPathUnsupported, match="no fused kernel"):
                        floatlab.quantize(x, fmt, backend=backend)
                    continue
                y = floatlab.quantize(x, fmt, backend=backend)
                assert y.shape == x.shape and y.dtype == dtype, (name, shape, backend)
                out = torch.full_like(x, 7.0)
                assert floatlab.quantize(x, fmt, backend=backend, out=out) is out
            q = floatlab.encode(x, fmt)
            assert q.shape == shape and q.dtype == dtype and q.codes.shape == shape
            assert q.numel == 0 and q.data.numel() == 0
            for back in (q, floatlab.load(_saved(tmp_path, q))["q"], _pickled(q)):
                d = floatlab.decode(back)
                assert d.shape == shape and d.dtype == dtype, (name, shape)
                assert back.dequantize(torch.float64).shape == shape


def _saved(tmp_path, q):
    path = tmp_path / "q.safetensors"
    floatlab.save(path, {"q": q})
    return path


def _pickled(q):
    buf = io.BytesIO()
    torch.save({"q": q}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["q"]


@pytest.mark.parametrize("name", [n for n in FORMATS if _fmt(n).kind != "block"])
def test_zero_dim_tensors_in_scalar_formats(name):
    x = torch.tensor(2.7)
    want = floatlab.quantize(x.reshape(1), name, backend="plain")[0]
    for backend in BACKENDS:
        y = floatlab.quantize(x, name, backend=backend)
        assert y.shape == () and torch.equal(y, want), (name, backend)
    q = floatlab.encode(x, name)
    assert q.shape == () and q.codes.shape == ()
    assert torch.equal(floatlab.decode(q), want) and torch.equal(_pickled(q).dequantize(), want)


@pytest.mark.parametrize("name", [n for n in FORMATS if _fmt(n).kind == "block"])
def test_zero_dim_tensors_are_refused_by_block_formats_with_the_reason(name):
    x = torch.tensor(2.7)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="0-d tensor.*reshape"):
            floatlab.quantize(x, _fmt(name), backend=backend)
    with pytest.raises(ValueError, match="0-d tensor"):
        floatlab.encode(x, _fmt(name))


def test_two_d_tiles_refuse_one_d_input_on_every_backend():
    for shape in ((0,), (32,)):
        for backend in BACKENDS:
            with pytest.raises(ValueError, match="at least 2 dimensions"):
                floatlab.quantize(torch.zeros(shape), "nvfp4_2d", backend=backend)


def test_empty_integer_codes_decode():
    y = floatlab.decode(torch.empty(0, 3, dtype=torch.uint8), "e4m3")
    assert y.shape == (0, 3) and y.dtype == torch.float32


def test_the_reported_case():
    """Issue 12 fault 7: the eager backend raised 'the fast path does not support'."""
    y = floatlab.quantize(torch.empty(0), "mxfp4", backend="eager")
    assert y.shape == (0,) and y.dtype == torch.float32
