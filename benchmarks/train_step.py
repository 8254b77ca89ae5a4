"""Training-step cost of each recipe relative to bf16 (issue 6's emulation-overhead figure).

Usage: python benchmarks/train_step.py [PRESET] [RECIPE ...]   (default: small, every recipe)
       python benchmarks/train_step.py --sweep FILE [STEPS]   (every cell of a sweep file, its preset)
Runs on one thread, one process; prints the median of 6 steps (STEPS with --sweep) after one
warm-up step (which compiles the fused kernels a new format needs). The ratio is of **CPU time**
(``time.process_time``: this process's user + system time, so other jobs on shared cores do not
inflate it); the wall-clock median is printed beside it. With --sweep it also prints each cell's
counted extra operations per operand element (floatlab.train.sweep).
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


def step_times(recipe, preset, corpus, steps: int = 6) -> tuple[list[float], list[float]]:
    """CPU times and wall times (seconds) of ``steps`` training steps after one warm-up step."""
    model, opt = build(get_recipe(recipe), 0, preset, None, "cpu")

    def step(i: int) -> None:
        x, y = corpus.batch("train", i, preset.batch_size, preset.model.block_size, 0)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    cpu, wall = [], []
    for i in range(steps):
        c, t = time.process_time(), time.perf_counter()
        step(i)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return cpu, wall


def medians(recipe, preset, corpus, steps: int = 6) -> tuple[float, float]:
    cpu, wall = step_times(recipe, preset, corpus, steps)
    return statistics.median(cpu), statistics.median(wall)


def sweep_main(path: str, steps: int) -> None:
    from floatlab.train.sweep import load_sweep
    sw = load_sweep(path)
    preset = get_preset(sw.preset)
    corpus = Corpus.load()
    base, wbase = medians("bf16", preset, corpus, steps)
    print(f"{'cell':58s} {'CPU ms':>8s} {'vs bf16':>8s} {'wall ms':>8s} {'vs bf16':>8s} {'extra ops/elem':>15s}")
    print(f"{'bf16':58s} {base * 1e3:8.1f} {1:8.2f} {wbase * 1e3:8.1f} {1:8.2f} {0:15.2f}", flush=True)
    named = [(r, get_recipe(r)) for r in sw.recipes]
    from floatlab.train.sweep import recipe_extra_ops
    for name, recipe, ops in [*((c.name, c.recipe, c.extra_ops) for c in sw.cells()),
                              *((n, r, recipe_extra_ops(r)) for n, r in named)]:
        med, wmed = medians(recipe, preset, corpus, steps)
        print(f"{name:58s} {med * 1e3:8.1f} {med / base:8.2f} {wmed * 1e3:8.1f} {wmed / wbase:8.2f} {ops:15.2f}",
              flush=True)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    if argv and argv[0] == "--sweep":
        return sweep_main(argv[1], int(argv[2]) if len(argv) > 2 else 6)
    preset = get_preset(argv[0] if argv else "small")
    corpus = Corpus.load()
    names = argv[1:] or list_recipes()
    if "bf16" not in names:
        names = ["bf16", *names]
    base = wbase = None
    print(f"{'recipe':14s} {'CPU ms':>8s} {'vs bf16':>8s} {'wall ms':>8s} {'vs bf16':>8s}")
    for name in names:
        med, wmed = medians(name, preset, corpus)
        if name == "bf16":
            base, wbase = med, wmed
        print(f"{name:14s} {med * 1e3:8.1f} {med / base:8.2f} {wmed * 1e3:8.1f} {wmed / wbase:8.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
