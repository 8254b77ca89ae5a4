"""Training-step cost of the image CNN per recipe, relative to fp32 (issue 15's goal: <= 2x).

Usage: python benchmarks/train_step_cnn.py [PRESET] [RECIPE ...]   (default: small, the image recipes)
One thread, one process; Fashion-MNIST when installed, else the 8x8 digits; prints the median of 8
steps after 2 warm-up steps (the first call of a format compiles its kernels), in wall time and in
this process's CPU time (time.process_time: what to read on a shared, loaded machine).
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


def step_times(recipe: str, preset, data, steps: int = 8) -> tuple[list[float], list[float]]:
    model, opt = build(get_recipe(recipe), 0, preset, preset.model_config("cnn", data))

    def step(i: int) -> None:
        x, y = data.batch(i, preset.batch_size, 0)
        loss = F.cross_entropy(model(data.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    step(1)
    wall, cpu = [], []
    for i in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    preset = get_image_preset(argv[0] if argv else "small")
    try:
        data = load_data("fashion-mnist", preset)
    except DataMissing:
        data = load_data("digits", preset)
    names = argv[1:] or list(IMAGE_RECIPES)
    if "fp32" not in names:
        names = ["fp32", *names]
    base = None
    print(f"CNN ({preset.cnn_width}/{2 * preset.cnn_width} channels, {preset.hidden} hidden), batch "
          f"{preset.batch_size}, {data.source.split(':')[0]}", flush=True)
    for name in names:
        wall, cpu = (statistics.median(t) for t in step_times(name, preset, data))
        base = (wall, cpu) if name == "fp32" else base
        print(f"{name:14s} wall median {wall * 1e3:7.1f} ms x{wall / base[0]:5.2f}   "
              f"CPU median {cpu * 1e3:7.1f} ms x{cpu / base[1]:5.2f} of fp32", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
