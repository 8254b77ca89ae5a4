"""Training-step cost of each recipe relative to bf16 (issue 6's emulation-overhead figure).

Usage: python benchmarks/train_step.py [PRESET] [RECIPE ...]   (default: small, every recipe)
Runs on one thread, one process; prints the median of 6 steps after one warm-up step.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from floatlab.nn.recipes import get_recipe, list_recipes
from floatlab.train.data import Corpus
from floatlab.train.loop import build
from floatlab.train.presets import get_preset


def step_times(recipe: str, preset, corpus, steps: int = 6) -> list[float]:
    model, opt = build(get_recipe(recipe), 0, preset, None, "cpu")

    def step(i: int) -> None:
        x, y = corpus.batch("train", i, preset.batch_size, preset.model.block_size, 0)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    preset = get_preset(argv[0] if argv else "small")
    corpus = Corpus.load()
    names = argv[1:] or list_recipes()
    if "bf16" not in names:
        names = ["bf16", *names]
    base = None
    for name in names:
        med = statistics.median(step_times(name, preset, corpus))
        base = med if name == "bf16" else base
        print(f"{name:14s} median {med * 1e3:8.1f} ms   x{med / base:5.2f} of bf16", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
