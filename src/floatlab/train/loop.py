"""One training run (recipe x seed), resumable and DDP-aware, and the multi-recipe experiment."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from floatlab.nn.optim import LowPrecisionOptimizer
from floatlab.nn.patch import quantize_model
from floatlab.nn.recipe import Recipe
from floatlab.nn.recipes import get_recipe
from floatlab.train.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from floatlab.train.data import Corpus
from floatlab.train.model import GPT
from floatlab.train.presets import Preset


@dataclass
class RunResult:
    recipe: str
    seed: int
    train_loss: list[float] = field(default_factory=list)   # one per step (global batch mean)
    val_loss: dict[int, float] = field(default_factory=dict)  # step -> validation loss
    step_time: list[float] = field(default_factory=list)    # seconds per step (this process)
    done: bool = False

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


def lr_at(step: int, preset: Preset) -> float:
    if step < preset.warmup:
        return preset.lr * (step + 1) / preset.warmup
    t = (step - preset.warmup) / max(1, preset.steps - preset.warmup)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def build(recipe: Recipe, seed: int, preset: Preset, master: str | None, device):
    torch.manual_seed(seed)
    model = GPT(preset.model).to(device)
    quantize_model(model, recipe.replace(seed=seed))
    model.set_attention_spec(recipe.attention)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=preset.lr, betas=(0.9, 0.95))
    if master:
        opt = LowPrecisionOptimizer(opt, weight=(master, "sr"), seed=seed)
    return model, opt


@torch.no_grad()
def evaluate(model, corpus: Corpus, preset: Preset, seed: int, device) -> float:
    """Mean validation loss over ``preset.eval_batches`` fixed batches (the same for every run).
    Amax histories are restored afterwards: evaluation does not move delayed scales."""
    saved = {n: b.clone() for n, b in model.named_buffers() if n.endswith("amax_history")}
    model.eval()
    losses = []
    for i in range(preset.eval_batches):
        x, y = corpus.batch("val", i, preset.batch_size, preset.model.block_size, seed=12345)
        losses.append(float(model(x.to(device), y.to(device))))
    model.train()
    bufs = dict(model.named_buffers())
    for n, b in saved.items():
        bufs[n].copy_(b)
    return sum(losses) / len(losses)


def train_run(recipe, seed: int, preset: Preset, run_dir: Path, corpus: Corpus | None = None,
              master: str | None = None, progress: Callable[[int, float], None] | None = None,
              stop_after: int | None = None, device: str = "cpu") -> RunResult:
    """Train one GPT with ``recipe`` for ``preset.steps`` steps, resuming from ``run_dir``.

    Under ``torch.distributed`` every rank takes its slice of each global batch and the model is
    wrapped in DistributedDataParallel; rank 0 writes the checkpoints. ``stop_after`` ends the
    call after that many steps in total (as a kill would), leaving the last checkpoint behind.
    """
    recipe = get_recipe(recipe)
    corpus = corpus or Corpus.load()
    rank, world = dist_info()
    if preset.batch_size % world:
        raise ValueError(f"global batch {preset.batch_size} is not divisible by {world} processes")
    run_dir = Path(run_dir)
    ckpt_path = run_dir / FILENAME
    model, opt = build(recipe, seed, preset, master, device)
    result = RunResult(recipe.name, seed)
    start = 0
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        result = RunResult(**ckpt["result"])
        result.val_loss = {int(k): v for k, v in result.val_loss.items()}
    if result.done:
        return result
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model)

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {"step": step, "model": model.state_dict(),
                                        "optimizer": opt.state_dict(), "result": asdict(result),
                                        "recipe": recipe.to_dict(), "preset": asdict(preset)})

    for step in range(start, preset.steps):
        if stop_after is not None and step >= stop_after:
            return result
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, preset)
        x, y = corpus.batch("train", step, preset.batch_size, preset.model.block_size, seed, rank, world)
        loss = net(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        result.train_loss.append(float(value))
        result.step_time.append(time.perf_counter() - t0)
        last = step + 1 == preset.steps
        if last or (preset.eval_every and (step + 1) % preset.eval_every == 0):
            result.val_loss[step + 1] = evaluate(model, corpus, preset, seed, device)
        if last:
            result.done = True
        if last or (step + 1) % preset.ckpt_every == 0:
            checkpoint(step + 1)
        if progress is not None:
            progress(step + 1, float(value))
    return result
