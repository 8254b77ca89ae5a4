"""Extremely low-bit PTQ on a tiny randomly initialized Llama (hidden 64, 2 blocks, Student-t
weights so that clipping matters): block-wise reconstruction (LWC, PTQ1.61) lowers every
block's output error, is seeded and reproducible, keeps the model's other parameters untouched;
codecs through RTN/GPTQ/AWQ/rotation; the mask follows a constructed input; save and reload
are exact; bad input gets clear errors."""

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from floatlab.codecs import CodecError
from floatlab.models.loading import LoadedModel, linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.calibration import CalibrationError
from floatlab.ptq.config import PTQConfig, ReconOptions
from floatlab.ptq.modules import QuantLinear
from floatlab.ptq.reconstruct import find_blocks

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")


def _llama(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                p.copy_(torch.distributions.StudentT(3.0).sample(p.shape) * 0.02)
    return model


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 128, (4, 16), generator=g)}]


def _run(model, fmt, method, calib, **recon):
    m = copy.deepcopy(model)
    report = {}
    qw = quantize_model(m, PTQConfig(weight=fmt, method=method, recon=ReconOptions(**recon)), calib=calib,
                        report=report)
    return m, qw, report


@pytest.mark.parametrize("fmt,method,recon", [
    ("int2_asym_g32", "lwc", {"epochs": 4, "lr": 0.1}),
    ("int3_asym", "lwc", {"epochs": 4, "lr": 0.1}),
    ("int2", "lwc", {"epochs": 4, "lr": 0.1}),
    ("ptq161", "ptq161", {"epochs": 3}),
    ("binary_mean_cf", "ptq161", {"epochs": 3}),
])
def test_reconstruction_lowers_every_blocks_output_error(llama, calib, fmt, method, recon):
    """Each block's output error (MSE against the fp block on fp inputs, with the frozen stored
    weights) ends below its starting point (round-to-nearest with the initial parameters)."""
    m, qw, report = _run(llama, fmt, method, calib, **recon)
    blocks = report["blocks"]
    assert [b["block"] for b in blocks] == ["model.layers.0", "model.layers.1"]
    for b in blocks:
        assert b["mse_end"] < b["mse_start"], b
        assert b["loss_end"] < b["loss_start"], b
        assert len(b["epoch_losses"]) == recon["epochs"] and b["sequences"] == 4
    assert len(qw) == 14 and all(isinstance(mod, QuantLinear) for mod in [m.get_submodule(n) for n in qw])
    for name, w in qw.items():                        # the model computes with the stored weights
        assert torch.equal(m.get_submodule(name).weight, w.dequantize()), name
        if w.spec.is_codec:
            assert torch.equal(w.dequantize(), w.to_qtensor().dequantize()), name


def test_reconstruction_is_seeded_and_leaves_no_gradients(llama, calib):
    a, qa, _ = _run(llama, "ptq161", "ptq161", calib, epochs=1, seed=3)
    b, qb, _ = _run(llama, "ptq161", "ptq161", calib, epochs=1, seed=3)
    for n in qa:
        assert torch.equal(qa[n].dequantize(), qb[n].dequantize()), n
    assert all(p.grad is None for p in a.parameters())
    assert all(p.requires_grad for n, p in a.named_parameters() if "norm" in n)       # restored
    # the fp model's untouched parameters (embeddings, norms) are exactly the original ones
    ref = dict(llama.named_parameters())
    for n, p in a.named_parameters():
        if "norm" in n or "embed" in n:
            assert torch.equal(p, ref[n]), n


