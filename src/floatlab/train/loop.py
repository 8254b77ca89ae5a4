"""One training run (recipe x seed): resumable when its configuration matches, and DDP-aware."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from floatlab.nn.amp import MasterWeights
from floatlab.nn.modules import QLinear
from floatlab.nn.optim import LowPrecisionOptimizer
from floatlab.nn.patch import quantize_model
from floatlab.nn.recipe import Recipe
from floatlab.nn.recipes import get_recipe
from floatlab.train.checkpoint import (FILENAME, ConfigMismatch, differences, load_checkpoint,
                                       save_checkpoint)
from floatlab.train.data import Corpus
from floatlab.train.model import GPT
from floatlab.train.options import TrainOptions, options_from
from floatlab.train.presets import Preset


@dataclass
class RunResult:
    recipe: str
    seed: int
    train_loss: list[float] = field(default_factory=list)   # one per step (global batch mean)
    val_loss: dict[int, float] = field(default_factory=dict)  # step -> validation loss
    step_time: list[float] = field(default_factory=list)    # seconds per step (this process)
    done: bool = False
    loss_scale: list[float] = field(default_factory=list)   # dynamic loss scale after each step
    skipped: list[int] = field(default_factory=list)        # steps skipped on an Inf/NaN gradient

    @property
    def final_loss(self) -> float:
        return self.val_loss[max(self.val_loss)]


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): nccl on GPU, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def resolve_device(device: str | None = None) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` checked against this machine; ``None``: cuda when
    available, else cpu. Raises ``ValueError`` for another device type, CUDA missing, or a GPU
    index beyond the ones present."""
    if device is None or not str(device).strip():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(str(device).strip().lower())
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if d.type == "cpu":
        return d
    if d.type != "cuda":
        raise ValueError(f"device {device!r} is not supported for training: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"{device!r} is not available here ({why}); use cpu")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"{device!r}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..cuda:"
                         f"{torch.cuda.device_count() - 1})")
    return d


def lr_at(step: int, preset: Preset) -> float:
    if step < preset.warmup:
        return preset.lr * (step + 1) / preset.warmup
    t = (step - preset.warmup) / max(1, preset.steps - preset.warmup)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def canonical_master(master: str | None) -> str | None:
    """The master-weight format name as floatlab spells it (``"BF16"`` -> ``"bf16"``), checked:
    it must exist and accept stochastic rounding (how :class:`LowPrecisionOptimizer` rounds
    master weights). ``None``/``""`` mean float32 master weights. Raises ``ValueError``."""
    if master is None or not str(master).strip():
        return None
    from floatlab.formats.registry import get_format
    from floatlab.rounding import resolve_rounding
    fmt = get_format(str(master))
    if getattr(fmt, "kind", "scalar") != "scalar":
        raise ValueError(f"master weights need a scalar format (bf16, fp16, e5m2...), not the block format {fmt.name!r}")
    resolve_rounding(fmt, "sr", None)
    return str(master).strip().lower()


def run_config(recipe: Recipe, seed: int, preset: Preset, master: str | None, corpus: Corpus,
               options: TrainOptions | None = None) -> dict:
    """Everything that decides a run's losses, as plain JSON-able data (stored in its checkpoint).

    Recipe (without its free-text description), seed, preset (model shape, batch, learning rate,
    warmup, evaluation schedule), ``steps``, master-weight format, the corpus (the SHA-256 of
    its tokens, and where it came from) and, under ``"options"``, the training options that
    differ from the defaults (:class:`~floatlab.train.options.TrainOptions`; absent when none
    does, so older checkpoints still match). Not included, because they do not change what is
    trained: the checkpoint interval, the device, the number of processes and threads (DDP
    equals one process up to float32 summation order; see tests/test_train.py).
    """
    r = recipe.to_dict()
    r.pop("description", None)
    p = asdict(preset)
    for k in ("steps", "ckpt_every"):
        p.pop(k)
    config = {"recipe": r, "seed": int(seed), "preset": p, "steps": preset.steps,
              "master_weights": master, "corpus": {"sha256": corpus.digest, "source": corpus.source}}
    opts = options_from(options).to_dict()
    if opts:
        config["options"] = opts
    return config


