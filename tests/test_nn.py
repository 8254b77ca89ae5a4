"""floatlab.nn: the quantized linear equals the quantize-then-matmul construction, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

import floatlab
import floatlab.nn as fnn
from floatlab.nn import GemmSpec, LinearSpec, Recipe, TensorSpec
from floatlab.nn.hadamard import random_hadamard, rht

RECIPE_NAMES = fnn.list_recipes()


def _q(t, ts: TensorSpec, axis, gen=None, gemm="fprop"):
    """Quantize one operand; scaled specs use 2^floor(log2(max / amax)) (on a first call the
    delayed scale has no history and equals the current one). Binary/ternary weights: one scale
    per output channel, reducing over the weight's input axis (fprop's W^T: -2; dgrad's W: -1)."""
    if ts.format is None:
        return t
    if ts.quantizer:
        return fnn.lowbit.get_quantizer(ts.format).values(t, -2 if gemm == "fprop" else -1)
    f = floatlab.get_format(ts.format)
    kw = {"axis": axis} if f.kind == "block" else {}
    s = 1.0
    if ts.scaling is not fnn.Scaling.NONE:
        target = ts.scale_to or getattr(f, "element", f).max_value
        s = 2.0 ** float(torch.floor(torch.log2(target / t.abs().max().double())))
    return floatlab.quantize(t * s, ts.format, rounding=ts.rounding, saturate=ts.saturate,
                             generator=gen if ts.stochastic else None, **kw) / s


def _reference(x, w, gy, spec: LinearSpec, seed: int):
    """The documented construction, written with floatlab.quantize only."""
    gen = torch.Generator().manual_seed(seed)

    def gemm(a, b, gs: GemmSpec, index):
        if gs.hadamard:
            R = random_hadamard(gs.hadamard, seed * 3 + index)
            a, b = rht(a, R, -1), rht(b, R, -2)
        name = ("fprop", "dgrad", "wgrad")[index]
        return _q(a, gs.a, -1, gen, name) @ _q(b, gs.b, -2, gen, name)

    y = gemm(x, w.t(), spec.fprop, 0)
    gx = gemm(gy, w, spec.dgrad, 1)
    gw = gemm(gy.t(), x, spec.wgrad, 2)
    return y, gx, gw


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_qlinear_equals_construction(name):
    spec = fnn.get_recipe(name).default
    torch.manual_seed(0)
    x = torch.randn(64, 64) * 3
    lin = torch.nn.Linear(64, 48, bias=False)
    q = fnn.QLinear.from_linear(lin, spec, seed=7)
    xr = x.clone().requires_grad_()
    y = q(xr)
    gy = torch.randn_like(y) * 1e-3
    y.backward(gy)
    ry, rgx, rgw = _reference(x, lin.weight.detach(), gy, spec, 7)
    assert torch.equal(y.detach(), ry)
    assert torch.equal(xr.grad, rgx)
    assert torch.equal(lin.weight.grad, rgw)


def test_block_axes_are_contraction_axes():
    """The spelled-out statement of the issue: x and W blocked along in_features for fprop,
    dy and W along out_features for dgrad, dy and x along tokens for wgrad."""
    spec = LinearSpec.uniform("mxfp4")
    torch.manual_seed(1)
    x, w = torch.randn(64, 96), torch.randn(32, 96)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    y = fnn.qlinear(xr, wr, None, fnn.QuantState(spec))
    gy = torch.randn_like(y)
    y.backward(gy)
    q = lambda t, axis: floatlab.quantize(t, "mxfp4", axis=axis)
    assert torch.equal(y, q(x, -1) @ q(w, -1).T)
    assert torch.equal(xr.grad, q(gy, -1) @ q(w, 0))
    assert torch.equal(wr.grad, q(gy, 0).T @ q(x, 0))


