"""floatlab.nn.quantize_model says what it quantized and what it left alone, and why."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import floatlab.nn as fnn
from floatlab.nn import QLinear, get_recipe, quantize_model


def readme_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def test_readme_example_warns_that_nothing_was_quantized():
    model = readme_model()
    x = torch.randn(4, 64)
    fp32 = model(x)
    with pytest.warns(UserWarning, match=r"quantized 0 of 2 layer.*keep_last=2: 0, 2"):
        quantize_model(model, get_recipe("nvfp4"))
    report = fnn.quantization_report(model)
    assert report.quantized == () and report.kept == {"0": "keep_last=2", "2": "keep_last=2"}
    assert report.fraction == 0.0 and report.total_weights == 64 * 128 + 128 * 10
    assert torch.equal(model(x), fp32)                       # the report tells the truth
    with pytest.raises(ValueError, match="no layer was quantized"):
        quantize_model(readme_model(), "nvfp4", strict=True)
    # with the keep rule relaxed both layers are quantized, silently, and the output changes
    model = readme_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(model, get_recipe("nvfp4").replace(keep_last=0), strict=True)
    assert model.floatlab_quantization.quantized == ("0", "2") and model.floatlab_quantization.fraction == 1.0
    assert all(isinstance(model[i], QLinear) for i in (0, 2))
    assert not torch.equal(model(x), fp32)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm_proj = nn.Linear(64, 64)      # an ordinary projection, kept by its name
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 64)
        self.attn = nn.MultiheadAttention(64, 4)
        self.cls_head = nn.Linear(64, 10)


def test_layers_kept_by_name_and_unsupported_layers_are_reported():
    m = Mixed()
    with pytest.warns(UserWarning, match="cannot be quantized|not quantized"):
        quantize_model(m, "mxfp8")
    r = m.floatlab_quantization
    assert r.quantized == ("conv", "fc1", "fc2")             # convolutions are quantized (QConv2d)
    assert r.kept == {"norm_proj": "keep pattern '*norm*'", "cls_head": "keep pattern '*head'"}
    assert set(r.not_quantized) == {"attn"}                  # not attn.out_proj: it belongs to attn
    assert "MultiheadAttention" in r.not_quantized["attn"]
    assert type(m.conv) is fnn.QConv2d and type(m.norm_proj) is nn.Linear
    expected = 2 * 64 * 256 + 8 * 3 * 3 * 3
    total = expected + 64 * 64 + 64 * 10 + 4 * 64 * 64
    assert (r.quantized_weights, r.total_weights) == (expected, total)
    assert "fc1" not in str(r) and "attn" in str(r) and "norm_proj" in str(r)
    with pytest.raises(ValueError, match="1 layer\\(s\\) cannot be quantized"):
        quantize_model(Mixed(), "mxfp8", strict=True)


def test_unused_rule_and_second_call_are_reported():
    m = readme_model()
    recipe = get_recipe("mxfp8").replace(rules=(fnn.Rule("encoder.*", fnn.LinearSpec.uniform("bf16")),))
    with pytest.warns(UserWarning, match="'encoder.\\*'"):
        quantize_model(m, recipe)
    assert m.floatlab_quantization.unused_rules == ("encoder.*",)
    with pytest.warns(UserWarning, match="already a QLinear"):       # a second recipe changes nothing
        quantize_model(m, "hif8")
    assert m.floatlab_quantization.quantized == ()
    assert m[0].spec == get_recipe("mxfp8").default


def test_linear_subclass_and_root_linear_are_reported():
    class MyLinear(nn.Linear):
        pass

    m = nn.Sequential(MyLinear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="subclass of nn.Linear"):
        quantize_model(m, "bf16")
    assert m.floatlab_quantization.quantized == ("1", "2")
    root = nn.Linear(8, 8)
    with pytest.warns(UserWarning, match="model itself is an nn.Linear"):
        quantize_model(root, "bf16")
    assert type(root) is nn.Linear


def test_little_quantized_warns_and_training_model_report():
    """The smoke GPT under nvfp4: keep_last=2 and the kept LM head leave 80% of the weights in
    float32; quantize_model warns, and floatlab train's model report says the same."""
    from floatlab.train import GPT, get_preset
    from floatlab.train.loop import describe

    model = GPT(get_preset("smoke").model)
    with pytest.warns(UserWarning, match=r"quantized 2 of 5 .*\(20% of their weights\)"):
        quantize_model(model, "nvfp4")
    r = describe(get_recipe("nvfp4"), get_preset("smoke"))
    assert r == model.floatlab_quantization
    assert r.quantized == ("h.0.attn.qkv", "h.0.attn.proj")
    assert r.kept == {"h.0.mlp.fc": "keep_last=2", "h.0.mlp.proj": "keep_last=2",
                      "lm_head": "keep pattern '*lm_head*'"}
    big = describe(get_recipe("hif8"), get_preset("small"))
    assert len(big.quantized) == 8 and big.fraction > 0.5


def test_a_non_module_is_refused_with_a_type_error():
    """quantize_model('model', ...) said "'str' object has no attribute 'named_modules'"
    (found in the issue 13 new-user trial)."""
    import pytest

    from floatlab.nn import quantize_model

    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        quantize_model("model", "nvfp4")
    with pytest.raises(TypeError, match="got OrderedDict"):
        quantize_model(nn.Linear(4, 4).state_dict(), "nvfp4")


def test_a_model_without_gemm_layers_is_reported_as_such():
    """Not 'quantized 0 of 0 layer(s) ... (100% of their weights)'."""
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(8))
    with pytest.warns(UserWarning, match="quantized nothing: the model has no layer with GEMM weights"):
        quantize_model(model, get_recipe("nvfp4"))
    text = str(fnn.quantization_report(model))
    assert "0 of 0" not in text and "100%" not in text
    with pytest.raises(ValueError, match="no layer with GEMM weights"):
        quantize_model(nn.Sequential(nn.ReLU()), get_recipe("nvfp4"), strict=True)