def check_resumable(ckpt: dict, config: dict, preset: Preset, run_dir: Path) -> int:
    """The step a run continues from given its checkpoint ``ckpt``, or :class:`ConfigMismatch`.

    A checkpoint is continued only when the settings asked for now would have produced it
    exactly: every entry of :func:`run_config` equal except ``steps``; a different ``steps`` is
    accepted only when the learning rate of every step already done is the same under both
    (the schedule warms up, then decays to the run's last step, so a run can be extended only
    while all of its steps were warm-up steps) and the checkpoint is not past the new end.
    Checkpoints without a stored configuration (older floatlab) are refused.
    """
    done = int(ckpt["step"])
    saved = ckpt.get("config")
    if saved is None:
        raise ConfigMismatch(run_dir, ["the checkpoint was written by an older floatlab that did not store "
                                       "its configuration, so it cannot be checked against these settings"])
    diffs = differences(saved, config, ignore=("steps", "corpus"))
    if saved.get("corpus", {}).get("sha256") != config["corpus"]["sha256"]:
        diffs.append(f"corpus: other text ({saved.get('corpus', {}).get('source')!r} in the checkpoint, "
                     f"{config['corpus']['source']!r} now, and their contents differ)")
    old_steps, new_steps = int(saved["steps"]), int(config["steps"])
    if old_steps != new_steps:
        if done > new_steps:
            diffs.append(f"steps: {old_steps} in the checkpoint, {new_steps} now, and the checkpoint "
                         f"is already at step {done}")
        else:
            old = replace(preset, steps=old_steps)
            first = next((s for s in range(done) if lr_at(s, old) != lr_at(s, preset)), None)
            if first is not None:
                diffs.append(f"steps: {old_steps} in the checkpoint, {new_steps} now; the learning rate "
                             f"(warm-up, then cosine decay to the last step) differs from step {first + 1} "
                             f"on, so its {done} steps are not the first {done} steps of a run of {new_steps}")
    if diffs:
        raise ConfigMismatch(run_dir, diffs)
    return done


def build(recipe: Recipe, seed: int, preset: Preset, master: str | None, device,
          options: TrainOptions | None = None):
    """The GPT with ``recipe`` applied and its optimizer (AdamW). ``options.dtype`` fp16/bf16
    casts the model; with ``options.master_weights`` the optimizer is a
    :class:`~floatlab.nn.amp.MasterWeights` over float32 copies. ``master`` (a format for
    :class:`~floatlab.nn.optim.LowPrecisionOptimizer`) needs a float32 model (``ValueError``)."""
    options = options_from(options)
    if master and options.dtype != "fp32":
        raise ValueError(f"master weights in a format ({master!r}, rounded with SR) need a float32 model; "
                         f"with dtype {options.dtype} use the fp32 master weights of the training options")
    torch.manual_seed(seed)
    model = GPT(preset.model).to(device)
    with warnings.catch_warnings():
        # the keep rules leave some layers in float32 by design; the report is in the summary
        warnings.simplefilter("ignore", UserWarning)
        quantize_model(model, recipe.replace(seed=seed))
    model.set_attention_spec(recipe.attention)
    if options.dtype != "fp32":
        model.to(options.torch_dtype)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]

    def adamw(g):
        return torch.optim.AdamW(g, lr=preset.lr, betas=(0.9, 0.95))

    if options.uses_masters:
        return model, MasterWeights(adamw, groups)
    opt = adamw(groups)
    if master:
        opt = LowPrecisionOptimizer(opt, weight=(master, "sr"), seed=seed)
    return model, opt


def set_warmup(model, warm: bool) -> None:
    """Run every quantized layer with the ``bf16`` recipe's spec (``warm``) or its own."""
    from floatlab.nn.recipes import BF16
    for m in model.modules():
        if isinstance(m, QLinear):
            m.qstate.spec = BF16 if warm else m.spec


def optimizer_step(model, opt, scaler, clip: float = 1.0) -> bool:
    """Unscale (dynamic loss scaling), clip and step, after ``backward``. Returns ``True`` when
    the step was skipped (an Inf/NaN gradient under loss scaling); the scaler is updated."""
    if isinstance(opt, MasterWeights):
        opt.copy_grads()
        params = opt.params()
    else:
        params = [p for p in model.parameters()]
    overflow = scaler.unscale_(params) if scaler is not None else False
    if not overflow:
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
    if scaler is not None:
        scaler.update(overflow)
    return overflow