def test_2d_weight_tiles_and_bias_and_leading_dims():
    spec = LinearSpec(GemmSpec(TensorSpec("nvfp4"), TensorSpec("nvfp4_2d")),
                      GemmSpec(TensorSpec("nvfp4"), TensorSpec("nvfp4_2d")),
                      GemmSpec(TensorSpec("nvfp4"), TensorSpec("nvfp4")))
    torch.manual_seed(2)
    x = torch.randn(2, 16, 32)
    lin = torch.nn.Linear(32, 48)
    q = fnn.QLinear.from_linear(lin, spec)
    y = q(x)
    W = floatlab.quantize(lin.weight.detach(), "nvfp4_2d")
    ref = floatlab.quantize(x.reshape(-1, 32), "nvfp4") @ W.T + lin.bias.detach()
    assert torch.equal(y.detach(), ref.reshape(2, 16, 48))


def test_scaled_qlinear_equals_construction():
    spec = LinearSpec.uniform("e4m3", "e5m2", scaling="current")
    torch.manual_seed(3)
    x = torch.randn(32, 64) * 1e-3
    w = torch.randn(16, 64) * 10
    y = fnn.qlinear(x, w, None, fnn.QuantState(spec))

    def sq(t, fmt):
        a = t.abs().max().double()
        s = 2.0 ** torch.floor(torch.log2(floatlab.get_format(fmt).max_value / a))
        s = float(s)
        return floatlab.quantize(t * s, fmt, saturate=True) / s

    assert torch.equal(y, sq(x, "e4m3") @ sq(w, "e4m3").T)
    # scaled quantization uses the range: far better than unscaled e4m3 of 1e-3-sized inputs
    unscaled = floatlab.quantize(x, "e4m3", saturate=True) @ floatlab.quantize(w, "e4m3", saturate=True).T
    exact = x @ w.T
    assert (y - exact).norm() < 0.2 * (unscaled - exact).norm()


def test_delayed_scaling_history():
    spec = LinearSpec.uniform("e4m3", "e5m2", scaling="delayed")
    lin = fnn.QLinear(8, 4, spec=spec, amax_history=4)
    x = torch.randn(5, 8, requires_grad=True)
    lin(x).sum().backward()
    h = lin.amax_history
    assert h.shape == (6, 4)
    assert float(h[0, 0]) == float(x.detach().abs().max())          # fprop input amax pushed
    assert float(h[1, 0]) == float(lin.weight.detach().abs().max())
    assert bool((h[:, 0] > 0).all()) and bool((h[:, 1:] == 0).all())
    lin(x).sum().backward()
    assert bool((h[:, 1] > 0).all())
    assert "amax_history" in lin.state_dict()


def test_stochastic_rounding_is_seeded_and_unbiased():
    spec = LinearSpec(dgrad=GemmSpec(TensorSpec("e2m1", "sr"), TensorSpec()))
    x = torch.randn(4, 8)
    w = torch.randn(3, 8)
    gys = []
    for seed in (5, 5, 6):
        xr = x.clone().requires_grad_()
        y = fnn.qlinear(xr, w, None, fnn.QuantState(spec, seed=seed))
        y.backward(torch.full_like(y, 0.3))
        gys.append(xr.grad)
    assert torch.equal(gys[0], gys[1]) and not torch.equal(gys[0], gys[2])


