"""Any model a researcher brings (issue 17, part 0): tiny randomly initialized GPT-2, OPT,
DistilBERT, Gemma, Gemma 3 (text), Qwen2, Qwen2-MoE and Llama models, saved with
save_pretrained beside a tokenizer trained in the test (tests/tinymodels.py), load, expose every
GEMM weight as an nn.Linear (GPT-2's Conv1D exactly, fused MoE experts split per expert), and
quantize with every method that needs only linear layers. Rotation folds norms per
architecture (Gemma's 1 + weight included) and otherwise rotates online; perplexity follows
the tokenizer's BOS convention."""

import copy
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")

import tinymodels as tm  # noqa: E402
from floatlab.eval import metrics  # noqa: E402
from floatlab.models import ModelError, linear_layers, linearize, load_model, resolve_model  # noqa: E402
from floatlab.ptq import PTQConfig, QuantLinear, quantize_model  # noqa: E402
from floatlab.ptq.rotation import rotate_model, rotation_mode  # noqa: E402

# linear layers per block: attention + MLP (GPT-2: c_attn, c_proj, c_fc, c_proj; Qwen2-MoE: 4 experts x 3
# + the shared expert's 3, the routers stay fp32)
LINEARS = {"gpt2": 8, "opt": 12, "distilbert": 12, "gemma3_text": 14, "gemma": 14, "qwen2": 14, "qwen2_moe": 38,
           "llama": 14}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: tm.build(a, root / a) for a in tm.ARCHS}


def _inputs(kind, n=2, seq=12, seed=1):
    ids = torch.randint(7, tm.VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _out(model, kind, batch):
    with torch.no_grad():
        o = model(**batch)
    return o.logits if kind == "causal_lm" else o.last_hidden_state


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_every_architecture_loads_with_every_gemm_as_a_linear(folders, arch):
    lm = load_model(folders[arch])
    assert lm.kind == tm.kind(arch) and lm.model_type == arch
    layers = linear_layers(lm.model)
    assert len(layers) == LINEARS[arch], list(layers)
    assert all(isinstance(m, torch.nn.Linear) for m in layers.values())
    assert not any(n.endswith((".gate", "shared_expert_gate")) for n in layers)     # routers stay fp32
    assert not any("lm_head" in n for n in layers)
    assert torch.isfinite(_out(lm.model, lm.kind, _inputs(lm.kind))).all()


def test_gpt2_conv1d_becomes_an_equal_linear():
    ref = tm.model("gpt2")
    lin = copy.deepcopy(ref)
    done = linearize(lin)
    assert done["transformer.h.0.attn.c_attn"] == "Conv1D" and len(done) == 8
    for name, kind in done.items():
        conv, new = ref.get_submodule(name), lin.get_submodule(name)
        assert isinstance(new, torch.nn.Linear)
        assert torch.equal(new.weight, conv.weight.T) and torch.equal(new.bias, conv.bias)
    batch = _inputs("causal_lm")
    assert torch.equal(_out(ref, "causal_lm", batch), _out(lin, "causal_lm", batch))     # bit for bit
    assert linearize(lin) == {}                                                           # idempotent


def test_fused_experts_are_split_into_per_expert_linears():
    ref = tm.model("qwen2_moe")
    split = copy.deepcopy(ref)
    done = linearize(split)
    assert done == {f"model.layers.{i}.mlp.experts": "Qwen2MoeExperts" for i in range(2)}
    fused = ref.model.layers[0].mlp.experts
    for e in range(4):
        ex = split.model.layers[0].mlp.experts[e]
        assert torch.equal(ex.gate_proj.weight, fused.gate_up_proj[e, :32])
        assert torch.equal(ex.up_proj.weight, fused.gate_up_proj[e, 32:])
        assert torch.equal(ex.down_proj.weight, fused.down_proj[e])
    batch = _inputs("causal_lm")
    a, b = _out(ref, "causal_lm", batch), _out(split, "causal_lm", batch)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def test_unsplittable_experts_layout_is_refused():
    m = tm.model("qwen2_moe")
    m.model.layers[1].mlp.experts.is_transposed = True
    with pytest.raises(ModelError, match=r"model.layers.1.mlp.experts.*Qwen2MoeExperts.*is_transposed=True"):
        linearize(m)


def test_unconverted_model_is_refused_by_linear_layers():
    with pytest.raises(ValueError, match=r"Conv1D.*floatlab.models.linearize\(model\)"):
        linear_layers(tm.model("gpt2"))


# once every GEMM is an nn.Linear the methods are architecture-agnostic: RTN on every
# architecture, the calibrating ones on the structurally different kinds (Conv1D, encoder,
# Gemma 3's sandwich norms, routed experts)
CASES = [(a, "rtn") for a in tm.ARCHS] + [(a, m) for a in ("gpt2", "distilbert", "gemma3_text", "qwen2_moe")
                                          for m in ("gptq", "awq")]


@pytest.mark.parametrize("arch,method", CASES)
def test_linear_only_methods_quantize_every_architecture(folders, arch, method):
    lm = load_model(folders[arch])
    names = list(linear_layers(lm.model))
    batch = _inputs(lm.kind)
    ref = _out(lm.model, lm.kind, batch)
    calib = [_inputs(lm.kind, 4, 16, seed=5)]
    quantize_model(lm.model, PTQConfig(weight="int8", act="int8", method=method, awq_grid=2), calib=calib)
    assert all(isinstance(lm.model.get_submodule(n), QuantLinear) for n in names)
    out = _out(lm.model, lm.kind, batch)
    rel = float((out - ref).norm() / ref.norm())
    assert torch.isfinite(out).all() and 0 < rel < 0.1, rel


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_rotation_keeps_the_fp32_function(folders, arch):
    from floatlab.ptq.rotation import attach_transforms

    lm = load_model(folders[arch])
    expect = "residual" if arch in ("llama", "qwen2", "gemma") else "online"
    assert rotation_mode(lm.model) == expect
    batch = _inputs(lm.kind)
    ref = _out(lm.model, lm.kind, batch)
    model = copy.deepcopy(lm.model)
    online = rotate_model(model)
    attach_transforms(model, online)
    if expect == "residual":      # only down_proj and o_proj rotate online; the norms were folded
        assert sorted({n.rsplit(".", 1)[1] for n in online}) == ["down_proj", "o_proj"]
        assert lm.model.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    else:
        assert len(online) == LINEARS[arch]
    out = _out(model, lm.kind, batch)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max()), float((out - ref).abs().max())