def describe(recipe: Recipe, preset: Preset):
    """The :class:`~floatlab.nn.patch.QuantizationReport` of ``recipe`` on the preset's GPT
    (built on the meta device: no memory, no compute)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = quantize_model(GPT(preset.model), recipe)
    return model.floatlab_quantization


@torch.no_grad()
def evaluate(model, corpus: Corpus, preset: Preset, seed: int, device) -> float:
    """Mean validation loss over ``preset.eval_batches`` fixed batches (the same for every run).
    Amax histories and stochastic-rounding generators are restored afterwards: evaluation moves
    neither delayed scales nor random streams, so when a run evaluates does not change its losses."""
    saved = {n: b.clone() for n, b in model.named_buffers() if n.endswith("amax_history")}
    streams = {n: m.get_extra_state() for n, m in model.named_modules() if isinstance(m, QLinear)}
    model.eval()
    losses = []
    for i in range(preset.eval_batches):
        x, y = corpus.batch("val", i, preset.batch_size, preset.model.block_size, seed=12345)
        losses.append(float(model(x.to(device), y.to(device))))
    model.train()
    bufs = dict(model.named_buffers())
    for n, b in saved.items():
        bufs[n].copy_(b)
    modules = dict(model.named_modules())
    for n, state in streams.items():
        modules[n].set_extra_state(state)
    return sum(losses) / len(losses)


def _evaluated_at(step: int, preset: Preset) -> bool:
    return step == preset.steps or bool(preset.eval_every and step % preset.eval_every == 0)


def train_run(recipe, seed: int, preset: Preset, run_dir: Path, corpus: Corpus | None = None,
              master: str | None = None, progress: Callable[[int, float], None] | None = None,
              stop_after: int | None = None, device: str = "cpu", fresh: bool = False,
              options: TrainOptions | dict | None = None) -> RunResult:
    """Train one GPT with ``recipe`` for ``preset.steps`` steps, resuming from ``run_dir``.

    ``options`` (:class:`~floatlab.train.options.TrainOptions`): model dtype, fp32 master
    weights, dynamic loss scaling, bf16 warm-up; the loss scale after every step and the
    skipped steps are in the result (``loss_scale``, ``skipped``) and the checkpoint.

    A checkpoint in ``run_dir`` is continued (or, when finished, reused) only if it was made
    with the same configuration (:func:`check_resumable`); ``fresh=True`` deletes it and starts
    from step 0. Under ``torch.distributed`` every rank takes its slice of each global batch and
    the model is wrapped in DistributedDataParallel; rank 0 writes the checkpoints.
    ``stop_after`` ends the call after that many steps in total (as a kill would), leaving the
    last checkpoint behind. Progress is announced through :mod:`floatlab.progress` (silent unless
    a reporter is installed) and, per step, to ``progress(step, loss)`` if given.

    Raises:
        ConfigMismatch: the checkpoint in ``run_dir`` was made with other settings.
        ValueError: a batch not divisible by the number of processes, a corpus too short for the
            model's context, an unknown master-weight format.
    """
    from floatlab import progress as reporting

    recipe = get_recipe(recipe)
    corpus = corpus or Corpus.load()
    master = canonical_master(master)
    options = options_from(options)
    rank, world = dist_info()
    if preset.batch_size % world:
        raise ValueError(f"global batch {preset.batch_size} is not divisible by {world} processes")
    corpus.check(preset.model.block_size)
    run_dir = Path(run_dir)
    ckpt_path = run_dir / FILENAME
    config = run_config(recipe, seed, preset, master, corpus, options)
    ckpt = None
    if fresh:
        if rank == 0 and ckpt_path.exists():
            ckpt_path.unlink()
    else:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt is not None:
            check_resumable(ckpt, config, preset, run_dir)
    model, opt = build(recipe, seed, preset, master, device, options)
    scaler = options.scaler()
    result = RunResult(recipe.name, seed)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start = ckpt["step"]
        result = RunResult(**ckpt["result"])
        result.val_loss = {int(k): v for k, v in result.val_loss.items() if _evaluated_at(int(k), preset)}
        result.done = start == preset.steps      # a finished run extended to more steps continues
    task = reporting.task(f"{recipe.name} seed {seed}", preset.steps, "steps")
    if start:
        task.advance(start, "finished earlier, reused" if result.done else f"resumed at step {start}")
    if result.done:
        task.close()
        return result
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model)

    def checkpoint(step: int) -> None:
        if rank == 0:
            state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "result": asdict(result), "config": config, "environment": _environment()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(ckpt_path, state)

    with task:
        for step in range(start, preset.steps):
            if stop_after is not None and step >= stop_after:
                return result
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, preset)
            if options.warmup_bf16:
                set_warmup(model, step < options.warmup_bf16)
            x, y = corpus.batch("train", step, preset.batch_size, preset.model.block_size, seed, rank, world)
            loss = net(x.to(device), y.to(device))
            opt.zero_grad(set_to_none=True)
            (scaler.scale_loss(loss) if scaler is not None else loss).backward()
            if optimizer_step(model, opt, scaler):
                result.skipped.append(step + 1)
            if scaler is not None:
                result.loss_scale.append(scaler.scale)
            value = loss.detach().clone()
            if world > 1:
                dist.all_reduce(value)
                value /= world
            result.train_loss.append(float(value))
            result.step_time.append(time.perf_counter() - t0)
            last = step + 1 == preset.steps
            if _evaluated_at(step + 1, preset):
                result.val_loss[step + 1] = evaluate(model, corpus, preset, seed, device)
            if last:
                result.done = True
            if last or (step + 1) % preset.ckpt_every == 0:
                checkpoint(step + 1)
            task.advance(1, f"loss {float(value):.3f}")
            if progress is not None:
                progress(step + 1, float(value))
    return result


_ENV: dict | None = None


def _environment() -> dict:
    global _ENV
    if _ENV is None:
        from floatlab.provenance import environment
        _ENV = environment()
    return _ENV