@pytest.mark.parametrize("fmt,method", [("int2_asym_g32", "lwc"), ("int2", "lwc"), ("ptq161", "ptq161")])
def test_each_block_is_swapped_as_soon_as_it_is_done(llama, calib, fmt, method):
    """quantize_model swaps a block's layers (dropping its fp32 ones) when that block is done,
    not at the end, and the weights are the ones reconstruct_model returns holding every
    block to the end (issue 14's peak memory: one block, not the fp32 model plus every
    dequantized weight)."""
    from floatlab.ptq import reconstruct

    cfg = PTQConfig(weight=fmt, method=method, recon=ReconOptions(epochs=1, lr=0.1))
    held = copy.deepcopy(llama)
    ref = reconstruct.reconstruct_model(held, linear_layers(held), calib, cfg,
                                        generator=torch.Generator().manual_seed(cfg.recon.seed))
    assert all(isinstance(held.get_submodule(n), nn.Linear) for n in ref)     # left as they were
    seen = []
    real = reconstruct._one_block

    def spy(model, bname, *args, **kw):
        seen.append((bname, sorted(n for n, mod in model.named_modules() if isinstance(mod, QuantLinear))))
        return real(model, bname, *args, **kw)

    m = copy.deepcopy(llama)
    try:
        reconstruct._one_block = spy
        qw = quantize_model(m, cfg, calib=calib)
    finally:
        reconstruct._one_block = real
    assert seen[0] == ("model.layers.0", [])
    assert seen[1][0] == "model.layers.1" and seen[1][1] == sorted(n for n in ref if n.startswith("model.layers.0."))
    assert sorted(qw) == sorted(ref)
    for n, w in ref.items():
        assert torch.equal(m.get_submodule(n).weight, w.dequantize()), n
        assert torch.equal(qw[n].dequantize(), w.dequantize()), n


def test_reconstruction_changes_the_quantized_weights(llama, calib):
    """The learned parameters move the result away from plain round-to-nearest."""
    _, rtn, _ = _run(llama, "int2_asym_g32", "rtn", calib)
    _, lwc, _ = _run(llama, "int2_asym_g32", "lwc", calib, epochs=1, lr=0.1)
    assert any(not torch.equal(rtn[n].dequantize(), lwc[n].dequantize()) for n in rtn)


@pytest.mark.parametrize("fmt,method", [("int3_asym_g32", "gptq"), ("int2_asym", "awq"), ("ternary", "rtn"),
                                        ("binary_mean", "gptq"), ("ptq161", "gptq"), ("ptq161", "rtn"),
                                        ("int3_asym_g32", "rotate+lwc"), ("ptq161", "rotate+ptq161"),
                                        ("int4_asym_g32", "awq+lwc"), ("binary_mean_salient20rand", "rtn")])
def test_codecs_through_every_method(llama, calib, fmt, method):
    m, qw, _ = _run(llama, fmt, method, calib, epochs=1)
    ids = calib[0]["input_ids"]
    with torch.no_grad():
        ref, out = llama(ids).logits, m(ids).logits
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    for name, w in qw.items():
        qt = w.to_qtensor()
        assert qt.format == w.spec.codec and torch.equal(qt.dequantize(), w.dequantize()), name


