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
