"""Image tasks of floatlab train: the idx reader, missing data, resumable runs with identical
losses (binary stochastic learning's rules too; the rule itself: test_nn_bsl.py), the CLI's
outputs and refusals."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import floatlab.train.images as images
from floatlab.train.image_run import get_image_preset, load_data, train_image_run

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", get_image_preset("smoke"))


def _idx(path, arr: np.ndarray, code=0x08):
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_idx_reader_reads_and_refuses(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _idx(tmp_path / "x.gz", a)
    assert np.array_equal(images.read_idx(tmp_path / "x.gz"), a)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")            # says 5 values, holds 3
    with pytest.raises(ValueError, match="bad.gz: 3 data bytes, but its header says"):
        images.read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "nope.gz", "wb") as f:
        f.write(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        images.read_idx(tmp_path / "nope.gz")


def test_fashion_mnist_files_from_a_folder_and_missing_files_say_how(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "candidate_dirs", lambda: [tmp_path])
    with pytest.raises(images.DataMissing, match="apt-get install dataset-fashion-mnist.*floatlab data --prepare fashion-mnist"):
        images.load_fashion_mnist()
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        imgs, labels = images.FILES[split]
        _idx(tmp_path / imgs, rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / labels, np.arange(n) % 10)
    d = images.load_fashion_mnist()
    assert d.train_x.shape == (6, 1, 28, 28) and d.test_y.tolist() == [0, 1, 2, 3]
    assert float(d.train_x.max()) <= 1.0 and d.source.startswith("fashion-mnist:")
    runner = CliRunner()
    from floatlab.cli import app
    monkeypatch.setattr(images, "candidate_dirs", lambda: [tmp_path / "empty"])
    r = runner.invoke(app, ["train", "--task", "fashion-mnist", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "error: --task:" in r.output and "apt-get install dataset-fashion-mnist" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("recipe,rule,model", [("sr_grads", "backprop", "cnn"), ("fp32", "bsl", "mlp"),
                                                  ("fp32", "sign", "mlp")])
def test_resume_gives_identical_losses(tmp_path, digits, monkeypatch, recipe, rule, model):
    monkeypatch.setenv("FLOATLAB_FAST", "0")          # the plain path: no kernel compilation in a test
    from floatlab.nn import GemmSpec, LinearSpec, Recipe, TensorSpec
    if recipe == "sr_grads":
        g = TensorSpec("bf16", "sr")
        x = TensorSpec("int4", scaling="current")
        recipe = Recipe("sr_grads", LinearSpec(GemmSpec(x, TensorSpec("ternary")), GemmSpec(g, TensorSpec("ternary")),
                                               GemmSpec(g, x)), keep=())
    p = get_image_preset("smoke").with_steps(24)
    full = train_image_run(recipe, 1, p, model, tmp_path / "a", digits, rule=rule)
    train_image_run(recipe, 1, p, model, tmp_path / "b", digits, rule=rule, stop_after=20)  # checkpoint at 20
    resumed = train_image_run(recipe, 1, p, model, tmp_path / "b", digits, rule=rule)
    assert resumed.train_loss == full.train_loss and resumed.test_accuracy == full.test_accuracy
    from floatlab.train.checkpoint import ConfigMismatch
    with pytest.raises(ConfigMismatch, match="seed: 1 in the checkpoint, 2 now"):
        train_image_run(recipe, 2, p, model, tmp_path / "b", digits, rule=rule)


def test_cli_writes_summary_curves_plot_and_refuses_bad_input(tmp_path):
    from floatlab.cli import app
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--task", "digits", "--preset", "smoke", "--steps", "6", "--recipe",
                            "bf16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert set(s["recipes"]) == {"fp32", "bf16"} and s["reference"] == "fp32"
    assert "torch" in json.dumps(s["environment"]) and s["task"] == "digits"
    assert (out / "curves.csv").read_text().startswith("recipe,seed,step") and (out / "accuracy.png").stat().st_size > 0
    (tmp_path / "r.json").write_text(json.dumps({"name": "typo", "default": {"fprop": {"a": {"format": "bf16"}}},
                                                 "rules": [{"pattern": "conv9", "linear": {}}], "keep": []}))
    bad = [(["--recipe", str(tmp_path / "r.json")], "--recipe", "'conv9' match no layer of the cnn model"),
           (["--rule", "bsl"], "--rule", "add --model mlp"),
           (["--model", "resnet"], "--model", "unknown value 'resnet'"),
           (["--preset", "paper"], "--preset", "unknown preset"),
           (["--master-weights", "bf16"], "--master-weights", "option of the lm task"),
           (["--corpus", "file:x.txt", "--device", "cuda"], "--corpus", "--corpus and --device are options of the lm task"),
           (["--no-fp32-master"], "--no-fp32-master", "--no-fp32-master: an option of the lm task"),
           (["--loss-scale-init", "5"], "--loss-scale-init", "--loss-scale-init: an option of the lm task")]
    for args, flag, words in bad:
        r = runner.invoke(app, ["train", "--task", "digits", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and f"error: {flag}:" in r.output and words in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x" / "runs").exists()
    # a finished run with other settings: the error names --out and the way out (--fresh), not --recipe
    r = runner.invoke(app, ["train", "--task", "digits", "--preset", "smoke", "--steps", "7", "--recipe",
                            "bf16", "--out", str(out)])
    assert r.exit_code == 2 and r.output.startswith("error: --out:") and "steps: 6 in the checkpoint, 7 now" in r.output
    assert "Pass --fresh" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    # another model (or task) into the same --out would replace its summary.json: refused
    for args in (["--task", "digits", "--model", "mlp", "--rule", "sgd"], ["--task", "lm", "--device", "cpu"]):
        r = runner.invoke(app, ["train", *args, "--steps", "2", "--out", str(out)])
        assert r.exit_code == 2 and "holds a comparison of the cnn on the digits task" in r.output, r.output
    assert json.loads((out / "summary.json").read_text())["model"] == "cnn"


def test_a_learning_rule_is_compared_with_float32_sgd(tmp_path):
    """--rule sign compared the rule with itself ("vs sign +0.00"): SGD is now its reference."""
    from floatlab.cli import app
    r = CliRunner().invoke(app, ["train", "--task", "digits", "--model", "mlp", "--rule", "sign", "--steps", "4",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["recipes"]) == ["sgd", "sign"] and s["reference"] == "sgd" and s["rule"] == "sign"
    r = CliRunner().invoke(app, ["train", "--task", "digits", "--model", "mlp", "--rule", "bsl", "--steps", "4",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0 and "1 reused, 1 new" in r.output, r.output       # the SGD run is shared

def test_fashion_mnist_folder_named_by_the_variable_is_the_only_one_read(tmp_path, monkeypatch):
    from floatlab.cli import app
    monkeypatch.setenv("FLOATLAB_FASHION_MNIST", str(tmp_path / "mine"))
    assert images.candidate_dirs() == [tmp_path / "mine"]
    with pytest.raises(images.DataMissing, match="FLOATLAB_FASHION_MNIST=.*mine is not a folder"):
        images.find_fashion_mnist()
    (tmp_path / "mine").mkdir()
    _idx(tmp_path / "mine" / images.FILES["train"][0], np.zeros((2, 28, 28)))
    with pytest.raises(images.DataMissing, match="the folder lacks train-labels-idx1-ubyte.gz, t10k-images"):
        images.find_fashion_mnist()
    r = CliRunner().invoke(app, ["train", "--task", "fashion-mnist", "-r", "int8", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.startswith("error: FLOATLAB_FASHION_MNIST=") and not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["data", "--prepare", "fashion-mnist"])   # would unpack where it is not read
    assert r.exit_code == 2 and "the folder lacks" in r.output
    r = CliRunner().invoke(app, ["data"])
    assert r.exit_code == 2 and "error: FLOATLAB_FASHION_MNIST=" in r.output
    # the same files uncompressed (as other downloads ship them) are read as well
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 4)):
        imgs, labels = images.FILES[split]
        for name, arr in ((imgs, rng.integers(0, 256, (n, 28, 28))), (labels, np.arange(n) % 10)):
            _idx(tmp_path / "mine" / name, arr)
            raw = gzip.decompress((tmp_path / "mine" / name).read_bytes())
            (tmp_path / "mine" / name).unlink()
            (tmp_path / "mine" / name.removesuffix(".gz")).write_bytes(raw)
    d = images.load_fashion_mnist()
    assert d.train_x.shape == (6, 1, 28, 28) and d.test_y.tolist() == [0, 1, 2, 3]
    assert CliRunner().invoke(app, ["data"]).exit_code == 0
    labels = tmp_path / "mine" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])                       # damaged: never listed as usable
    r = CliRunner().invoke(app, ["data"])
    assert r.exit_code == 2 and "t10k-labels-idx1-ubyte: 3 data bytes, but its header says" in r.output, r.output
    r = CliRunner().invoke(app, ["train", "--task", "fashion-mnist", "-r", "int8", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.startswith("error: FLOATLAB_FASHION_MNIST: "), r.output
    monkeypatch.delenv("FLOATLAB_FASHION_MNIST")
    assert images.candidate_dirs()[0] == images.SYSTEM_DIR