def test_mask_picks_the_channels_of_a_constructed_input():
    """A toy whose calibration input is large on chosen channels: the stored mask is those channels."""
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(40, 40)) for _ in range(2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(3, 10, 40) * 0.1
    chosen = [1, 7, 12, 30, 33, 39, 21, 8]                 # 20% of 40 = 8 channels
    x[..., chosen] *= 100
    for method in ("rtn", "gptq", "ptq161"):
        m = copy.deepcopy(model)
        qw = quantize_model(m, PTQConfig(weight="ptq161", method=method, recon=ReconOptions(epochs=1)),
                            calib=[{"x": x}])
        codec = qw["layers.0.0"].spec.codec
        mask = codec.unpack(qw["layers.0.0"].to_qtensor())[1]["mask"]
        assert sorted(torch.nonzero(mask).reshape(-1).tolist()) == sorted(chosen), method


def test_save_and_reload_are_exact(llama, calib, tmp_path, monkeypatch):
    """floatlab's ptq output folder round-trips codec weights bit for bit (the metric recomputed
    after reloading equals the one recorded)."""
    from floatlab.eval.metrics import perplexity
    from floatlab.ptq import io

    def fake_load(name, log=print):
        return LoadedModel("tiny-llama", "causal_lm", Path("."), copy.deepcopy(llama), None, "llama", "random")

    monkeypatch.setattr(io, "load_model", fake_load)
    lm = fake_load("tiny")
    cfg = PTQConfig(weight="ptq161", method="ptq161", recon=ReconOptions(epochs=1),
                    overrides=(("*.mlp.down_proj", "int2_asym_g32", None),))
    qw = quantize_model(lm.model, cfg, calib=calib)
    windows = torch.cat([b["input_ids"] for b in calib])
    metric = {"perplexity": perplexity(lm.model, windows)}
    io.save_quantized(tmp_path, lm, lm.model, cfg, qw, metric)
    lm2, cfg2, saved = io.load_quantized(tmp_path, log=lambda *a: None)
    assert cfg2 == cfg
    for name, p in lm.model.state_dict().items():
        assert torch.equal(p, lm2.model.state_dict()[name]), name
    assert {"perplexity": perplexity(lm2.model, windows)} == saved["metric"]


def test_bits_per_weight_of_the_model(llama):
    from floatlab.ptq.sweep import model_bits
    cfg = PTQConfig(weight="int3_asym_g32")
    layers = linear_layers(llama)
    bits, n = model_bits(layers, cfg)
    expect = sum(l.weight.numel() * 3 + l.out_features * (l.in_features // 32) * 19 for l in layers.values())
    assert (bits, n) == (expect, sum(l.weight.numel() for l in layers.values()))


# ---- clear errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,fmt", [("lwc", "int3_asym"), ("ptq161", "ptq161"), ("gptq", "int3_asym"),
                                        ("rtn", "binary_mean_salient20")])
def test_a_method_or_format_that_needs_calibration_refuses_to_run_without(llama, method, fmt):
    with pytest.raises(ValueError, match="calibration data"):
        quantize_model(copy.deepcopy(llama), PTQConfig(weight=fmt, method=method))
    assert PTQConfig(weight=fmt, method=method).needs_calibration()
    assert not PTQConfig(weight="int3_asym", method="rtn").needs_calibration()


@pytest.mark.parametrize("method", ["lwc", "ptq161"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_activations_name_the_block(llama, calib, method, bad):
    model = copy.deepcopy(llama)

    def hook(mod, args, kwargs):
        x = args[0].clone()
        x[0, 5, 7] = bad
        return (x, *args[1:]), kwargs
    h = model.model.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
    fmt = "ptq161" if method == "ptq161" else "int3_asym"
    try:
        with pytest.raises(CalibrationError, match=r"layer 'model.layers.1.self_attn.q_proj'|'model.layers.1'"):
            quantize_model(model, PTQConfig(weight=fmt, method=method, recon=ReconOptions(epochs=1)), calib=calib)
    finally:
        h.remove()


def test_nonfinite_sequences_are_left_out_with_exclude(llama, calib):
    """nonfinite_tokens='exclude': a sequence whose input to the block holds an Inf is left out
    of that block's reconstruction (with a warning), the rest is used."""
    model = copy.deepcopy(llama)

    def poison(mod, args, out):
        if out.shape[0] == 1 and int(args[0][0, 0]) == int(calib[0]["input_ids"][2, 0]):
            out = out.clone()
            out[0, 3, 5] = float("inf")
        return out
    model.model.embed_tokens.register_forward_hook(poison)
    cfg = PTQConfig(weight="int3_asym", method="lwc", nonfinite_tokens="exclude", recon=ReconOptions(epochs=1))
    report = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_model(model, cfg, calib=calib, report=report)
    assert any("1 of 4 calibration sequences" in str(x.message) for x in w)
    assert [b["sequences"] for b in report["blocks"]] == [3, 3]


def test_group_that_does_not_divide_is_refused_before_work(llama, calib):
    from floatlab.ptq.quantizer import QuantSpec
    spec = QuantSpec("int3_asym_g48", pad=False)
    with pytest.raises(CodecError, match=r"layer 'model.layers.0.self_attn.q_proj'.*group 48 does not divide "
                                         r"in_features 64 and padding is off"):
        quantize_model(copy.deepcopy(llama), PTQConfig(weight=spec, method="lwc"), calib=calib)


def test_methods_refuse_formats_they_cannot_learn(llama, calib):
    with pytest.raises(ValueError, match="lwc learns the clipping range"):
        quantize_model(copy.deepcopy(llama), PTQConfig(weight="mxfp4", method="lwc"), calib=calib)
    with pytest.raises(ValueError, match="ptq161 learns PTQ1.61's per-row scale"):
        quantize_model(copy.deepcopy(llama), PTQConfig(weight="binary_mean_salient20", method="ptq161"), calib=calib)
    with pytest.raises(ValueError, match="must come last"):
        PTQConfig(weight="int3_asym", method="lwc+gptq")
    with pytest.raises(ValueError, match="weight codec; activations"):
        quantize_model(copy.deepcopy(llama), PTQConfig(weight="int8", act="int3_asym"))


def test_blocks_are_found_in_model_order(llama):
    names = list(linear_layers(llama))
    blocks = find_blocks(llama, reversed(names))
    assert [b for b, _ in blocks] == ["model.layers.0", "model.layers.1"]
    assert sum(len(n) for _, n in blocks) == 14
    with pytest.raises(ValueError, match="not inside a transformer block"):
        find_blocks(llama, ["lm_head"])


def test_a_block_without_quantized_layers_passes_both_streams_on(llama, calib):
    """Only block 1 quantized: its inputs are block 0's fp outputs, and block 0 is unchanged."""
    cfg = PTQConfig(weight=None, method="ptq161", overrides=(("model.layers.1.*", "ptq161", None),),
                    recon=ReconOptions(epochs=1))
    m = copy.deepcopy(llama)
    report = {}
    qw = quantize_model(m, cfg, calib=calib, report=report)
    assert sorted(qw) == sorted(n for n in linear_layers(llama) if n.startswith("model.layers.1."))
    assert [b["block"] for b in report["blocks"]] == ["model.layers.1"]
    assert isinstance(m.model.layers[0].mlp.down_proj, nn.Linear)


# ---- training-step fast paths and mixed precision (issue 14's cost goal) ---------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def _same_grads(native, reference, what):
    """The native kernels' gradients (float64 sums of the same float32 products) against the
    torch path's (float32 sums): equal up to float32 rounding of a sum of these terms."""
    for a, b in zip(native, reference):
        a, b = a.view(torch.float32), b.view(torch.float32)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=what)


@pytest.mark.parametrize("native", [False, True], ids=["torch", "native"])
@pytest.mark.parametrize("fmt,shape", [("int2_asym_g64", (48, 192)), ("int3_asym", (20, 70)),
                                       ("int2_asym_g48", (17, 100)), ("int8_asym_g16", (5, 40))])
def test_lwc_fake_quant_equals_the_codec_path_bit_for_bit(fmt, shape, native, monkeypatch):
    """AffineFakeQuant gives the weight and the clip logits' gradients of
    ``AffineInt.quantize(grad="clipped")`` exactly (padded groups, zero rows, one-signed rows,
    logits that clip hard and not at all): its torch steps bit for bit; the native kernel the
    same weight bit for bit and the gradients to float32 rounding of their sums."""
    from floatlab.kernels import native_recon
    from floatlab.ptq.lwc import LWCLearner
    from floatlab.ptq.quantizer import as_spec
    if native and not native_recon.available():
        pytest.skip("no C++ compiler: the native reconstruction kernel cannot be built")
    if not native:
        monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    g = torch.Generator().manual_seed(7)
    for trial in range(4):
        lin = nn.Linear(shape[1], shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(shape, generator=g) ** 3 * 0.02)
            if trial == 1:
                lin.weight[0] = 0
                lin.weight[1].abs_()
                lin.weight[2] = -lin.weight[2].abs()
        learner = LWCLearner("layer", lin, as_spec(fmt), 1e-2)
        assert learner.fast
        with torch.no_grad():
            learner.gamma.uniform_(-3, 6, generator=g)
            learner.beta.uniform_(-3, 6, generator=g)
        grad_out = torch.randn(shape, generator=g)
        got = []
        for fast in (True, False):
            learner.fast = fast
            learner.gamma.grad = learner.beta.grad = None
            w = learner.weight()
            w.backward(grad_out)
            got.append((_bits(w), _bits(learner.gamma.grad), _bits(learner.beta.grad)))
        assert torch.equal(got[0][0], got[1][0]), (fmt, trial)
        if native:
            _same_grads(got[0][1:], got[1][1:], f"{fmt}, trial {trial}")
        else:
            for a, b in zip(*got):
                assert torch.equal(a, b), (fmt, trial)
        assert learner.gamma.grad.abs().sum() > 0


@pytest.mark.parametrize("native", [False, True], ids=["torch", "native"])
@pytest.mark.parametrize("fmt,shape", [("ptq161", (40, 90)), ("binary_mean_cf", (30, 70)),
                                       ("binary_mean_cf_salient20rand", (64, 48)), ("ptq161", (130, 203))])
def test_ptq161_weight_equals_the_autograd_expression_bit_for_bit(fmt, shape, native, monkeypatch):
    """RankOneBinary's torch steps give the autograd expression's weight and gradients bit for
    bit; the native kernel the same weight bit for bit and the gradients to float32 rounding."""
    from floatlab.kernels import native_recon
    from floatlab.ptq.ptq161 import PTQ161Learner
    from floatlab.ptq.quantizer import as_spec
    if native and not native_recon.available():
        pytest.skip("no C++ compiler: the native reconstruction kernel cannot be built")
    if not native:
        monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(shape[1], shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(shape, generator=g) * 0.05)
    learner = PTQ161Learner("layer", lin, as_spec(fmt), {"act_max": torch.rand(shape[1], generator=g)},
                            torch.Generator().manual_seed(0), None)
    with torch.no_grad():
        learner.r1.uniform_(0.5, 1.5, generator=g)
        learner.r2.uniform_(0.5, 1.5, generator=g)
    grad_out = torch.randn(shape, generator=g)
    got = []
    for fast in (True, False):
        learner.fast = fast
        for p in (learner.s, learner.r1, learner.r2):
            p.grad = None
        w = learner.weight()
        w.backward(grad_out)
        got.append((_bits(w), _bits(learner.s.grad), _bits(learner.r1.grad), _bits(learner.r2.grad)))
    assert torch.equal(got[0][0], got[1][0]), fmt
    if native:
        _same_grads(got[0][1:], got[1][1:], fmt)
    else:
        for a, b in zip(*got):
            assert torch.equal(a, b), fmt


@pytest.mark.parametrize("fmt,method,recon", [
    ("int2_asym_g32", "lwc", {"epochs": 4, "lr": 0.1}),
    ("ptq161", "ptq161", {"epochs": 3}),
])
@pytest.mark.filterwarnings("ignore:ReconOptions.amp='bf16' on a CPU without")   # tested below
def test_bf16_amp_lowers_every_blocks_output_error(llama, calib, fmt, method, recon):
    """Training under bfloat16 autocast still ends every block below its starting point, stores
    weights the model computes with exactly, and is reproducible."""
    m, qw, report = _run(llama, fmt, method, calib, amp="bf16", **recon)
    for b in report["blocks"]:
        assert b["mse_end"] < b["mse_start"], b
        assert b["loss_end"] < b["loss_start"], b
    for name, w in qw.items():
        assert torch.equal(m.get_submodule(name).weight, w.dequantize()), name
        assert torch.equal(w.dequantize(), w.to_qtensor().dequantize()), name
    _, again, report2 = _run(llama, fmt, method, calib, amp="bf16", **recon)
    assert all(torch.equal(qw[n].dequantize(), again[n].dequantize()) for n in qw)
    assert [b["epoch_losses"] for b in report["blocks"]] == [b["epoch_losses"] for b in report2["blocks"]]
    # the first block's starting point is scored in float32 either way; the training differs
    _, off, report_off = _run(llama, fmt, method, calib, **recon)
    assert report["blocks"][0]["loss_start"] == report_off["blocks"][0]["loss_start"]
    assert [b["epoch_losses"] for b in report["blocks"]] != [b["epoch_losses"] for b in report_off["blocks"]]


@pytest.mark.parametrize("native_bf16", [False, True, None])
def test_bf16_amp_warns_where_the_cpu_emulates_bfloat16(llama, calib, monkeypatch, native_bf16):
    """amp='bf16' on a CPU without AVX512-BF16/AMX warns once per run, naming the fix; a CPU with
    them, or one torch says nothing about, runs quietly."""
    from floatlab.ptq import reconstruct
    monkeypatch.setattr(reconstruct, "cpu_has_native_bf16", lambda: native_bf16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _run(llama, "int2_asym_g32", "lwc", calib, amp="bf16", epochs=1)
    ours = [w for w in seen if "emulates the bfloat16" in str(w.message)]
    assert len(ours) == (1 if native_bf16 is False else 0)
    if ours:
        assert "amp='off'" in str(ours[0].message) and ours[0].category is RuntimeWarning


def test_amp_is_recorded_in_the_config_and_bad_values_are_refused():
    cfg = PTQConfig(weight="int2_asym_g64", method="lwc", recon=ReconOptions(amp="bf16"))
    d = cfg.to_dict()
    assert d["recon"]["amp"] == "bf16"
    assert PTQConfig.from_dict(d).recon.amp == "bf16"
    old = dict(d, recon={k: v for k, v in d["recon"].items() if k != "amp"})     # results written before
    assert PTQConfig.from_dict(old).recon.amp == "off"
    for bad in ("fp16", "BF16", True, None):
        with pytest.raises(ValueError, match=r"ReconOptions\.amp must be one of 'off', 'bf16'"):
            ReconOptions(amp=bad)
