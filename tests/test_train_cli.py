"""`floatlab train` through its real entry points: runs are resumed only with their own settings,
recipe files work, every bad input is refused before any work with one `error:` line, summaries
carry the environment, progress shows in logs, the plot names what was trained."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from floatlab.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def train(*args):
    return runner.invoke(app, ["train", "--preset", "smoke", *map(str, args)])


def curves(out):
    with open(out / "curves.csv") as f:
        return [(r["recipe"], r["seed"], r["step"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)]


def summary(out):
    return json.loads((out / "summary.json").read_text())


def ckpt_bytes(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted((out / "runs").rglob("checkpoint.pt"))}


def refused(res, *words):
    """Exit code 2, one `error:` line naming ``words``, no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


# ---- item 1: stale results -------------------------------------------------------------------
def test_longer_steps_extend_a_finished_run_exactly(tmp_path):
    """3 warm-up steps, then --steps 8 in the same folder: the 8-step result equals a fresh
    8-step run bit for bit (the first 3 steps have the same learning rate in both), and the
    table title and summary say 8 steps."""
    d, fresh = tmp_path / "d", tmp_path / "fresh"
    assert train("-r", "hif8", "--steps", 3, "--out", d).exit_code == 0
    three = curves(d)
    assert len(three) == 2 * 3
    res = train("-r", "hif8", "--steps", 8, "--out", d)
    assert res.exit_code == 0, res.output
    assert "2 extended" in res.output and "after 8 steps" in res.output
    assert train("-r", "hif8", "--steps", 8, "--out", fresh).exit_code == 0
    assert curves(d) == curves(fresh)              # not the stale 3-step losses
    assert [r[:4] for r in curves(d)[:3]] == [r[:4] for r in three[:3]]   # steps 1-3 continued
    assert three[2][4] != "" and curves(d)[2][4] == ""     # an 8-step run evaluates at step 8 only
    for name in ("bf16", "hif8"):
        a, b = summary(d)["recipes"][name], summary(fresh)["recipes"][name]
        assert a["final_loss_per_seed"] == b["final_loss_per_seed"]
        assert a["relative_to_bf16"] == b["relative_to_bf16"]
    assert summary(d)["preset"]["steps"] == 8


def test_other_settings_are_refused_before_any_work(tmp_path):
    d = tmp_path / "d"
    assert train("-r", "bf16", "--steps", 5, "--out", d).exit_code == 0
    before, table = ckpt_bytes(d), (d / "summary.json").read_text()
    line = refused(train("-r", "bf16", "--steps", 5, "--out", d, "--master-weights", "bf16"),
                   "--out", "master_weights: None in the checkpoint, 'bf16' now", "--fresh")
    assert "runs/bf16/seed0" in line
    refused(runner.invoke(app, ["train", "--preset", "small", "-r", "bf16", "--steps", "5", "--out", str(d)]),
            "preset.model.d_model: 32 in the checkpoint, 64 now")
    refused(train("-r", "bf16", "--steps", 8, "--out", d),          # cosine decay from step 5 on differs
            "steps: 5 in the checkpoint, 8 now", "differs from step 5")
    refused(train("-r", "bf16", "--steps", 3, "--out", d), "already at step 5")
    other = tmp_path / "other.txt"
    other.write_text("a different corpus, long enough for a context of 32 bytes. " * 20)
    refused(train("-r", "bf16", "--steps", 5, "--out", d, "--corpus", f"file:{other}"), "corpus: other text")
    assert ckpt_bytes(d) == before and (d / "summary.json").read_text() == table   # nothing touched
    res = train("-r", "bf16", "--steps", 5, "--out", d, "--master-weights", "bf16", "--fresh")
    assert res.exit_code == 0, res.output
    assert ckpt_bytes(d) != before
    again = train("-r", "bf16", "--steps", 5, "--out", d, "--master-weights", "BF16")   # same settings
    assert again.exit_code == 0 and "1 reused" in again.output
    assert summary(d)["master_weights"] == "bf16"


