"""floatlab.train: resume gives identical losses, DDP equals one process, the CLI writes its files."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from floatlab.train import Corpus, get_preset, train_run
from floatlab.train.data import load_text

TINY = replace(get_preset("smoke"), steps=8, ckpt_every=3, eval_batches=1)


@pytest.fixture(scope="module")
def corpus():
    return Corpus.load()


def test_corpus_and_batches_are_deterministic(corpus):
    assert len(load_text()) > 400_000
    x1, y1 = corpus.batch("train", 5, 8, 32, seed=1)
    x2, _ = corpus.batch("train", 5, 8, 32, seed=1)
    x3, _ = corpus.batch("train", 6, 8, 32, seed=1)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    a, _ = corpus.batch("train", 5, 8, 32, seed=1, rank=0, world=2)
    b, _ = corpus.batch("train", 5, 8, 32, seed=1, rank=1, world=2)
    assert torch.equal(torch.cat([a, b]), x1)


@pytest.mark.parametrize("recipe,master", [("nvfp4", "bf16"), ("fp8", None)])
def test_resume_continues_with_identical_losses(tmp_path, corpus, recipe, master):
    torch.set_num_threads(1)
    full = train_run(recipe, 0, TINY, tmp_path / "full", corpus, master=master)
    killed = train_run(recipe, 0, TINY, tmp_path / "killed", corpus, master=master, stop_after=7)
    assert len(killed.train_loss) == 7                       # died after step 7...
    resumed = train_run(recipe, 0, TINY, tmp_path / "killed", corpus, master=master)
    assert resumed.done and len(resumed.train_loss) == 8     # ...resumed from the step-6 checkpoint
    assert resumed.train_loss == full.train_loss
    assert resumed.val_loss == full.val_loss
    again = train_run(recipe, 0, TINY, tmp_path / "killed", corpus, master=master)
    assert again.train_loss == full.train_loss               # a finished run is reused


def test_sigkilled_cli_run_resumes_with_identical_losses(tmp_path):
    """A real kill (SIGKILL mid-run, no clean-up) of `python -m floatlab.train`; rerunning the
    command continues from the last checkpoint and reproduces the uninterrupted losses."""
    import signal
    import time
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "floatlab.train", "--preset", "smoke", "--steps", "300", "-r", "bf16"]
    ckpt = tmp_path / "killed" / "runs" / "bf16" / "seed0" / "checkpoint.pt"
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)                       # somewhere past the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert ckpt.exists() and not (tmp_path / "killed" / "curves.csv").exists()
    done_at_kill = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < done_at_kill < 300
    for out in ("killed", "full"):
        res = subprocess.run([*args, "--out", str(tmp_path / out)], env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    killed, full = _losses(tmp_path / "killed"), _losses(tmp_path / "full")
    assert len(full) == 300 and killed == full


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out):
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["recipe"], int(r["step"])): float(r["train_loss"]) for r in rows}


def test_ddp_two_processes_equal_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo) gives the single-process losses for the same global batch."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["-m", "floatlab.train", "--preset", "smoke", "--steps", "5", "-r", "bf16", "-r", "mxfp8"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 10
    worst = max(abs(a[k] - b[k]) / abs(a[k]) for k in a)
    print(f"DDP vs single process: max relative loss difference {worst:.3g}")
    for k in a:   # gradients are averaged over ranks by all-reduce: equal up to float32 sums
        assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]), (k, a[k], b[k])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_cli_smoke_writes_summary_curves_plot(tmp_path):
    from typer.testing import CliRunner

    from floatlab.cli import app
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["train", "--preset", "smoke", "--steps", "4", "-r", "hif8",
                                   "--seeds", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert set(s["recipes"]) == {"bf16", "hif8"}
    r = s["recipes"]["hif8"]
    bf = s["recipes"]["bf16"]["final_loss"]
    assert r["relative_to_bf16"] == pytest.approx((r["final_loss"] - bf) / bf)
    assert len(r["final_loss_per_seed"]) == 2 and s["recipes"]["bf16"]["relative_to_bf16"] == 0
    assert (out / "loss.png").stat().st_size > 10_000
    assert len(_losses(out)) == 2 * 4      # recipe x step, per seed rows collapse in the dict
    assert "hif8" in res.output and "final loss" in res.output


def test_evaluation_moves_no_random_stream(tmp_path, corpus):
    """A recipe rounding forward operands stochastically: evaluating every 2 steps or only at the
    end gives the same training losses (evaluation restores the layers' generators), which is
    what lets a finished run be extended exactly."""
    from floatlab.nn import LinearSpec, Recipe
    torch.set_num_threads(1)
    recipe = Recipe("sr_fwd", LinearSpec.uniform("e3m2", rounding="sr"))
    a = train_run(recipe, 0, replace(TINY, steps=6, eval_every=0), tmp_path / "a", corpus)
    b = train_run(recipe, 0, replace(TINY, steps=6, eval_every=2), tmp_path / "b", corpus)
    assert sorted(b.val_loss) == [2, 4, 6] and sorted(a.val_loss) == [6]
    assert a.train_loss == b.train_loss and a.val_loss[6] == b.val_loss[6]


def test_train_run_refuses_other_settings_and_fresh_restarts(tmp_path, corpus):
    from floatlab.train.checkpoint import ConfigMismatch
    torch.set_num_threads(1)
    short = replace(TINY, steps=4)
    first = train_run("fp8", 0, short, tmp_path, corpus)
    with pytest.raises(ConfigMismatch, match="recipe.name: 'fp8' in the checkpoint, 'mxfp8' now"):
        train_run("mxfp8", 0, short, tmp_path, corpus)
    with pytest.raises(ConfigMismatch, match="seed: 0 in the checkpoint, 1 now"):
        train_run("fp8", 1, short, tmp_path, corpus)
    with pytest.raises(ConfigMismatch, match="master_weights"):
        train_run("fp8", 0, short, tmp_path, corpus, master="bf16")
    again = train_run("fp8", 0, short, tmp_path, corpus)               # same settings: reused
    assert again.train_loss == first.train_loss
    other = train_run("mxfp8", 0, short, tmp_path, corpus, fresh=True)
    assert other.recipe == "mxfp8" and len(other.train_loss) == 4
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]["recipe"]["name"] == "mxfp8"


def test_corpus_files_that_cannot_train_say_why(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        Corpus.load(f"file:{empty}")
    with pytest.raises(ValueError, match="does not exist"):
        Corpus.load(f"file:{tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match="is a folder"):
        Corpus.load(f"file:{tmp_path}")
