"""The NaN/Inf checks of quantize_model run as one sum per tensor (calibration.all_finite), and
still refuse a NaN/Inf weight with the error that names it: a parameter before quantization and
a quantized weight that came out non-finite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from floatlab.ptq import apply
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.calibration import CalibrationError, all_finite
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.modules import QuantLinear


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_equals_isfinite_all(dtype):
    g = torch.Generator().manual_seed(0)
    big = float(torch.finfo(dtype).max)
    full = lambda n, v: torch.full((n,), v, dtype=dtype)       # noqa: E731
    cases = [torch.randn(1000, generator=g).to(dtype), torch.empty(0, dtype=dtype), torch.zeros(3, 0, dtype=dtype),
             full(64, big),                                    # finite, but the sum overflows
             torch.tensor([big, -big, big], dtype=dtype), torch.tensor([big, big, -big, -big], dtype=dtype)]
    for bad in (float("nan"), float("inf"), float("-inf")):
        for at in (0, 517, 999):
            t = torch.randn(1000, generator=g).to(dtype)
            t[at] = bad
            cases.append(t)
    both = torch.randn(1000, generator=g).to(dtype)
    both[3], both[900] = float("inf"), float("-inf")          # Inf - Inf: NaN, still not finite
    over = full(64, big)
    over[7] = float("inf")                                     # the sum overflows and one is Inf
    cases += [both, over, torch.randn(40, 30, generator=g).to(dtype).t()]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t
        assert all_finite(t[::2]) == bool(torch.isfinite(t[::2]).all()), t
    assert all_finite(torch.randn(8, 8, requires_grad=True))


def _llama() -> nn.Module:
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


LAYER = "model.layers.1.mlp.up_proj"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_weight_before_quantization_is_named(bad):
    model = _llama()
    model.get_parameter(f"{LAYER}.weight").data[3, 5] = bad
    with pytest.raises(CalibrationError, match=rf"parameter '{LAYER}.weight' \(\(128, 64\)\) has non-finite "
                                               r"values \(1 (NaN|Inf); first at index \(3, 5\)\) before quantization"):
        quantize_model(model, PTQConfig(weight="int8", act="int8"))
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantized_weight_that_comes_out_nonfinite_is_named(monkeypatch, bad):
    """A finite weight whose quantized weight is not finite (a scale that cannot reach it, or a
    bug) is refused with the error naming the layer and the count."""
    real = apply.rtn_weight
    model = _llama()
    target = model.get_parameter(f"{LAYER}.weight")

    def poisoned(w, spec, *args):
        qw = real(w, spec, *args)
        if w is target:
            wq = qw.dequantize().clone()
            wq[1, 2] = bad
            qw.dequantize = lambda: wq
        return qw
    monkeypatch.setattr(apply, "rtn_weight", poisoned)
    with pytest.raises(CalibrationError, match=rf"layer '{LAYER}': its weight quantized to int8 by 'rtn' has 1 "
                                               "non-finite values"):
        quantize_model(model, PTQConfig(weight="int8", act="int8"), keep=False)
