"""Memory of compare/ptq without changing a bit (issue 17 part 4): quantized layers that keep
only their packed codes (``quantize_model(..., packed=True)``) and passes over the fp32 model that
hold one layer's checkpoint-mapped pages at a time (``CheckpointWeights.paged``), each checked bit
for bit against the plain path."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import tinymodels
from floatlab.models.loading import linear_layers
from floatlab.ptq.apply import quantize_model
from floatlab.ptq.config import PTQConfig
from floatlab.ptq.quantizer import QuantSpec
from floatlab.ptq.weights import QWeight


def _calib(n=2):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(4, tinymodels.VOCAB, (2, 24), generator=g)} for _ in range(n)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


FORMATS = ["bf16", "e4m3", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_layers_compute_what_dense_layers_compute(method, fmt):
    """Packed layers hold codes, no float32 weight, and give the dense model's logits bit for
    bit; the QWeights returned (what ``floatlab ptq`` saves) are the same records."""
    spec = QuantSpec(fmt)
    cfg = PTQConfig(weight=spec, act=None if method == "gptq" else spec, method=method)
    calib = _calib()
    model = tinymodels.model("llama")
    dense, packed = copy.deepcopy(model), copy.deepcopy(model)
    qd = quantize_model(dense, cfg, calib=calib)
    qp = quantize_model(packed, cfg, calib=calib, packed=True)
    assert set(qd) == set(qp) and qd
    for name in qd:
        m = packed.get_submodule(name)
        assert m.packed is qp[name] and "weight" not in m._parameters     # codes only
        assert qp[name].values is None and qp[name].wq is None
        assert torch.equal(_bits(m.weight), _bits(dense.get_submodule(name).weight)), name
        got, exp = qp[name].tensors(name), qd[name].tensors(name)
        assert set(got) == set(exp)
        for k, b in exp.items():
            a = got[k]
            if isinstance(b, torch.Tensor):
                assert torch.equal(a, b), k
            else:
                assert a.format == b.format and a.shape == b.shape and torch.equal(a.data, b.data), k
                assert set(a.scales) == set(b.scales) and all(torch.equal(a.scales[s], b.scales[s]) for s in b.scales)
    assert set(packed.state_dict()) == {k for k in dense.state_dict()
                                        if not (k.endswith(".weight") and k[:-len(".weight")] in qd)}
    ids = calib[0]["input_ids"]
    assert torch.equal(_bits(dense(input_ids=ids).logits), _bits(packed(input_ids=ids).logits))


def test_a_layer_whose_decode_differs_stays_dense(monkeypatch):
    """Packing is checked layer by layer: where the decoded codes are not the dense weight bit
    for bit (here: a decoder that moves one value of the non-square weights by one ulp), the
    layer keeps its float32 weight; the others pack; the logits are the dense model's."""
    cfg = PTQConfig(weight=QuantSpec("int4"), method="rtn")
    real = QWeight.decode

    def off(self):
        w = real(self)
        if w.shape[0] != w.shape[1]:
            w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
        return w
    monkeypatch.setattr(QWeight, "decode", off)
    model = tinymodels.model("llama")
    dense = copy.deepcopy(model)
    layers = linear_layers(dense)
    quantize_model(dense, cfg)
    quantize_model(model, cfg, packed=True)
    stayed = {n: model.get_submodule(n).packed is None for n in layers}
    want = {n: lin.weight.shape[0] != lin.weight.shape[1] for n, lin in layers.items()}
    assert any(want.values()) and not all(want.values())
    assert stayed == want
    monkeypatch.setattr(QWeight, "decode", real)
    ids = _calib()[0]["input_ids"]
    assert torch.equal(_bits(dense(input_ids=ids).logits), _bits(model(input_ids=ids).logits))


def _mapped_rss(files) -> int:
    """Resident bytes of this process's mappings of ``files`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    names = {str(f) for f in files}
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[-1] in names
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


def test_paged_passes_hold_one_layer_and_give_the_same_logits(tmp_path):
    """Inside ``CheckpointWeights.paged``, a forward pass leaves (almost) none of the checkpoint's
    mapped pages resident, and the logits are the same bits as without it."""
    from floatlab.models.loading import load_model
    from floatlab.ptq.compare import CheckpointWeights

    arch = "llama"
    lm = load_model(tinymodels.build(arch, tmp_path / arch), log=lambda *a: None)
    fp32 = CheckpointWeights.check(lm, linear_layers(lm.model))
    assert fp32 is not None and fp32.mapped
    files = {str(p.resolve()) for p in fp32.checkpoint.files.values()}
    ids = _calib()[0]["input_ids"]
    with torch.no_grad():
        want = lm.model(input_ids=ids).logits
        resident = _mapped_rss(files)
        with fp32.paged(lm.model):
            got = lm.model(input_ids=ids).logits
            paged = _mapped_rss(files)
        again = lm.model(input_ids=ids).logits           # hooks gone: pages come back and stay
    assert torch.equal(_bits(want), _bits(got)) and torch.equal(_bits(want), _bits(again))
    assert paged < resident / 4, (paged, resident)
    assert _mapped_rss(files) >= resident / 2
    # the NaN/Inf check before quantizing reads every parameter: each one's pages go after it
    from floatlab.ptq.calibration import check_parameters
    check_parameters(lm.model, each=fp32.drop)
    assert _mapped_rss(files) < resident / 4
    assert torch.equal(_bits(lm.model(input_ids=ids).logits), _bits(want))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_compare_rows_are_the_same_with_and_without_packing_and_paging(method, tmp_path, monkeypatch):
    """``run_compare`` end to end: every metric of every row (perplexity, each layer's SQNR) is
    the same float with packed layers and paged fp32 passes as with dense layers and resident
    weights."""
    from floatlab.models.loading import load_model
    from floatlab.ptq import apply, compare

    lm = load_model(tinymodels.build("llama", tmp_path / "llama"), log=lambda *a: None)
    opts = compare.CompareOptions(formats=("int4", "e4m3", "mxfp4"), method=method, weights_only=method == "gptq",
                                  calib=2, window=16, windows=2, sqnr_texts=2)

    def rows():
        res = compare.run_compare(lm, opts, log=lambda *a: None)
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in res["rows"]], \
            res["fp32"]["perplexity"]
    new = rows()
    real = apply.quantize_model
    monkeypatch.setattr(compare, "quantize_model", lambda *a, **k: real(*a, **{**k, "packed": False}))
    monkeypatch.setattr(compare.CheckpointWeights, "paged", lambda self, model: contextlib.nullcontext())
    old = rows()
    assert repr(new) == repr(old)