def test_hadamard_orthogonal_and_seeded():
    for n in fnn.hadamard.SIZES:
        H = fnn.hadamard_matrix(n, torch.float64)
        assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
        R = fnn.random_hadamard(n, 3, torch.float64)
        assert torch.allclose(R @ R.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
        assert torch.equal(R, fnn.random_hadamard(n, 3, torch.float64))
        assert not torch.equal(R, fnn.random_hadamard(n, 4, torch.float64))
    with pytest.raises(ValueError):
        fnn.hadamard_matrix(24)
    with pytest.raises(ValueError):
        GemmSpec(hadamard=8)


def test_rht_preserves_products_with_padding():
    torch.manual_seed(4)
    a, b = torch.randn(5, 40, dtype=torch.float64), torch.randn(40, 7, dtype=torch.float64)
    R = fnn.random_hadamard(16, 1, torch.float64)
    ar, br = rht(a, R, -1), rht(b, R, -2)
    assert ar.shape == (5, 48) and br.shape == (48, 7)
    assert torch.allclose(ar @ br, a @ b, atol=1e-12)


def test_rht_spreads_outliers_and_reduces_4bit_error():
    torch.manual_seed(5)
    a = torch.randn(64, 256)
    a[:, ::37] *= 50     # outlier columns
    b = torch.randn(256, 64)
    spec = LinearSpec.uniform("mxfp4")
    exact = a @ b
    plain = fnn.qgemm(a, b, GemmSpec(TensorSpec("mxfp4"), TensorSpec("mxfp4")), fnn.QuantState(spec), "fprop")
    rot = fnn.qgemm(a, b, GemmSpec(TensorSpec("mxfp4"), TensorSpec("mxfp4"), 64), fnn.QuantState(spec), "fprop")
    assert (rot - exact).norm() < (plain - exact).norm()


def test_qmatmul_equals_construction():
    spec = LinearSpec.uniform("mxfp8_e4m3")
    torch.manual_seed(6)
    a = torch.randn(2, 3, 32, 64, requires_grad=True)
    b = torch.randn(2, 3, 64, 32, requires_grad=True)
    y = fnn.qmatmul(a, b, spec)
    g = torch.randn_like(y)
    y.backward(g)
    q = lambda t, axis: floatlab.quantize(t.detach(), "mxfp8_e4m3", axis=axis)
    assert torch.equal(y.detach(), q(a, -1) @ q(b, -2))
    assert torch.equal(a.grad, q(g, -1) @ q(b.transpose(-1, -2), -2))
    assert torch.equal(b.grad, (q(g.transpose(-1, -2), -1) @ q(a, -2)).transpose(-1, -2))
    assert torch.equal(fnn.qmatmul(a, b, None), a @ b)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipes_round_trip(name):
    r = fnn.get_recipe(name)
    assert Recipe.from_json(r.to_json()) == r
    pytest.importorskip("yaml")
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert json.loads(r.to_json())["name"] == name


def test_recipe_file_and_errors(tmp_path):
    pytest.importorskip("yaml")
    r = fnn.get_recipe("nvfp4").replace(name="mine", rules=(fnn.Rule("*mlp*", LinearSpec.uniform("bf16")),))
    p = tmp_path / "mine.yaml"
    p.write_text(r.to_yaml())
    assert fnn.get_recipe(str(p)) == r
    assert r.spec_for("h.0.mlp.fc") == LinearSpec.uniform("bf16")
    assert r.spec_for("h.0.attn.qkv") == r.default
    with pytest.raises(ValueError, match="unknown"):
        Recipe.from_dict({"name": "x", "colour": 1})
    with pytest.raises(ValueError):
        TensorSpec("e4m3", "hybrid")        # hybrid rounding is hif8-only
    with pytest.raises(ValueError, match="unknown recipe"):
        fnn.get_recipe("fp3")


def test_quantize_model_keeps_and_shares_parameters():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 16)
            self.a = torch.nn.Linear(16, 16)
            self.b = torch.nn.Linear(16, 16)
            self.c = torch.nn.Linear(16, 16)
            self.lm_head = torch.nn.Linear(16, 10)

    m = M()
    params = list(m.parameters())
    fnn.quantize_model(m, fnn.get_recipe("bf16").replace(keep_last=1))
    assert isinstance(m.a, fnn.QLinear) and isinstance(m.b, fnn.QLinear)
    assert type(m.c) is torch.nn.Linear and type(m.lm_head) is torch.nn.Linear
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert set(fnn.quantized_layers(m)) == {"a", "b"}
    assert not hasattr(torch.nn.functional, "floatlab_patched")  # no global patching


def test_generator_state_in_state_dict():
    spec = LinearSpec.uniform("e2m1", rounding="sr")
    a = fnn.QLinear(8, 8, spec=spec, seed=1)
    x = torch.randn(4, 8)
    a(x)
    sd = a.state_dict()
    y1 = a(x)
    b = fnn.QLinear(8, 8, spec=spec, seed=99)
    b.load_state_dict(sd)
    assert torch.equal(b(x), y1)


def test_torch_compile_matches_eager():
    torch.manual_seed(8)
    m = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    fnn.quantize_model(m, "mxfp8")
    x = torch.randn(16, 32)
    eager = m(x)
    compiled = torch.compile(m, backend="aot_eager")(x)
    assert torch.equal(eager, compiled)


