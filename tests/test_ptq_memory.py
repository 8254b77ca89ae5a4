"""Memory-lean paths of PTQ and evaluation (issue 17) give the same numbers as the plain ones:
perplexity's per-window log-softmax, layers swapped as soon as they are quantized, GPTQ's
Hessians dropped per layer, ``quantize_model(keep=False)``; and the fp32 layers do go."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

import tinymodels
from floatlab.eval import metrics
from floatlab.models.loading import linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.gptq import collect_hessians, gptq_model
from floatlab.ptq.quantizer import QuantSpec


@pytest.mark.parametrize("b,length,vocab,skip", [(4, 33, 1000, 0), (3, 17, 4099, 1), (1, 5, 7, 0)])
def test_nll_sum_is_cross_entropy_bit_for_bit(b, length, vocab, skip):
    g = torch.Generator().manual_seed(b * length + vocab)
    logits = torch.randn(b, length, vocab, generator=g) * 8
    tgt = torch.randint(0, vocab, (b, length), generator=g)[:, skip + 1:]
    ref = torch.nn.functional.cross_entropy(logits[:, skip:-1].reshape(-1, vocab), tgt.reshape(-1), reduction="sum")
    assert float(metrics._nll_sum(logits, tgt, skip)).hex() == float(ref).hex()


def _calib(n=2):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(4, tinymodels.VOCAB, (2, 24), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("method,fmt", [("rtn", "mxfp4"), ("gptq", "int4"), ("gptq", "e4m3")])
def test_streamed_swap_equals_quantizing_all_first(method, fmt):
    """Each layer swapped as it is done (and GPTQ's own Hessians dropped) gives the weights that
    quantizing every layer first gives; ``keep=False`` returns nothing and the same model."""
    model = tinymodels.model("llama")
    spec = QuantSpec(fmt)
    cfg = PTQConfig(weight=spec, act=spec, method=method)
    calib = _calib()
    ref_model = copy.deepcopy(model)
    layers = linear_layers(ref_model)
    if method == "gptq":                 # every layer's own Hessian, all quantized before any swap
        H = collect_hessians(ref_model, layers, calib)
        ref = gptq_model(ref_model, layers, calib, cfg, hessians=H,
                         generator=torch.Generator().manual_seed(cfg.recon.seed))
    else:
        from floatlab.ptq.weights import rtn_weight
        ref = {n: rtn_weight(l.weight, spec, None, None) for n, l in layers.items()}
    want = {n: q.dequantize() for n, q in ref.items()}
    kept, lean = copy.deepcopy(model), copy.deepcopy(model)
    qweights = quantize_model(kept, cfg, calib=calib)
    assert quantize_model(lean, cfg, calib=calib, keep=False) == {}
    assert set(qweights) == set(want)
    for name in want:
        for m in (kept, lean):
            assert torch.equal(m.get_submodule(name).weight, want[name]), name
        assert torch.equal(qweights[name].dequantize(), want[name])
        assert qweights[name].values is None          # compacted: codes, not float32 grid values
        got, exp = qweights[name].tensors(name), ref[name].tensors(name)      # what ptq saves
        assert set(got) == set(exp)
        for k in exp:
            a, b = got[k], exp[k]
            if isinstance(b, torch.Tensor):
                assert torch.equal(a, b), k
            else:
                assert a.format == b.format and torch.equal(a.dequantize(torch.float32), b.dequantize(torch.float32)), k
                assert torch.equal(a.codes, b.codes), k
    ids = calib[0]["input_ids"]
    assert torch.equal(kept(input_ids=ids).logits, lean(input_ids=ids).logits)


def test_fp32_layers_are_released_as_gptq_goes():
    """Nothing in quantize_model keeps a swapped fp32 layer alive while GPTQ works on the next
    ones (``floatlab ptq`` then holds the fp32 and the quantized weight of few layers at once)."""
    model = tinymodels.model("llama")
    refs = [weakref.ref(lin.weight) for lin in linear_layers(model).values()]
    dead = []

    def progress(name):
        gc.collect()
        dead.append(sum(r() is None for r in refs))
    quantize_model(model, PTQConfig(weight=QuantSpec("int4"), method="gptq"), calib=_calib(), keep=False,
                   progress=progress)
    assert len(dead) == len(refs) > 1
    # after the k-th layer, all but the last two (the loop's own variables hold them) are gone
    assert all(d >= k - 1 for k, d in enumerate(dead)), dead


# ---- GPTQ's Hessians one block at a time; compare's fp32 weights read back; SQNR per layer ----

CAUSAL = [a for a in tinymodels.ARCHS if tinymodels.kind(a) == "causal_lm"]


def _linearized(arch):
    from floatlab.models.linearize import linearize

    m = tinymodels.model(arch)
    linearize(m)
    return m


@pytest.mark.parametrize("arch", CAUSAL)
def test_block_hessians_equal_the_whole_model_pass(arch):
    """BlockHessians (one block at a time, on the captured stream of hidden states) gives every
    layer the Hessian of one pass over the whole model, bit for bit: every architecture of the
    tiny models, mixture-of-experts experts and Gemma-3's sliding/full attention layers included."""
    from floatlab.ptq.gptq import _own_hessians
    from floatlab.ptq.hessians import BlockHessians

    model = _linearized(arch)
    layers = linear_layers(model)
    calib = _calib(3)
    ref = collect_hessians(model, layers, calib)
    got = BlockHessians.build(model, layers, calib, _own_hessians)
    assert got is not None
    for name in layers:                      # in model order, as GPTQ asks
        assert torch.equal(got[name], ref[name]), name
        del got[name]


def test_block_hessians_step_aside_where_they_cannot_apply():
    """Padded calibration batches (the model-level mask picks the rows) and layers outside the
    transformer blocks go to the whole-model pass (``build`` returns None)."""
    from floatlab.ptq.gptq import _own_hessians
    from floatlab.ptq.hessians import BlockHessians

    model = _linearized("llama")
    layers = linear_layers(model)
    calib = _calib()
    masked = [dict(b, attention_mask=torch.ones_like(b["input_ids"])) for b in calib]
    assert BlockHessians.build(model, layers, masked, _own_hessians) is None
    assert BlockHessians.build(model, {"lm_head": model.lm_head}, calib, _own_hessians) is None
    assert BlockHessians.build(model, layers, [], _own_hessians) is None


def test_gptq_quantizes_each_block_after_its_hessians_are_taken():
    """gptq_model swapping each layer as it goes (quantize_model) gets the Hessians of the fp32
    model for every block (the stream is captured before a block's layers are quantized): the
    same weights as GPTQ on Hessians collected over the whole fp32 model first."""
    model = _linearized("qwen2_moe")
    spec = QuantSpec("int4")
    cfg = PTQConfig(weight=spec, act=spec, method="gptq")
    calib = _calib()
    ref_model = copy.deepcopy(model)
    layers = linear_layers(ref_model)
    H = collect_hessians(ref_model, layers, calib)
    want = gptq_model(ref_model, layers, calib, cfg, hessians=H, generator=torch.Generator().manual_seed(cfg.recon.seed))
    quantize_model(model, cfg, calib=calib, keep=False)
    for name, qw in want.items():
        assert torch.equal(model.get_submodule(name).weight, qw.dequantize()), name


@pytest.mark.parametrize("arch,masked", [("llama", True), ("qwen2_moe", False)])
def test_layer_sqnr_scored_as_layers_run_equals_the_collected_outputs(arch, masked):
    """layer_sqnr scores each layer inside its hook (no dict of every quantized output): the same
    numbers as collecting every output first, with a mask, and NaN for a layer that did not run."""
    model = _linearized(arch)
    names = list(linear_layers(model))
    ids = _calib(1)[0]
    ref = metrics.layer_outputs(model, names, ids)
    ref["never.runs"] = torch.zeros(1)
    q = copy.deepcopy(model)
    quantize_model(q, PTQConfig(weight=QuantSpec("int4"), act=QuantSpec("e4m3"), method="rtn"), keep=False)
    q.never = torch.nn.Module()
    q.never.runs = torch.nn.Identity()
    mask = torch.ones(ids["input_ids"].shape, dtype=torch.long)
    mask[0, -5:] = 0
    for m in (None, mask) if masked else (None,):
        test = metrics.layer_outputs(q, [n for n in ref if n != "never.runs"], ids)
        want = {}
        for name, r in ref.items():
            t = test.get(name)
            if t is None or t.shape != r.shape:
                want[name] = float("nan")
                continue
            if m is not None:
                r, t = r[m.bool()], t[m.bool()]
            want[name] = metrics.sqnr_db(r, t)
        spilled = metrics.layer_outputs(model, names, ids, spill=True)   # written to a file, read back
        spilled["never.runs"] = torch.zeros(1)
        assert list(spilled) == list(ref) and all(torch.equal(spilled[n], ref[n]) for n in ref)
        for r in (ref, spilled):
            got = metrics.layer_sqnr(r, q, ids, m)
            assert list(got) == list(want)
            assert [float(v).hex() for v in got.values()] == [float(v).hex() for v in want.values()]


@pytest.mark.parametrize("arch,copied", [("llama", False), ("llama", True), ("gpt2", True)])
def test_compare_reads_fp32_weights_back_from_the_checkpoint(arch, copied, tmp_path):
    """compare's in-place variants give up each fp32 weight once its quantized layer is in place
    and get it back from the checkpoint afterwards, bit for bit: weights in the checkpoint's
    memory mapping (how transformers loads a float32 file) have their pages dropped and paged in
    again; weights in the process's own memory (``copied``; GPT-2's transposed Conv1D weights)
    are freed while the variant lives and read back. A model whose weights differ from its
    checkpoint keeps its layers instead."""
    from floatlab.models.loading import load_model
    from floatlab.ptq.compare import CheckpointWeights, quantized_variant

    lm = load_model(tinymodels.build(arch, tmp_path / arch), log=lambda *a: None)
    layers = linear_layers(lm.model)
    if copied:
        for lin in layers.values():
            lin.weight = torch.nn.Parameter(lin.weight.detach().clone())
    before = {n: (l.weight.detach().clone(), l.weight.stride(), l.weight.requires_grad) for n, l in layers.items()}
    fp32 = CheckpointWeights.check(lm, layers)
    assert fp32 is not None
    assert fp32.mapped == (set() if copied else set(layers))
    refs = [weakref.ref(l.weight) for l in layers.values()]
    for method in ("rtn", "gptq"):
        cfg = PTQConfig(weight=QuantSpec("int4"), method=method)
        with quantized_variant(lm.model, cfg, _calib(), fp32=fp32) as model:
            gc.collect()
            assert all((r() is None) == copied for r in refs)
            assert all(type(m).__name__ == "QuantLinear" for n, m in model.named_modules() if n in layers)
        now = linear_layers(lm.model)
        assert set(now) == set(layers) and all(now[n] is layers[n] for n in layers)
        for n, lin in now.items():
            w, stride, rg = before[n]
            assert torch.equal(lin.weight, w) and lin.weight.stride() == stride and lin.weight.requires_grad == rg, n
            assert torch.equal(torch.signbit(lin.weight), torch.signbit(w)), n
        refs = [weakref.ref(l.weight) for l in layers.values()]
    lin = next(iter(layers.values()))
    lin.weight = torch.nn.Parameter(lin.weight.detach().clone())
    with torch.no_grad():
        lin.weight[0, 0] += 1
    assert CheckpointWeights.check(lm, layers) is None
