"""Binary stochastic learning's device settings, chosen on held-out training images (not the test set).

Trains the Fashion-MNIST MLP 784-256-10 (floatlab.nn.bsl) with one rule and one device setting per
run, on the first 20,000 training images (the ``small`` preset's data and batch order: 400 steps of
64), and reports accuracy on training images 50,000-59,999 (never trained on here). Grid:
``levels`` x ``gain`` (w_max = gain / sqrt(fan_in)) x ``rate`` (pulse probability), for the rules
given. One thread; each run takes seconds.

    OMP_NUM_THREADS=1 python benchmarks/bsl_sweep.py --rules bsl,sign --out sweep.json
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
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    full = load_fashion_mnist()
    data = ImageData(full.train_x[:20000], full.train_y[:20000], full.test_x[:0], full.test_y[:0], full.source)
    val = (full.train_x[50000:], full.train_y[50000:])
    rows = []
    for rule, levels, gain, rate in itertools.product(a.rules.split(","), map(int, a.levels.split(",")),
                                                     map(float, a.gains.split(",")), map(float, a.rates.split(","))):
        if rule != "bsl" and rate != 1.0:
            continue
        t = time.perf_counter()
        acc = run(rule, levels, gain, rate, data, val, a.steps, a.seed)
        rows.append({"rule": rule, "levels": levels, "gain": gain, "rate": rate, "val_accuracy": acc})
        print(f"{rule:5s} levels {levels:4d} gain {gain:5.1f} rate {rate:4.2f}: val {100 * acc:6.2f} %"
              f"  ({time.perf_counter() - t:.1f} s)", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"steps": a.steps, "seed": a.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