@pytest.mark.slow
def test_torch_compile_inductor_trains_like_eager():
    torch.manual_seed(9)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    fnn.quantize_model(m, "nvfp4_plain")
    x = torch.randn(16, 32)
    eager = m(x)
    eager.sum().backward()
    g_eager = m[0].weight.grad.clone()
    m.zero_grad()
    compiled = torch.compile(m)(x)
    compiled.sum().backward()
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_eager, m[0].weight.grad, rtol=1e-5, atol=1e-6)


def test_recipe_names_case_insensitive_and_did_you_mean(tmp_path):
    assert fnn.get_recipe("NVFP4") is fnn.get_recipe("nvfp4")
    assert fnn.get_recipe(" Hif8 ") is fnn.RECIPES["hif8"]
    with pytest.raises(ValueError, match=r"unknown recipe 'mxfp44'\. Did you mean: mxfp4"):
        fnn.get_recipe("mxfp44")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fnn.get_recipe(str(tmp_path / "absent.YAML"))
    p = tmp_path / "r.json"
    p.write_text(fnn.get_recipe("fp8").replace(name="mine").to_json())
    assert fnn.get_recipe(p).name == "mine"                 # a pathlib.Path works too


def test_rounding_spellings_are_one_mode():
    """"SR", "stochastic" and "sr" are the same mode: all draw from the layer's generator (before,
    only the exact spelling "sr" did; the others rounded stochastically from the global RNG)."""
    for spelling in ("SR", "stochastic", " sr "):
        t = TensorSpec("E2M1", spelling)
        assert t == TensorSpec("e2m1", "sr") and t.stochastic
    spec = LinearSpec.uniform("e2m1", rounding="Stochastic")
    x = torch.randn(16, 32)
    a = fnn.QLinear(32, 8, spec=spec, seed=3)
    b = fnn.QLinear(32, 8, spec=spec, seed=3)
    b.load_state_dict(a.state_dict())                      # same weights, same generator state
    torch.manual_seed(0)
    ya = a(x)
    torch.manual_seed(1)                                    # the global RNG must not matter
    yb = b(x)
    assert torch.equal(ya, yb)
    assert not torch.equal(a(x), ya)                        # and the rounding is stochastic
    # the same for the operand quantizer and the low-precision optimizer
    from floatlab.nn.quantizer import fake_quantize
    v = torch.randn(4096)
    outs = []
    for k, spelling in enumerate(("sr", "SR", "stochastic")):
        torch.manual_seed(k)
        outs.append(fake_quantize(v, "e2m1", spelling, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    p = torch.nn.Parameter(torch.randn(8))
    assert fnn.LowPrecisionOptimizer(torch.optim.SGD([p], lr=0.1), weight=("bf16", "SR")).weight == ("bf16", "sr")


@pytest.mark.parametrize("d,match", [
    ({"name": "x"}, "missing recipe key default"),
    ({"default": {}}, "missing recipe key name"),
    ({"name": "x", "default": {}, "keep": "*head"}, "keep must be a list"),
    ({"name": "x", "default": {}, "keep_last": -1}, "keep_last must be an integer >= 0"),
    ({"name": "x", "default": {}, "amax_history": 0}, "amax_history must be an integer >= 1"),
    ({"name": "x", "default": {"fprop": {"a": {"format": "e4m3", "saturate": "yes"}}}},
     "default.fprop.a: saturate must be true or false"),
    ({"name": "x", "default": {"fprop": {"a": {"scaling": "later"}}}}, "default.fprop.a: scaling must be one of"),
    ({"name": "x", "default": {"dgrad": "mxfp8"}}, "default.dgrad must be a mapping"),
    ({"name": "x", "default": {}, "rules": [{"pattern": "h.*"}]}, r"rules\[0\] needs pattern"),
    ({"name": "x", "default": {}, "rules": [{"pattern": "h.*", "linear": {"wgrad": {"hadamard": "16"}}}]},
     r"rules\[0\].linear.wgrad: hadamard must be 0"),
    ([1, 2], "a recipe is a mapping"),
])
def test_recipe_dict_errors_name_the_key(d, match):
    from floatlab.nn.recipe import RecipeError
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(d)


def test_recipe_keep_given_as_one_string_is_refused():
    with pytest.raises(ValueError, match="keep must be a list"):
        Recipe("x", keep="*head")                          # tuple("*head") would keep everything
