"""Training-step cost of each recipe relative to bf16 (issue 6's emulation-overhead figure).

Usage: python benchmarks/train_step.py [PRESET] [RECIPE ...]   (default: small, every recipe)
       python benchmarks/train_step.py --sweep FILE [STEPS]   (every cell of a sweep file, its preset)
Runs on one thread, one process; prints the median of 6 steps (STEPS with --sweep) after one
warm-up step (which compiles the fused kernels a new format needs). With --sweep it also prints
each cell's counted extra operations per operand element (floatlab.train.sweep).
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


def step_times(recipe, preset, corpus, steps: int = 6) -> list[float]:
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


def sweep_main(path: str, steps: int) -> None:
    from floatlab.train.sweep import load_sweep
    sw = load_sweep(path)
    preset = get_preset(sw.preset)
    corpus = Corpus.load()
    base = statistics.median(step_times("bf16", preset, corpus, steps))
    print(f"{'bf16':58s} median {base * 1e3:8.1f} ms   x 1.00 of bf16", flush=True)
    for cell in sw.cells():
        med = statistics.median(step_times(cell.recipe, preset, corpus, steps))
        print(f"{cell.name:58s} median {med * 1e3:8.1f} ms   x{med / base:5.2f} of bf16   "
              f"extra ops/elem {cell.extra_ops:5.2f}", flush=True)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    if argv and argv[0] == "--sweep":
        return sweep_main(argv[1], int(argv[2]) if len(argv) > 2 else 6)
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
