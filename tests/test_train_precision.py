"""Dynamic loss scaling, fp16/bf16 end-to-end training, fp32 master weights, bf16 warm-up."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from floatlab.nn.amp import DynamicLossScaler, MasterWeights
from floatlab.nn.recipes import get_recipe
from floatlab.train import Corpus, get_preset, train_run
from floatlab.train.loop import build, optimizer_step, run_config
from floatlab.train.options import TrainOptions

TINY = replace(get_preset("smoke"), steps=12, ckpt_every=5, eval_batches=1)


@pytest.fixture(scope="module")
def corpus():
    return Corpus.load()


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_scaler_skips_and_halves_on_injected_overflow_then_regrows():
    model, opt = _toy()
    scaler = DynamicLossScaler(init_scale=2.0 ** 10, growth_interval=3)
    x = torch.randn(8, 4)
    scales, weights = [], []
    for step in range(8):
        opt.zero_grad()
        scaler.scale_loss(model(x).square().mean()).backward()
        if step == 2:                                   # the injected overflow
            model.weight.grad[1, 2] = float("inf")
        before = model.weight.detach().clone()
        skipped = optimizer_step(model, opt, scaler, clip=1e9)
        assert skipped == (step == 2)
        if skipped:
            assert torch.equal(model.weight, before)    # the step did not touch the weights
        else:
            assert not torch.equal(model.weight, before)
        scales.append(scaler.scale)
        weights.append(model.weight.detach().clone())
    # 2 clean steps, overflow (halve, count restarts), 3 clean steps -> double, 2 more clean
    assert scales == [2.0 ** 10, 2.0 ** 10, 2.0 ** 9, 2.0 ** 9, 2.0 ** 9, 2.0 ** 10, 2.0 ** 10, 2.0 ** 10]
    assert scaler.overflows == 1 and scaler.clean_steps == 2


def test_unscaled_gradients_equal_the_unscaled_run():
    # powers of two: scaling the loss and unscaling the grads changes no bit of the update
    m1, o1 = _toy()
    m2, o2 = _toy()
    x = torch.randn(8, 4)
    m1(x).square().mean().backward()
    optimizer_step(m1, o1, None, clip=1e9)
    s = DynamicLossScaler(init_scale=2.0 ** 12)
    s.scale_loss(m2(x).square().mean()).backward()
    optimizer_step(m2, o2, s, clip=1e9)
    assert torch.equal(m1.weight, m2.weight) and torch.equal(m1.bias, m2.bias)


@pytest.mark.parametrize("kw, words", [
    (dict(init_scale=0), "init_scale"), (dict(growth=1.0), "growth"), (dict(backoff=1.0), "backoff"),
    (dict(growth_interval=0), "growth_interval"), (dict(growth_interval=2.5), "growth_interval"),
    (dict(init_scale=2.0 ** 70), "outside")])
def test_scaler_refuses_bad_settings(kw, words):
    with pytest.raises(ValueError, match=words):
        DynamicLossScaler(**kw)


@pytest.mark.parametrize("kw, words", [
    (dict(dtype="fp8"), "dtype must be one of fp32, fp16, bf16"), (dict(loss_scale="static"), "loss_scale"),
    (dict(warmup_bf16=-1), "warmup_bf16"), (dict(loss_scale="dynamic", growth_interval=0), "growth_interval"),
    (dict(master_weights="yes"), "master_weights")])
def test_options_refuse_bad_values(kw, words):
    with pytest.raises(ValueError, match=words):
        TrainOptions(**kw)


def test_default_options_leave_the_run_config_unchanged(corpus):
    r = "bf16"
    plain = run_config(get_recipe(r), 0, TINY, None, corpus)
    assert "options" not in plain and plain == run_config(get_recipe(r), 0, TINY, None, corpus, TrainOptions())
    fp16 = run_config(get_recipe(r), 0, TINY, None, corpus, TrainOptions(dtype="float16"))
    assert fp16["options"] == {"dtype": "fp16"}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_end_to_end_dtype_with_and_without_masters(dtype):
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model, opt = build(get_recipe("fp32"), 0, TINY, None, "cpu", TrainOptions(dtype=dtype, master_weights=False))
    assert {p.dtype for p in model.parameters()} == {dt}
    x = torch.randint(0, 256, (2, TINY.model.block_size))
    model(x, x).backward()
    assert {p.grad.dtype for p in model.parameters()} == {dt}
    optimizer_step(model, opt, None)
    states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim]
    assert states and {v.dtype for v in states} == {dt}      # optimizer states in the low dtype too
    model, opt = build(get_recipe("fp32"), 0, TINY, None, "cpu", TrainOptions(dtype=dtype))
    assert isinstance(opt, MasterWeights)
    model(x, x).backward()
    optimizer_step(model, opt, None)
    states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim]
    assert {v.dtype for v in states} == {torch.float32}
    for p, m in zip(opt.model_params, opt.masters):         # the model holds the masters, rounded (RNE)
        assert p.dtype == dt and m.dtype == torch.float32 and torch.equal(p, m.to(dt))


def test_fp16_run_overflows_backs_off_regrows_and_resumes_identically(tmp_path, corpus):
    torch.set_num_threads(1)
    # a loss scale of 2^20 overflows this model's fp16 gradients (max 65504): the first steps are
    # skipped and halve the scale until the gradients fit; with growth every 2 clean steps it then
    # grows again, overflows again, and so hovers at the largest scale that fits
    opts = TrainOptions(dtype="fp16", loss_scale="dynamic", init_scale=2.0 ** 20, growth_interval=2)
    full = train_run("fp32", 0, TINY, tmp_path / "full", corpus, options=opts)
    k = len([s for s in full.skipped if s <= len(full.skipped)])
    assert k >= 1 and full.skipped[:k] == list(range(1, k + 1))
    assert full.loss_scale[:k] == [2.0 ** (20 - i) for i in range(1, k + 1)]
    grew = [i for i in range(k, len(full.loss_scale) - 1) if full.loss_scale[i + 1] == 2 * full.loss_scale[i]]
    assert grew, full.loss_scale
    # every later skip halves the scale again; every step not skipped leaves it or doubles it
    for i in range(k, len(full.loss_scale)):
        step, before = i + 1, full.loss_scale[i - 1]
        assert full.loss_scale[i] in ((before / 2,) if step in full.skipped else (before, 2 * before))
    assert len(full.skipped) > k                             # it overflowed again after growing
    assert all(torch.isfinite(torch.tensor(full.train_loss)))
    killed = train_run("fp32", 0, TINY, tmp_path / "killed", corpus, options=opts, stop_after=7)
    assert len(killed.train_loss) == 7
    resumed = train_run("fp32", 0, TINY, tmp_path / "killed", corpus, options=opts)
    assert resumed.train_loss == full.train_loss and resumed.loss_scale == full.loss_scale
    assert resumed.skipped == full.skipped and resumed.val_loss == full.val_loss
    # other options are other settings: refused, not silently continued
    from floatlab.train.checkpoint import ConfigMismatch
    with pytest.raises(ConfigMismatch, match="options"):
        train_run("fp32", 0, TINY, tmp_path / "full", corpus, options=replace(opts, master_weights=False))


def test_bf16_warmup_switches_the_recipe_at_the_step(tmp_path, corpus):
    torch.set_num_threads(1)
    short = replace(TINY, steps=4)
    warm = train_run("hif8", 0, short, tmp_path / "warm", corpus, options=TrainOptions(warmup_bf16=2))
    bf16 = train_run("bf16", 0, short, tmp_path / "bf16", corpus)
    hif8 = train_run("hif8", 0, short, tmp_path / "hif8", corpus)
    assert warm.train_loss[:2] == bf16.train_loss[:2]       # the warm-up steps are bf16's
    assert warm.train_loss[2] != bf16.train_loss[2]         # then HiF8's GEMMs
    assert warm.train_loss[0] != hif8.train_loss[0]