def test_checkpoint_without_configuration_is_refused(tmp_path):
    d = tmp_path / "d"
    assert train("-r", "bf16", "--steps", 2, "--out", d).exit_code == 0
    path = d / "runs" / "bf16" / "seed0" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]                                     # as written by floatlab before this check
    torch.save(state, path)
    refused(train("-r", "bf16", "--steps", 2, "--out", d), "older floatlab")


# ---- item 4: recipe files and names ------------------------------------------------------------
def test_recipe_file_trains_and_names_are_case_insensitive(tmp_path):
    pytest.importorskip("yaml")
    from floatlab.nn import get_recipe
    mine = get_recipe("mxfp8").replace(name="mine", keep_last=1, description="from a file")
    (tmp_path / "mine.yaml").write_text(mine.to_yaml())
    d = tmp_path / "d"
    res = train("-r", tmp_path / "mine.yaml", "-r", "HIF8", "--steps", 2, "--out", d)
    assert res.exit_code == 0, res.output
    s = summary(d)
    assert list(s["recipes"]) == ["bf16", "mine", "hif8"]
    assert s["recipes"]["mine"]["recipe"] == mine.to_dict()
    assert s["recipes"]["mine"]["kept_in_float32"] == {"h.0.mlp.proj": "keep_last=1",
                                                       "lm_head": "keep pattern '*lm_head*'"}
    assert (d / "runs" / "mine" / "seed0" / "checkpoint.pt").exists()
    # the file changed under the same name: its runs are not reused
    (tmp_path / "mine.yaml").write_text(mine.replace(keep_last=0).to_yaml())
    refused(train("-r", tmp_path / "mine.yaml", "--steps", 2, "--out", d), "recipe.keep_last: 1 in the checkpoint, 0 now")


BAD_RECIPES = {
    "missing.yaml": (None, "does not exist"),
    "invalid.yaml": ("name: [\n", "not valid YAML (line 2"),
    "incomplete.yaml": ("name: mine\n", "missing recipe key default"),
    "empty.yaml": ("", "got nothing"),
    "format.yaml": ("name: m\ndefault:\n  fprop:\n    a: {format: e4m3x}\n", "default.fprop.a: unknown format 'e4m3x'"),
    "rounding.yaml": ("name: m\ndefault:\n  wgrad:\n    b: {format: e4m3, rounding: rnx}\n",
                      "default.wgrad.b: unknown rounding mode 'rnx'"),
    "key.yaml": ("name: m\ndefault: {fprop: {a: {fromat: e4m3}}}\n", "unknown key in default.fprop.a: fromat"),
    "keep.json": ('{"name": "m", "default": {}, "keep": "*head"}', "keep must be a list"),
    "hadamard.json": ('{"name": "m", "default": {"wgrad": {"hadamard": 12}}}', "hadamard must be 0"),
    "recipe.txt": ("name: m\n", "ends in .json, .yaml or .yml"),
}


@pytest.mark.parametrize("name", list(BAD_RECIPES))
def test_bad_recipe_file_is_refused_before_training(tmp_path, name):
    pytest.importorskip("yaml")
    text, words = BAD_RECIPES[name]
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    refused(train("-r", "hif8", "-r", path, "--steps", 2, "--out", tmp_path / "d"), "--recipe", words)
    assert not (tmp_path / "d").exists()          # refused before the bf16 baseline trained


def test_unknown_recipe_suggests_names():
    refused(train("-r", "hif88", "--out", "unused"), "--recipe", "unknown recipe 'hif88'", "Did you mean: hif8")


