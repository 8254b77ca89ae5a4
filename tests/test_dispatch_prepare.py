"""prepare_native builds the native libraries a run needs in a background thread, in the order
its formats first need them; the compiler records each kernel's first (compiling) call."""

from __future__ import annotations

import threading

import pytest
import torch

from floatlab.kernels import compiler, dispatch, native_block, native_scalar


@pytest.fixture
def fake_libraries(monkeypatch):
    """native_scalar/native_block.library replaced by fakes that record the thread calling them."""
    calls = []
    monkeypatch.setattr(native_scalar, "library", lambda: calls.append(("scalar", threading.current_thread().name)))
    monkeypatch.setattr(native_block, "library", lambda: calls.append(("block", threading.current_thread().name)))
    monkeypatch.delenv("FLOATLAB_FAST", raising=False)
    monkeypatch.delenv("FLOATLAB_NATIVE", raising=False)
    monkeypatch.setattr(dispatch, "_prepared", {})
    return calls


def test_prepare_native_builds_what_the_formats_need_in_order_in_the_background(fake_libraries):
    t = dispatch.prepare_native(["int8", "mxfp4", "bf16", "nvfp4", "e4m3", "int4_g128_codec?"])
    assert t is not None and not t.daemon
    t.join()
    assert fake_libraries == [("block", "floatlab-native-build"), ("scalar", "floatlab-native-build")]
    assert set(dispatch.native_preparation()) == {"native block kernel", "native scalar kernel"}
    assert all(s >= 0 for s in dispatch.native_preparation().values())
    t = dispatch.prepare_native(["hif8"])
    t.join()
    assert fake_libraries[-1] == ("scalar", "floatlab-native-build")


def test_prepare_native_builds_nothing_it_would_not_use(fake_libraries, monkeypatch):
    assert dispatch.prepare_native(["int8", "int4"]) is None          # the ATen integer path
    assert dispatch.prepare_native([]) is None
    monkeypatch.setenv("FLOATLAB_FAST", "0")
    assert dispatch.prepare_native(["e4m3"]) is None
    monkeypatch.delenv("FLOATLAB_FAST")
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert dispatch.prepare_native(["e4m3", "mxfp4"]) is None
    assert fake_libraries == []


def test_compiler_records_first_calls(monkeypatch):
    compiler.reset()
    monkeypatch.setattr(compiler, "compiled", lambda key, make: make())   # no real compile needed
    plan = dispatch.scalar_plan(dispatch.IntFormat(8), dispatch.M.RNE, True, torch.float32, None, None)
    x = torch.randn(100)
    compiler.run((plan, True), lambda: dispatch._kernel(plan, True), x, None, torch.empty(100))
    [(name, seconds)] = compiler.first_calls()
    assert name == "int8 rne out=" and seconds >= 0
    assert compiler.describe("pack4") == "pack4"
    compiler.reset()
    assert compiler.first_calls() == []
