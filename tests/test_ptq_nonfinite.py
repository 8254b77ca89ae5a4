"""Non-finite numbers never reach a PTQ statistic or a quantized model (issue 12, fault 4).

A NaN/Inf in a calibrated layer's input gives a CalibrationError naming that layer (not
"linalg.cholesky: not positive-definite"), or with PTQConfig(nonfinite_tokens="exclude") the
tokens are left out: equal to calibrating without them. NaN/Inf parameters and calibration sets
without a real token are refused with their own clear errors. Models: a tiny randomly
initialized Llama (hidden 64, 2 layers, vocab 128) and a token-wise toy whose rows never mix."""

import contextlib
import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from floatlab.models.loading import LoadedModel, linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.calibration import CalibrationError, finite_rows, for_each_input
from floatlab.ptq.config import GPTQOptions, PTQConfig
from floatlab.ptq.gptq import collect_hessians, gptq_weight
from floatlab.ptq.modules import QuantLinear
from floatlab.ptq.smooth import smooth_model

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")

CALIBRATING = ["gptq", "awq", "smoothquant", "rotate+gptq", "smoothquant+gptq", "rotate+awq"]
ALL = ["rtn", "rotate"] + CALIBRATING
BAD = {"inf": float("inf"), "nan": float("nan")}


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 12), generator=g)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


@contextlib.contextmanager
def poisoned_input(model: nn.Module, layer: str, value: float, at=(1, 5, 7)):
    """``layer`` reads ``value`` at (sequence, position, channel) ``at`` of its input (a copy)."""
    def hook(mod, args):
        x = args[0].clone()
        x[at] = value
        return (x, *args[1:])
    h = model.get_submodule(layer).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _cfg(method, **kw):
    return PTQConfig(weight="int8", act="int8", method=method, awq_grid=2, **kw)


@pytest.mark.parametrize("bad", ["inf", "nan"])
@pytest.mark.parametrize("layer", ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"])
@pytest.mark.parametrize("method", CALIBRATING)
def test_nonfinite_input_names_the_layer(llama, calib, method, layer, bad):
    model = copy.deepcopy(llama)
    with poisoned_input(model, layer, BAD[bad]), pytest.raises(CalibrationError) as err:
        quantize_model(model, _cfg(method), calib=calib)
    msg = str(err.value)
    assert f"layer {layer!r}" in msg and "non-finite" in msg, msg
    assert "sequence 1, position 5" in msg and "nonfinite_tokens='exclude'" in msg, msg
    assert ("NaN" if bad == "nan" else "Inf") in msg and "positive-definite" not in msg, msg


@pytest.mark.parametrize("method", ["rtn", "rotate"])
def test_methods_without_calibration_never_run_it(llama, calib, method):
    """rtn and rotate gather no statistic (activation scales are per token, computed in each
    forward pass; rotation is data-free): they do not run calib, so a poisoned pass cannot
    reach them, and the result equals quantizing without calib."""
    runs = []
    a, b = copy.deepcopy(llama), copy.deepcopy(llama)
    h = a.register_forward_pre_hook(lambda m, args: runs.append(1))
    with poisoned_input(a, "model.layers.0.mlp.down_proj", float("inf")):
        qa = quantize_model(a, _cfg(method), calib=calib)
    h.remove()
    qb = quantize_model(b, _cfg(method))
    assert not runs and qa.keys() == qb.keys() and len(qa) == 14
    for n in qa:
        assert torch.isfinite(qa[n].dequantize()).all() and torch.equal(qa[n].dequantize(), qb[n].dequantize()), n


def test_compare_shared_hessians_name_the_layer(llama):
    """``floatlab compare --method gptq`` collects the Hessians once, outside quantize_model."""
    from floatlab.ptq.compare import CompareOptions, run_compare

    class Chars:                               # a character tokenizer for the random model
        def __call__(self, text, return_tensors=None, add_special_tokens=False):
            return {"input_ids": torch.tensor([[ord(c) % 128 for c in text]])}

    model = copy.deepcopy(llama)
    lm = LoadedModel("tiny-llama", "causal_lm", Path("."), model, Chars(), "llama", "random weights")
    opts = CompareOptions(formats=("int8",), method="gptq", calib=2, window=16, windows=2, sqnr_texts=2)
    layer = "model.layers.1.mlp.gate_proj"
    with poisoned_input(model, layer, float("inf"), at=(0, 3, 2)), pytest.raises(CalibrationError) as err:
        run_compare(lm, opts, log=lambda *a: None)
    assert f"layer {layer!r}" in str(err.value) and "non-finite" in str(err.value)


def test_the_reported_case_is_no_longer_a_cholesky_error():
    """The issue's input: one Inf among 100 x 64 calibration activations of a GPTQ layer."""
    model = Toy(layers=1)
    x = torch.randn(1, 100, 64, generator=torch.Generator().manual_seed(0))
    x[0, 42, 17] = float("inf")
    with pytest.raises(CalibrationError, match=r"layer 'layers\.0\.fc'.*1 Inf in 1 of 100 real tokens.*"
                                               r"sequence 0, position 42.*not a damping"):
        quantize_model(model, PTQConfig(weight="int4", method="gptq"), calib=[{"x": x}])


# ---- exclusion --------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, n=64):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Toy(nn.Module):
    """Linear+ReLU blocks applied token by token: a NaN/Inf token stays in its own row (and stays
    non-finite in every layer), so excluding it equals masking it out of the calibration data."""

    def __init__(self, layers=2, n=64):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Block(n) for _ in range(layers)])

    def forward(self, x, attention_mask=None):
        for b in self.layers:
            x = b(x)
        return x


