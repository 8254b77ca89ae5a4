"""torch.save of a QTensor, then torch.load with weights_only=True (issue 13 item 12).

A QTensor pickles to plain tensors, JSON strings and ints rebuilt by one registered safe global
(``floatlab.tensor.qtensor._rebuild_qtensor``), so torch's default ``weights_only=True`` load
accepts it in any process that imported floatlab, and the rebuild checks every field.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch

import floatlab
from floatlab.tensor.qtensor import _rebuild_qtensor

FORMATS = ["e4m3", "int4", "hif8", "fp16", "mxfp4", "mxint8", "nvfp4", "nvfp4_2d", "hif4",
           floatlab.block_format(elem="e2m1", scale="ue5m3", block=32, rule="amax")]


def _round_trip(obj, **load_kw):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, **load_kw)


def _same(a, b) -> None:
    assert type(b) is type(a)
    assert a.format == b.format and a.shape == b.shape and a.dtype == b.dtype and a.meta == b.meta
    assert torch.equal(a.data, b.data) and a.data.dtype == b.data.dtype
    assert set(a.scales) == set(b.scales)
    assert all(torch.equal(a.scales[k], b.scales[k]) for k in a.scales)
    assert torch.equal(a.dequantize().view(torch.int16), b.dequantize().view(torch.int16))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_torch_save_then_weights_only_load(fmt):
    x = torch.randn(32, 48, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    q = floatlab.encode(x, fmt)
    _same(q, _round_trip(q, weights_only=True))
    state = _round_trip({"layer.weight": q, "layer.bias": torch.ones(3)}, weights_only=True)
    _same(q, state["layer.weight"])
    _same(q, _round_trip(q, weights_only=False))
    _same(q, copy.deepcopy(q))


def test_a_fresh_process_loads_it_after_importing_floatlab(tmp_path):
    q = floatlab.encode(torch.linspace(-3, 3, 64), "nvfp4")
    path = tmp_path / "q.pt"
    torch.save(q, path)
    code = ("import sys, torch, floatlab; q = torch.load(sys.argv[1]); "
            "print(type(q).__name__, q.format.name, repr(floatlab.decode(q).sum().item()))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["QTensor", "nvfp4", repr(floatlab.decode(q).sum().item())]


@pytest.mark.parametrize("field,args,match", [
    ("data", (torch.zeros(2), '{"name": "e4m3"}', (2,), "torch.float32", {}, "{}"), "integer tensor"),
    ("shape", (torch.zeros(2, dtype=torch.uint8), '{"name": "e4m3"}', (-1,), "torch.float32", {}, "{}"), "bad shape"),
    ("dtype", (torch.zeros(2, dtype=torch.uint8), '{"name": "e4m3"}', (2,), "torch.int8", {}, "{}"), "bad dtype"),
    ("scales", (torch.zeros(2, dtype=torch.uint8), '{"name": "e4m3"}', (2,), "torch.float32", {"s": 1}, "{}"), "scales"),
    ("format", (torch.zeros(2, dtype=torch.uint8), '{"name": "nope"}', (2,), "torch.float32", {}, "{}"), "bad format"),
    ("spec", (torch.zeros(2, dtype=torch.uint8), '{"spec": {"kind": "os"}}', (2,), "torch.float32", {}, "{}"), "bad format"),
    ("meta", (torch.zeros(2, dtype=torch.uint8), '{"name": "e4m3"}', (2,), "torch.float32", {}, "[1]"), "meta"),
])
def test_the_rebuild_checks_every_field(field, args, match):
    with pytest.raises(ValueError, match=match):
        _rebuild_qtensor(*args)
