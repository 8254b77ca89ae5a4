"""Training-step cost of the image CNN per recipe, relative to fp32 (issue 15's goal: <= 2x).

Usage: python benchmarks/train_step_cnn.py [PRESET] [RECIPE ...] [--steps N]
(default: small, the image recipes, 8 steps). One thread, one process; Fashion-MNIST when
installed, else the 8x8 digits. Every recipe's model is built and warmed up first (2 steps: the
first call of a format builds its kernels), then the timed steps run **interleaved** (step i of
every recipe, then step i + 1...), so that a change of load on a shared machine falls on every
recipe alike; prints the median of N steps in wall time and in this process's CPU time
(time.process_time: what to read on a shared, loaded machine).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.nn import functional as F

from floatlab.nn.recipes import IMAGE_RECIPES, get_recipe
from floatlab.train.image_run import build, get_image_preset, load_data
from floatlab.train.images import DataMissing


def stepper(recipe: str, preset, data):
    """A function running training step ``i`` of a fresh model under ``recipe``."""
    model, opt = build(get_recipe(recipe), 0, preset, preset.model_config("cnn", data))

    def step(i: int) -> None:
        x, y = data.batch(i, preset.batch_size, 0)
        loss = F.cross_entropy(model(data.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def step_times(names: list[str], preset, data, steps: int = 8) -> dict[str, tuple[list[float], list[float]]]:
    """Per recipe: the wall and CPU times of ``steps`` steps, run interleaved across recipes."""
    steppers = {name: stepper(name, preset, data) for name in names}
    for step in steppers.values():
        step(0)
        step(1)
    times = {name: ([], []) for name in names}
    for i in range(steps):
        for name, step in steppers.items():
            t, c = time.perf_counter(), time.process_time()
            step(2 + i)
            times[name][0].append(time.perf_counter() - t)
            times[name][1].append(time.process_time() - c)
    return times


def parse(argv: list[str]) -> tuple[str, list[str], int]:
    args, steps = list(argv), 8
    if "-h" in args or "--help" in args:
        print(__doc__.strip())
        sys.exit(0)
    if "--steps" in args:
        k = args.index("--steps")
        try:
            steps = int(args[k + 1])
            if steps < 1:
                raise ValueError
        except (IndexError, ValueError):
            sys.exit("error: --steps takes a whole number >= 1, e.g. --steps 8")
        del args[k:k + 2]
    bad = [a for a in args if a.startswith("-")]
    if bad:
        sys.exit(f"error: unknown option {bad[0]}; usage: train_step_cnn.py [PRESET] [RECIPE ...] [--steps N]")
    return (args[0] if args else "small"), args[1:], steps


def main(argv: list[str]) -> None:
    name, names, steps = parse(argv)
    torch.set_num_threads(1)
    try:
        preset = get_image_preset(name)
        for r in names:
            get_recipe(r)
    except (ValueError, KeyError) as err:
        sys.exit(f"error: {err}")
    try:
        data = load_data("fashion-mnist", preset)
    except DataMissing:
        data = load_data("digits", preset)
    names = names or list(IMAGE_RECIPES)
    if "fp32" not in names:
        names = ["fp32", *names]
    print(f"CNN ({preset.cnn_width}/{2 * preset.cnn_width} channels, {preset.hidden} hidden), batch "
          f"{preset.batch_size}, {data.source.split(':')[0]}, median of {steps} interleaved steps", flush=True)
    times = step_times(names, preset, data, steps)
    base = tuple(statistics.median(t) for t in times["fp32"])
    for r in names:
        wall, cpu = (statistics.median(t) for t in times[r])
        print(f"{r:14s} wall median {wall * 1e3:7.1f} ms x{wall / base[0]:5.2f}   "
              f"CPU median {cpu * 1e3:7.1f} ms x{cpu / base[1]:5.2f} of fp32", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