# ---- item 5: every input checked before any work ----------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], ["--steps", ">= 1, got 0"]),
    (["--steps", "-3"], ["--steps", "got -3"]),
    (["--seeds", "0"], ["--seeds", ">= 1, got 0"]),
    (["--threads", "-1"], ["--threads"]),
    (["--preset", "smal"], ["--preset", "Did you mean 'small'"]),
    (["--device", "gpu"], ["--device", "unknown device 'gpu'"]),
    (["--device", "tpu:0"], ["--device"]),
    (["--corpus", "wiki"], ["--corpus", "unknown corpus 'wiki'"]),
    (["--corpus", "file:/nonexistent/text.txt"], ["--corpus", "does not exist"]),
    (["--master-weights", "bf17"], ["--master-weights", "Did you mean: bf16"]),
    (["--master-weights", "nvfp4"], ["--master-weights", "block format"]),
])
def test_bad_inputs_one_error_line_no_work(tmp_path, args, words):
    refused(runner.invoke(app, ["train", *args, "--out", str(tmp_path / "d")]), *words)
    assert not (tmp_path / "d" / "runs").exists()


def test_cuda_requested_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(train("--device", "cuda", "--out", tmp_path / "d"), "--device", "not available here")


def test_output_folder_problems(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    refused(train("--out", f), "--out", "is a file")
    refused(train("--out", f / "sub"), "--out", "cannot write into")
    refused(train("--out", "/proc/floatlab-cannot-be-here"), "--out", "cannot write into")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    refused(train("--corpus", f"file:{short}", "--out", tmp_path / "d"), "--corpus", "too short")


def test_python_m_floatlab_train_refuses_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "floatlab.train", "--steps", "0", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "error: --steps: must be >= 1, got 0"
    assert not (tmp_path / "d").exists()


# ---- items 9, 10 and progress ------------------------------------------------------------------
def test_summary_environment_progress_lines_and_plot(tmp_path):
    d = tmp_path / "d"
    res = train("-r", "mxfp8", "--steps", 4, "--out", d)
    assert res.exit_code == 0, res.output
    env = summary(d)["environment"]
    assert env["versions"]["torch"] == torch.__version__ and "floatlab" in env["versions"]
    assert env["cpu_count"] == os.cpu_count() and "time_utc" in env
    # the machine's generation and torch's kernel ISA: what makes float32 bits differ across machines
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "cpu_id" in env
    # not a terminal: plain progress lines (a run's end at least)
    for name in ("bf16", "mxfp8"):
        assert f"{name} seed 0: 4/4 steps" in res.output
    assert "mxfp8: 4 of 5 linear layers quantized; float32: lm_head" in res.output
    ckpt = torch.load(d / "runs" / "mxfp8" / "seed0" / "checkpoint.pt", weights_only=True)
    assert ckpt["environment"]["versions"]["torch"] == torch.__version__
    assert (d / "loss.png").stat().st_size > 10_000


def test_plot_names_the_model_and_shows_bf16_on_top():
    from floatlab.train.experiment import figure
    from floatlab.train.loop import RunResult

    results = {name: [RunResult(name, 0, [3.0 - 0.1 * i - k * 0.01 for i in range(10)], {10: 2.0 + k}, [0.1] * 10)]
               for k, name in enumerate(["bf16", "hif8", "mxfp4"])}
    s = {"seeds": [0], "preset": {"name": "small", "steps": 10, "batch_size": 16},
         "model": {"n_layer": 2, "d_model": 64, "block_size": 64},
         "bf16_seed_spread": {"relative": 0.0},
         "recipes": {n: {"relative_to_bf16": 0.01 * k, "relative_to_bf16_std": 0.0} for k, n in enumerate(results)}}
    fig = figure(results, s)
    ax = fig.axes[0]
    assert ax.get_title() == "GPT (small preset: 2 layers, d=64, context 64, batch 16), byte-level, 10 steps"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    base = lines["bf16 (baseline)"]
    assert base.get_color() == "black" and base.get_linestyle() == "--"
    assert base.get_zorder() > max(ln.get_zorder() for k, ln in lines.items() if k != "bf16 (baseline)")
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "bf16 (baseline)"
    colours = {ln.get_color() for k, ln in lines.items()}
    assert len(colours) == 3
