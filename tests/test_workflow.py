"""A researcher's own model folder and own data through `floatlab compare` / `ptq` / `eval`
(issue 17, parts 1 and 5): text, JSON-lines, parquet and saved `datasets` data read offline and
recorded (path, size, SHA-256); bad data refused before any model loads; `eval` after the model
folder moved; `--nonfinite-tokens`; a 2-process torchrun compare equal to one process."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'floatlab[models]')")
datasets = pytest.importorskip("datasets", reason="own data needs datasets (pip install 'floatlab[models]')")

import tinymodels as tm  # noqa: E402
from floatlab.cli import app  # noqa: E402
from floatlab.eval.data import DataError, load_texts  # noqa: E402

runner = CliRunner()
TEXT = "\n\n".join(" ".join(tm.LINES[i:] + tm.LINES[:i]) for i in range(len(tm.LINES)))   # 12 paragraphs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("workflow")
    for a in ("llama", "gpt2", "distilbert"):
        tm.build(a, r / a)
    (r / "eval.txt").write_text(TEXT + "\n")
    (r / "calib.jsonl").write_text("".join(json.dumps({"content": p, "id": i}) + "\n"
                                           for i, p in enumerate(reversed(TEXT.split("\n\n")))))
    return r


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- reading data ---------------------------------------------------------------------------------
def test_every_kind_of_data_reads_the_same_texts(tmp_path):
    texts = ["first text\nwith two lines", "second text", "third"]
    (tmp_path / "a.txt").write_text("\n\n".join(texts) + "\n\n\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    ds = datasets.Dataset.from_dict({"body": texts, "n": [0, 1, 2]})
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    for path, field in (("a.txt", None), ("a.jsonl", "body"), ("a.parquet", "body"), ("saved", "body"),
                        ("dict", "body")):
        data = load_texts(tmp_path / path, field)
        assert data.texts == tuple(texts), path
        src = data.source
        assert src["path"] == str((tmp_path / path).resolve()) and src["texts"] == 3
        if (tmp_path / path).is_file():
            assert src["sha256"] == _sha(tmp_path / path) and src["bytes"] == (tmp_path / path).stat().st_size
    # a folder's hash covers its files: the same data saved twice hashes the same, other data not
    ds.save_to_disk(str(tmp_path / "again"))
    assert load_texts(tmp_path / "again", "body").sha256 == load_texts(tmp_path / "saved", "body").sha256
    datasets.Dataset.from_dict({"body": texts[:2], "n": [0, 1]}).save_to_disk(str(tmp_path / "other"))
    assert load_texts(tmp_path / "other", "body").sha256 != load_texts(tmp_path / "saved", "body").sha256


def test_bad_data_gets_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n \n\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x", "n": 1}) + "\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "a.csv").write_text("a,b\n")
    (tmp_path / "plain").mkdir()
    ds = datasets.Dataset.from_dict({"text": ["x"]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    cases = [(("nope.txt",), r"nope.txt does not exist"),
             (("empty.txt",), r"empty.txt is empty"),
             (("blank.txt",), r"holds no text \(1 row, all empty\)"),
             (("a.jsonl",), r"has no field 'text'; its fields: body, n; pass the one that holds the text"),
             (("a.jsonl", "n"), r"field 'n' holds int values, not text"),
             (("bad.jsonl", "body"), r"could not be read as JSON lines"),
             (("a.csv",), r"unknown data file type '.csv'"),
             (("plain",), r"is a folder but not a saved `datasets` folder"),
             (("dict",), r"DatasetDict with splits test, train; pass the folder of one split"),
             (("empty.txt", "body"), r"empty.txt is empty")]
    for args, match in cases:
        with pytest.raises(DataError, match=match):
            load_texts(tmp_path / args[0], *args[1:])


# ---- compare / ptq / eval with own data -------------------------------------------------------------
def test_compare_on_own_model_and_data_records_the_data(root, tmp_path):
    from floatlab.eval import metrics
    from floatlab.models import load_model

    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", "--model", str(root / "llama"), "--formats", "int8", "--method", "gptq",
                            "--eval-data", str(root / "eval.txt"), "--calib-data", str(root / "calib.jsonl"),
                            "--text-field", "content", "--window", "16", "--windows", "3", "--calib", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    ev, cal = res["data"]["evaluation"], res["data"]["calibration"]
    assert ev["path"] == str((root / "eval.txt").resolve()) and ev["sha256"] == _sha(root / "eval.txt")
    assert ev["kind"] == "text" and ev["texts"] == 12 and ev["bytes"] == (root / "eval.txt").stat().st_size
    assert cal["sha256"] == _sha(root / "calib.jsonl") and cal["text_field"] == "content" and cal["kind"] == "json"
    assert res["task"]["bos"] is True and res["task"]["windows"] == 3
    # the fp32 perplexity is the one of the file's windows, each after the tokenizer's BOS
    lm = load_model(root / "llama")
    wins = metrics.token_windows(lm.tokenizer, TEXT, 16, 3)
    assert wins.shape == (3, 17) and res["fp32"]["perplexity"] == metrics.perplexity(lm.model, wins, bos=True)
    report = (out / "report.md").read_text()
    assert f"evaluation: {ev['path']} (text, 12 texts" in report and "each after the BOS token" in report


def test_encoder_on_own_texts_ranks_by_cosine(root, tmp_path):
    out = tmp_path / "enc"
    r = runner.invoke(app, ["compare", "--model", str(root / "distilbert"), "--formats", "bf16,int4",
                            "--eval-data", str(root / "eval.txt"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["texts"] == 12 and res["task"]["pairs"] == 0 and "retrieval" not in res["fp32"]
    assert [row["format"] for row in res["rows"]] == ["bf16", "int4"]
    assert res["rows"][0]["cos_mean"] > res["rows"][1]["cos_mean"] and "recall_at_1" not in res["rows"][0]


@pytest.mark.parametrize("flag,path,text_field,match", [
    ("--eval-data", "missing.txt", None, "missing.txt does not exist"),
    ("--eval-data", "empty.txt", None, "empty.txt is empty"),
    ("--calib-data", "calib.jsonl", None, "has no field 'text'; its fields: content, id"),
])
def test_bad_data_is_refused_before_the_model_loads(root, tmp_path, monkeypatch, flag, path, text_field, match):
    from floatlab.cli import inputs

    (root / "empty.txt").write_text("")
    monkeypatch.setattr(inputs, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    for cmd in (["compare", "--method", "gptq"], ["ptq", "--method", "gptq", "--format", "int8"]):
        r = runner.invoke(app, [*cmd, "--model", str(root / "gpt2"), flag, str(root / path),
                                "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
        assert f"error: {flag}: " in r.output and match in r.output
        assert not (tmp_path / "o" / "config.json").exists()


def test_eval_after_the_model_folder_moved(root, tmp_path):
    src = tmp_path / "mine"
    shutil.copytree(root / "gpt2", src)
    shutil.copy(root / "eval.txt", tmp_path / "eval.txt")
    out = tmp_path / "q"
    r = runner.invoke(app, ["ptq", "--model", str(src), "--format", "int8", "--act-format", "int8",
                            "--method", "gptq", "--calib", "2", "--window", "16", "--windows", "2",
                            "--eval-data", str(tmp_path / "eval.txt"), "--nonfinite-tokens", "EXCLUDE",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["ptq"]["nonfinite_tokens"] == "exclude"
    assert saved["data"]["evaluation"]["sha256"] == _sha(tmp_path / "eval.txt")
    assert saved["data"]["calibration"]["kind"] == "builtin"
    moved = tmp_path / "elsewhere"
    src.rename(moved)
    r = runner.invoke(app, ["eval", str(out)])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert f"needs its source model {src}" in r.output and "--model PATH" in r.output
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved)])
    assert r.exit_code == 0 and "reproduced exactly" in r.output, r.output
    r = runner.invoke(app, ["eval", str(out), "--model", str(root / "llama")])
    assert r.exit_code == 2 and "is not the model this result was made from" in r.output, r.output
    # the evaluation data moved too: named, and found again with --eval-data
    (tmp_path / "eval.txt").rename(tmp_path / "eval2.txt")
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved)])
    assert r.exit_code == 2 and "--eval-data PATH" in r.output, r.output
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved), "--eval-data", str(tmp_path / "eval2.txt")])
    assert r.exit_code == 0 and "reproduced exactly" in r.output, r.output
    (tmp_path / "eval2.txt").write_text("other text " * 100)
    r = runner.invoke(app, ["eval", str(out), "--model", str(moved), "--eval-data", str(tmp_path / "eval2.txt")])
    assert r.exit_code == 2 and "is not the data the result was measured on" in r.output, r.output


def test_bad_flags_are_refused(root, tmp_path):
    r = runner.invoke(app, ["ptq", "--model", str(root / "gpt2"), "--nonfinite-tokens", "exlude",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--nonfinite-tokens: unknown value 'exlude'; did you mean 'exclude'?" in r.output
    r = runner.invoke(app, ["compare", "--model", str(root / "gpt2"), "--method", "rtn,gptq,rtn",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--method: 'rtn' is given twice" in r.output, r.output
    r = runner.invoke(app, ["compare", "--model", str(root / "gpt2"), "--device", "tpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--device: " in r.output, r.output


# ---- many processes ---------------------------------------------------------------------------------
def _strip(res: dict) -> dict:
    """A results dict without what legitimately differs between runs (times, command, environment)."""
    out = {k: v for k, v in res.items() if k not in ("environment", "command", "processes") and "seconds" not in k}
    out["fp32"] = {k: v for k, v in res["fp32"].items() if k != "seconds"}
    out["rows"] = [{k: v for k, v in row.items() if "seconds" not in k} for row in res["rows"]]
    return out


def test_two_process_torchrun_compare_equals_one_process(root, tmp_path):
    args = ["compare", "--model", str(root / "gpt2"), "--formats", "bf16,int8", "--method", "rtn,gptq",
            "--calib", "2", "--window", "16", "--windows", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "floatlab.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--module", "floatlab.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    assert [(r["method"], r["format"]) for r in b["rows"]] == [("rtn", "bf16"), ("rtn", "int8"), ("gptq", "bf16"),
                                                             ("gptq", "int8")]
    assert _strip(a) == _strip(b)
    assert (tmp_path / "two" / "report.md").is_file() and "2 processes" in (tmp_path / "two" / "report.md").read_text()
    assert two.stdout.count("wrote ") == 1          # rank 0 alone prints and writes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compare_on_cuda_equals_its_own_rerun(root, tmp_path):
    args = ["compare", "--model", str(root / "llama"), "--formats", "int8,mxfp4", "--method", "rtn,gptq",
            "--calib", "2", "--window", "16", "--windows", "2", "--device", "cuda"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["device"].startswith("cuda") and all(row["perplexity"] > 0 for row in res["rows"])
