"""Binary and ternary weights: values and straight-through gradients on hand-made cases, the layers
that use them, ELB-NN's positional rules, and recipes naming layers that do not exist."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import floatlab.nn as fnn
from floatlab.nn import GemmSpec, LinearSpec, Recipe, Rule, TensorSpec
from floatlab.nn.lowbit import binarize, ternarize


def test_binary_values_and_gradients_by_hand():
    w = torch.tensor([[0.5, -1.5, 0.0, 2.0],
                      [-0.25, 0.25, 0.75, -0.75]], requires_grad=True)
    q = binarize(w)                       # a = mean|w| per row: 1.0 and 0.5; sign(0) = +1
    assert torch.equal(q, torch.tensor([[1.0, -1.0, 1.0, 1.0], [-0.5, 0.5, 0.5, -0.5]]))
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    q.backward(g)
    assert torch.equal(w.grad, g)                                          # STE: dL/dw = dL/dq
    w.grad = None
    binarize(w, grad="clipped").backward(g)                                # zero where |w| > 1
    assert torch.equal(w.grad, torch.tensor([[1.0, 0.0, 3.0, 0.0], [5.0, 6.0, 7.0, 8.0]]))
    assert binarize(w, grad="none").grad_fn is None


def test_ternary_values_and_gradients_by_hand():
    w = torch.tensor([[0.25, -1.0, 1.5, 0.25],       # mean|w| 0.75, t = 0.525: keep -1, 1.5; a = 1.25
                      [0.0, 0.0, 0.0, 0.0]], requires_grad=True)           # an all-zero channel stays 0
    q = ternarize(w)
    assert torch.equal(q, torch.tensor([[0.0, -1.25, 1.25, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    g = torch.arange(8.0).reshape(2, 4)
    q.backward(g)
    assert torch.equal(w.grad, g)
    w.grad = None
    ternarize(w, grad="clipped").backward(g)
    assert torch.equal(w.grad, g * torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    # scales per slice along the chosen axis
    assert torch.equal(ternarize(w.detach().t(), axis=0), q.detach().t())


@pytest.mark.parametrize("kind", ["binary", "ternary"])
@pytest.mark.parametrize("grad", ["ste", "clipped"])
def test_qlinear_with_binary_weights_is_the_quantized_network(kind, grad):
    """y = x Q(W)^T; dx = dy Q(W); dW = dy^T x (STE), masked where |w| > 1 when clipped."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        lin.weight.mul_(6)                                    # some latent weights beyond +-1
    spec = LinearSpec(GemmSpec(TensorSpec(), TensorSpec(kind, grad=grad)), GemmSpec(b=TensorSpec(kind)))
    q = fnn.QLinear.from_linear(lin, spec)
    x = torch.randn(5, 16, requires_grad=True)
    y = q(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    W = lin.weight.detach()
    Q = fnn.lowbit.get_quantizer(kind).values(W, -1)
    Qt = fnn.lowbit.get_quantizer(kind).values(W.t(), -2)     # fprop's operand W^T: scales over K
    assert torch.equal(Qt, Q.t())
    assert torch.equal(y.detach(), x.detach() @ Qt)
    assert torch.equal(x.grad, gy @ Q)
    expected = gy.t() @ x.detach()
    if grad == "clipped":
        expected = expected * (W.abs() <= 1)
        assert bool((W.abs() > 1).any())
    assert torch.equal(lin.weight.grad, expected)


def test_qconv2d_with_ternary_weights_scales_per_output_channel():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, bias=False)
    q = fnn.QConv2d.from_conv(conv, fnn.get_recipe("ternary").default.__class__(
        GemmSpec(TensorSpec(), TensorSpec("ternary"))))
    x = torch.randn(2, 3, 6, 6)
    W = ternarize(conv.weight.detach().reshape(4, -1)).reshape(conv.weight.shape)
    assert torch.allclose(q(x), nn.functional.conv2d(x, W), atol=1e-6, rtol=0)
    assert len(torch.unique(W[0].abs())) <= 2                       # {0, a_0}


def test_weight_quantizers_only_on_weights_and_without_rounding():
    with pytest.raises(ValueError, match="weight operands only.*input"):
        LinearSpec(GemmSpec(TensorSpec("binary"), TensorSpec()))
    with pytest.raises(ValueError, match="no rounding mode or scaling"):
        TensorSpec("ternary", "sr")
    with pytest.raises(ValueError, match="binary and ternary weight quantizers only"):
        TensorSpec("e4m3", grad="clipped")
    with pytest.raises(ValueError, match="belongs on fprop.b"):
        LinearSpec(dgrad=GemmSpec(b=TensorSpec("binary", grad="clipped")))
    with pytest.raises(fnn.recipe.RecipeError, match=r"default\.fprop\.a.*weight operands only"):
        Recipe.from_dict({"name": "x", "default": {"fprop": {"a": {"format": "binary"}}}})


def _mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def test_elbnn_first_and_last_layers_in_int8_ternary_between():
    model = fnn.quantize_model(_mlp(), "elbnn", strict=True)
    specs = {n: m.spec for n, m in fnn.quantized_layers(model).items()}
    eight = fnn.get_recipe("elbnn").rules[0].linear
    assert specs["0"] == eight and specs["6"] == eight
    assert specs["2"].fprop.b.format == "ternary" and specs["4"].fprop.b.format == "ternary"
    assert specs["2"].fprop.a.format == "int4"
    assert model.floatlab_quantization.unused_rules == ()


def test_recipe_naming_a_layer_that_does_not_exist():
    recipe = Recipe("r", LinearSpec.uniform("bf16"), rules=(Rule("conv9", LinearSpec.uniform("e4m3")),), keep=())
    with pytest.warns(UserWarning, match="'conv9'"):
        fnn.quantize_model(_mlp(), recipe)
    with pytest.raises(ValueError, match="rule pattern\\(s\\) 'conv9' matched no quantized layer"):
        fnn.quantize_model(_mlp(), recipe, strict=True)