def _toy_calib(seed=3):
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(seed))
    return x, torch.ones(2, 12, dtype=torch.long)


@pytest.mark.parametrize("bad", ["inf", "nan"])
@pytest.mark.parametrize("method", ["gptq", "awq", "smoothquant", "smoothquant+gptq", "rotate+gptq"])
def test_exclusion_equals_calibrating_without_those_tokens(method, bad):
    x, mask = _toy_calib()
    poisoned = x.clone()
    poisoned[1, 5, 7] = BAD[bad]
    poisoned[0, 2, 60] = BAD[bad]
    without = mask.clone()
    without[1, 5] = without[0, 2] = 0                 # the same data with those tokens masked out
    a, b = Toy(), Toy()
    with pytest.warns(RuntimeWarning, match=r"excluded at 2 layers \(first 'layers\.0\.fc': 2 of 24 tokens\)"):
        qa = quantize_model(a, _cfg(method, nonfinite_tokens="exclude"), calib=[{"x": poisoned, "attention_mask": mask}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qb = quantize_model(b, _cfg(method), calib=[{"x": x, "attention_mask": without}])
    assert qa.keys() == qb.keys() == {"layers.0.fc", "layers.1.fc"}
    for n in qa:
        wa = qa[n].dequantize()
        assert torch.isfinite(wa).all() and torch.equal(wa, qb[n].dequantize()), n
    assert _same_state(a, b)
    with torch.no_grad():
        assert torch.isfinite(a(x)).all()


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["gptq", "awq", "rotate+gptq"])
def test_exclusion_on_llama_gives_a_finite_model(llama, calib, method):
    """In a transformer a NaN/Inf spreads through attention to later tokens of its sequence;
    each layer leaves out the tokens whose input to it is non-finite, and the model stays finite."""
    model = copy.deepcopy(llama)
    with poisoned_input(model, "model.layers.0.self_attn.o_proj", float("nan")), \
            pytest.warns(RuntimeWarning, match="excluded"):
        qw = quantize_model(model, _cfg(method, nonfinite_tokens="exclude"), calib=calib)
    assert len(qw) == 14 and all(torch.isfinite(q.dequantize()).all() for q in qw.values())
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    with torch.no_grad():
        assert torch.isfinite(model(**calib[0]).logits).all()


def test_every_token_excluded_is_an_error():
    x, mask = _toy_calib()
    x[:, :, 0] = float("inf")
    with pytest.raises(CalibrationError, match=r"layer 'layers\.0\.fc' received no calibration tokens "
                                               r"\(all 24 of its tokens had non-finite inputs"):
        quantize_model(Toy(), _cfg("gptq", nonfinite_tokens="exclude"), calib=[{"x": x, "attention_mask": mask}])


# ---- weights, empty calibration, overflow ----------------------------------------------------
@pytest.mark.parametrize("param,bad", [("model.layers.1.mlp.up_proj.weight", "nan"),
                                       ("model.embed_tokens.weight", "inf")])
@pytest.mark.parametrize("method", ALL)
def test_nonfinite_parameter_is_named(llama, calib, method, param, bad):
    model = copy.deepcopy(llama)
    model.get_parameter(param).data[3, 5] = BAD[bad]
    with pytest.raises(CalibrationError, match=rf"parameter '{param}' .*\(1 {'NaN' if bad == 'nan' else 'Inf'}; "
                                               r"first at index \(3, 5\)\) before quantization"):
        quantize_model(model, _cfg(method), calib=calib)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("method", ["gptq", "awq", "smoothquant"])
def test_calibration_without_real_tokens(llama, calib, method):
    empty = [{"input_ids": calib[0]["input_ids"], "attention_mask": torch.zeros_like(calib[0]["input_ids"])}]
    with pytest.raises(CalibrationError, match=r"the calibration set has no real tokens \(1 batches"):
        quantize_model(copy.deepcopy(llama), _cfg(method), calib=empty)


def test_a_batch_without_real_tokens_adds_nothing():
    """A first batch with no real token used to make GPTQ's running mean 0/0 = NaN."""
    model = Toy()
    x, mask = _toy_calib()
    layers = linear_layers(model)
    empty = {"x": x[:1], "attention_mask": torch.zeros_like(mask[:1])}
    real = {"x": x, "attention_mask": mask}
    a = collect_hessians(model, layers, [empty, real])
    b = collect_hessians(model, layers, [real])
    assert all(torch.isfinite(a[n]).all() and torch.equal(a[n], b[n]) for n in layers)


def test_layer_that_never_runs_is_named():
    model = Toy()
    model.layers.append(Block())                      # registered, never called by forward
    model.forward = lambda x, attention_mask=None: model.layers[1](model.layers[0](x))
    x, mask = _toy_calib()
    with pytest.raises(CalibrationError, match=r"layer 'layers\.2\.fc' received no calibration tokens "
                                               r"\(it did not run"):
        collect_hessians(model, linear_layers(model), [{"x": x, "attention_mask": mask}])


def test_finite_inputs_whose_hessian_overflows():
    model = Toy(layers=1)
    x, mask = _toy_calib()
    x[0, 0, 0] = 1e20                                 # finite in float32; 1e40 is not
    with pytest.raises(CalibrationError, match=r"layer 'layers\.0\.fc': its GPTQ input Hessian .*"
                                               r"overflow float32"):
        collect_hessians(model, linear_layers(model), [{"x": x, "attention_mask": mask}])


def test_smoothquant_scaling_that_overflows_the_weight_is_named():
    model = Toy(layers=1)
    model.layers[0].fc.weight.data *= 1e10             # |w| up to 1.2e9; times s = 1e30: beyond 3.4e38
    x, mask = _toy_calib()
    x[..., 3] = 1e30
    cfg = PTQConfig(weight="int8", act="int8", method="smoothquant", smooth_alpha=1.0)
    w = model.layers[0].fc.weight.detach().clone()
    with pytest.raises(CalibrationError, match=r"layer 'layers\.0\.fc': its weight scaled by its smoothquant "
                                               r"scales .* overflow .*smaller smooth_alpha"):
        smooth_model(model, [{"x": x, "attention_mask": mask}], cfg, "smoothquant")
    assert torch.equal(model.layers[0].fc.weight, w)          # refused before the weight changed


@pytest.mark.parametrize("big,match", [(3e37, r"its mean \|x\| over the calibration tokens has non-finite values "
                                                r"\(1 Inf\).*float32 sum overflows"),
                                       (1e30, r"AWQ's search found no scale exponent with a finite output error "
                                              r"\(the layer's calibration inputs, max \|x\| 1e\+30")])
def test_awq_statistics_that_overflow_are_named(big, match):
    """Finite inputs: 24 tokens of 3e37 sum beyond float32; 1e30 makes every squared output
    error of AWQ's search overflow (before, AWQ silently kept s = 1)."""
    model = Toy(layers=1)
    x, mask = _toy_calib()
    x[..., 3] = big
    cfg = PTQConfig(weight="int8", act="int8", method="awq", awq_grid=2)
    with pytest.raises(CalibrationError, match=r"layer 'layers\.0\.fc': .*" + match):
        smooth_model(model, [{"x": x, "attention_mask": mask}], cfg, "awq")


def test_gptq_direct_inputs():
    """gptq_weight: a NaN Hessian is a CalibrationError; a finite Hessian that is not positive
    definite (rank 1, no damping) says to raise the damping, not a torch LinAlgError; precomputed
    Hessians with a NaN are refused by quantize_model naming the layer."""
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    v = torch.randn(16, generator=torch.Generator().manual_seed(1))
    H = 2 * torch.outer(v, v)
    with pytest.raises(ValueError, match=r"not positive definite \(damp=0.0.*raise GPTQOptions.damp"):
        gptq_weight(w, H, PTQConfig(weight="int8").weight, GPTQOptions(damp=0.0))
    H[2, 3] = float("nan")
    with pytest.raises(CalibrationError, match="input Hessian has non-finite values"):
        gptq_weight(w, H, PTQConfig(weight="int8").weight)
    model = Toy()
    x, mask = _toy_calib()
    batches = [{"x": x, "attention_mask": mask}]
    hess = collect_hessians(model, linear_layers(model), batches)
    hess["layers.1.fc"][0, 0] = float("inf")
    with pytest.raises(CalibrationError, match=r"layer 'layers\.1\.fc': its GPTQ input Hessian .*precomputed"):
        quantize_model(model, PTQConfig(weight="int8", method="gptq"), calib=batches, hessians=hess)


def test_finite_rows_helper():
    """The helper new methods call when they capture layer inputs their own way."""
    rows = torch.ones(5, 4, dtype=torch.float32)
    assert finite_rows("a", rows) is rows
    rows[2, 1] = float("nan")
    with pytest.raises(CalibrationError, match=r"layer 'blk\.3': .*\(1 NaN in 1 of 5 real tokens; first at here\)"
                                               r".*computes in float16"):
        finite_rows("blk.3", rows, where="here", dtype=torch.float16)
    assert torch.equal(finite_rows("a", rows, "exclude"), torch.ones(4, 4))
    with pytest.raises(ValueError, match="nonfinite_tokens must be one of"):
        PTQConfig(weight="int8", nonfinite_tokens="skip")
    cfg = PTQConfig(weight="int8", method="gptq", nonfinite_tokens="exclude")
    assert PTQConfig.from_dict(cfg.to_dict()) == cfg
    seen = []
    model = Toy(layers=1)
    x, mask = _toy_calib()
    for_each_input(model, linear_layers(model), [{"x": x, "attention_mask": mask}],
                   lambda n, r: seen.append(r.shape[0]))
    assert seen == [24]