def test_gemma_norms_fold_with_one_plus_weight(folders):
    lm = load_model(folders["gemma"])
    model = copy.deepcopy(lm.model)
    rotate_model(model)
    for blk in model.model.layers:          # (1 + w) folded: w = 0 leaves a unit gain
        assert torch.equal(blk.input_layernorm.weight, torch.zeros(64))
    assert torch.equal(model.model.norm.weight, torch.zeros(64))


def test_rotation_refuses_a_layout_it_cannot_fold(folders):
    lm = load_model(folders["llama"])
    lm.model.model.layers[1].mlp = torch.nn.Identity()
    w = lm.model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(ValueError, match=r"rotation of 'llama' models .* block 1's MLP is not gate_proj"):
        rotate_model(lm.model)
    assert torch.equal(lm.model.model.layers[0].self_attn.q_proj.weight, w)          # nothing changed


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "qwen2"])
def test_perplexity_follows_the_tokenizers_bos_convention(folders, arch):
    lm = load_model(folders[arch])
    bos = metrics.adds_bos(lm.tokenizer)
    assert bos == tm.adds_bos(arch)
    text = " ".join(tm.LINES)
    plain = metrics.token_windows(lm.tokenizer, text, 8, 3, bos=False)
    wins = metrics.token_windows(lm.tokenizer, text, 8, 3)
    assert wins.shape == ((3, 9) if bos else (3, 8))
    if bos:
        assert torch.equal(wins[:, 1:], plain) and (wins[:, 0] == lm.tokenizer.bos_token_id).all()
    # by hand: the same targets (tokens 1..7 of each window), predicted with the BOS in front
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=wins).logits.double(), -1)
    k = 1 if bos else 0
    nll = -logp[:, k:-1].gather(-1, wins[:, k + 1:, None]).mean()
    ppl = metrics.perplexity(lm.model, wins, bos=bos)
    assert math.isclose(ppl, math.exp(float(nll)), rel_tol=1e-5)
    if bos:
        assert ppl != metrics.perplexity(lm.model, plain)


def test_models_of_no_supported_kind_are_refused(tmp_path):
    def folder(name, cfg):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "model.safetensors").write_bytes(b"")
        return d
    with pytest.raises(ModelError, match=r"architecture 't5' .*not supported: it is an encoder-decoder model"):
        resolve_model(folder("t5", {"model_type": "t5"}))
    with pytest.raises(ModelError, match=r"'gemma3' .*multimodal model; save its text model alone"):
        resolve_model(folder("g3", {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                                    "text_config": {}, "vision_config": {}}))
    with pytest.raises(ModelError, match=r"'nosuchmodel' .*does not know this model_type"):
        resolve_model(folder("x", {"model_type": "nosuchmodel"}))
    assert resolve_model(folder("opt", {"model_type": "opt", "architectures": ["OPTForCausalLM"]}))[2] == "causal_lm"
    assert resolve_model(folder("db", {"model_type": "distilbert", "architectures": ["DistilBertForMaskedLM"]}))[2] \
        == "encoder"
