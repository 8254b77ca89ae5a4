"""Image tasks of floatlab train: the idx reader, missing data, resumable runs with identical
losses, the CLI's outputs and refusals, and binary stochastic learning's rule in expectation."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import floatlab.train.images as images
from floatlab.nn import bsl
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


@pytest.mark.parametrize("recipe,rule,model", [("sr_grads", "backprop", "cnn"), ("fp32", "bsl", "mlp")])
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
           (["--preset", "paper"], "--preset", "unknown preset")]
    for args, flag, words in bad:
        r = runner.invoke(app, ["train", "--task", "digits", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and f"error: {flag}:" in r.output and words in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x" / "runs").exists()


def test_bernoulli_activation_and_derivative_in_expectation():
    """E[h_b] = sigmoid(z) and E[f'_b] = 4 sigmoid(z)(1 - sigmoid(z)): means of 40,000 draws per
    value within 5 standard errors; the error is the sign of g * f'_b."""
    z = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5]).repeat(40_000, 1).requires_grad_()
    gen = torch.Generator().manual_seed(0)
    h = bsl.bernoulli_sigmoid(z, gen, stochastic=True, sign_errors=True)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    g = torch.full_like(h, -0.3)
    h.backward(g)
    s = torch.sigmoid(z[0].detach())
    for drawn, p in ((h.detach(), s), (-z.grad, 4 * s * (1 - s))):   # grad = sign(-0.3 * f'_b) = -f'_b
        se = (p * (1 - p) / z.shape[0]).sqrt()
        assert bool(((drawn.mean(0) - p).abs() <= 5 * se + 1e-7).all()), (drawn.mean(0), p)
    assert set(z.grad.unique().tolist()) <= {-1.0, 0.0}


def test_output_error_is_the_sign_outside_the_dead_zone():
    z = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], requires_grad=True)
    torch.nn.functional.cross_entropy(bsl.sign_error(z), torch.tensor([1, 0])).backward()
    p = torch.softmax(z.detach(), 1)
    e = p - torch.eye(3)[[1, 0]]
    assert torch.equal(z.grad, torch.sign(e) * (e.abs() > bsl.DEAD_ZONE))


def test_fixed_step_pulses_in_expectation_and_device_grid():
    grid = bsl.DeviceGrid((1.0,), levels=5)                       # levels -1, -0.5, 0, 0.5, 1
    assert torch.equal(grid.snap(torch.tensor([-3.0, -0.3, 0.2, 0.3, 0.74, 9.0]), 0),
                       torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.5, 1.0]))
    w = torch.nn.Parameter(torch.zeros(200_000))
    opt = bsl.FixedStepUpdate([w], grid, stochastic=True, seed=3)
    w.grad = torch.full_like(w, 12.0)                             # 12 of a batch of 32 ask for -1 level
    opt.batch = 32
    opt.step()
    moved = (w.detach() / -grid.step(0))
    assert set(moved.unique().tolist()) <= {0.0, 1.0}
    p = 12 / 32
    assert abs(float(moved.mean()) - p) <= 5 * (p * (1 - p) / w.numel()) ** 0.5
    sign_only = bsl.FixedStepUpdate([w], grid, stochastic=False)
    w.grad = torch.full_like(w, -0.01)
    sign_only.step()                                              # one level up, every weight
    assert bool(((w.detach() - moved * -grid.step(0)) == grid.step(0)).all())
