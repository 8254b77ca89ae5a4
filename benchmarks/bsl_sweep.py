"""Binary stochastic learning's device settings, chosen on held-out training images (not the test set).

Trains the Fashion-MNIST MLP 784-256-10 (floatlab.nn.bsl) with one rule and one device setting per
run, on the first 20,000 training images (the ``small`` preset's data and batch order: 400 steps of
64), and reports accuracy on training images 50,000-59,999 (never trained on here). Grid:
``levels`` x ``gain`` (w_max = gain / sqrt(fan_in)) x ``rate`` (pulse probability), for the rules
given. ``--test`` scores a chosen setting on the test set instead, over ``--seeds`` seeds (the same
data, batches and evaluation as ``floatlab train --task fashion-mnist --model mlp --rule bsl
--preset small``). One thread; each run takes seconds on an idle core.

    OMP_NUM_THREADS=1 python benchmarks/bsl_sweep.py --rules bsl,sign --out sweep.json
    OMP_NUM_THREADS=1 python benchmarks/bsl_sweep.py --rules bsl --levels 256 --gains 8 --rates 0.5 --test --seeds 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from floatlab.nn.bsl import build_rule
from floatlab.train.image_run import get_image_preset
from floatlab.train.images import ImageData, load_fashion_mnist


def run(rule: str, levels: int, gain: float, rate: float, data: ImageData, val, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    net, opt = build_rule(rule, data.shape, 256, 10, seed=seed, levels=levels, gain=gain)
    for g in opt.param_groups:
        if "rate" in g:
            g["rate"] = rate
    for step in range(steps):
        x, y = data.batch(step, 64, seed)
        loss = net.training_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(val[0]).argmax(1) == val[1]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default="bsl,sign")
    ap.add_argument("--levels", default="32,64,128,256,512")
    ap.add_argument("--gains", default="2,4,8,16")
    ap.add_argument("--rates", default="1")
    ap.add_argument("--steps", type=int, default=get_image_preset("small").steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1 (with --test)")
    ap.add_argument("--test", action="store_true", help="score on the 10,000 test images instead (for a "
                    "setting already chosen on the held-out images)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    full = load_fashion_mnist()
    data = ImageData(full.train_x[:20000], full.train_y[:20000], full.test_x[:0], full.test_y[:0], full.source)
    val = (full.test_x, full.test_y) if a.test else (full.train_x[50000:], full.train_y[50000:])
    seeds = range(a.seeds) if a.test else [a.seed]
    rows = []
    for rule, levels, gain, rate in itertools.product(a.rules.split(","), map(int, a.levels.split(",")),
                                                     map(float, a.gains.split(",")), map(float, a.rates.split(","))):
        if rule != "bsl" and rate != 1.0:
            continue
        for seed in seeds:
            t = time.perf_counter()
            acc = run(rule, levels, gain, rate, data, val, a.steps, seed)
            rows.append({"rule": rule, "levels": levels, "gain": gain, "rate": rate, "seed": seed,
                         "test_accuracy" if a.test else "val_accuracy": acc})
            print(f"{rule:5s} levels {levels:4d} gain {gain:5.1f} rate {rate:4.2f} seed {seed}: "
                  f"{'test' if a.test else 'val'} {100 * acc:6.2f} %  ({time.perf_counter() - t:.1f} s)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"steps": a.steps, "test": a.test, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
