"""Time of one training step of block-wise reconstruction (LWC, PTQ1.61) on SmolLM2's first block,
with the weight steps' native kernels and with their torch steps, side by side in one process.

Usage: python benchmarks/recon_step.py [--method lwc|ptq161|both] [--steps 40] [--rounds 3]
                                       [--threads 2] [--amp off|bf16]

Builds block 0 of SmolLM2-135M (``floatlab models --prepare smollm2`` first) with
``floatlab.ptq.reconstruct``'s own learning linears (LWC on ``int2_asym_g64``, PTQ1.61 on
``ptq161``) on one calibration window of 256 tokens, then times ``--steps`` AdamW steps (forward,
the method's loss against the full-precision block, backward, update) and, separately, the seven
fake-quantized weights' forward and backward alone. The native and torch variants alternate for
``--rounds`` rounds (``FLOATLAB_NATIVE`` switched between them); the median of the rounds is
printed with the ratio torch / native.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


def build(method: str, amp: str):
    from floatlab.models.loading import load_model
    from floatlab.ptq import reconstruct as R
    from floatlab.ptq.compare import CompareOptions, calibration_batches
    from floatlab.ptq.config import PTQConfig, ReconOptions
    from floatlab.ptq.modules import set_module

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # the weight-loading bar would break the table's lines
    lm = load_model("smollm2", log=lambda *a: None)
    model = lm.model
    model.config.use_cache = False
    calib = calibration_batches(lm, 1, CompareOptions(window=256, windows=16, calib=1))
    fmt = {"lwc": "int2_asym_g64", "ptq161": "ptq161"}[method]
    cfg = PTQConfig(weight=fmt, method=method, recon=ReconOptions(epochs=1, amp=amp))
    meth = R.method_for(cfg)
    block = model.get_submodule("model.layers.0")
    seq = R.capture_inputs(model, block, calib)[0]
    x = seq.args[0]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        act_max = {}
        hooks = [block.get_submodule(n).register_forward_pre_hook(
            lambda mod, a, n=n: act_max.__setitem__(n, a[0].abs().amax((0, 1)))) for n in names]
        target = R._run(block, x, seq)
        for h in hooks:
            h.remove()
    learners = {n: meth.learner(n, block.get_submodule(n), cfg.weight_spec(f"model.layers.0.{n}"),
                                {"act_max": act_max[n]}, gen, cfg) for n in names}
    for p in block.parameters():
        p.requires_grad_(False)
    for n in names:
        set_module(block, n, R._ReconLinear(block.get_submodule(n), learners[n], None, None))
    opt = torch.optim.AdamW([g for lr in learners.values() for g in lr.param_groups()], weight_decay=0.0,
                            foreach=True)
    opts = cfg.recon

    def step():
        opt.zero_grad(set_to_none=True)
        with R._train_context(opts, x):
            out = R._run(block, x, seq)
        loss = meth.loss(out.to(torch.float32), target, target, seq.mask)
        loss.backward()
        opt.step()

    def weights():
        for lr in learners.values():
            w = lr.weight()
            w.backward(torch.ones_like(w))

    return step, weights


def timed(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps * 1e3


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="both", choices=["lwc", "ptq161", "both"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", default="off", choices=["off", "bf16"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from floatlab.kernels import native_recon
    if not native_recon.available():
        sys.exit("the native reconstruction kernel could not be built (no C++ compiler?): nothing to compare")
    print(f"block 0 of SmolLM2, 256 tokens, {args.threads} threads, amp {args.amp}, {args.steps} steps x "
          f"{args.rounds} rounds (medians), ms")
    print(f"{'method':8s} {'':8s} {'native':>8s} {'torch':>8s} {'torch/native':>13s}")
    for method in (["lwc", "ptq161"] if args.method == "both" else [args.method]):
        step, weights = build(method, args.amp)
        got = {(part, v): [] for part in ("step", "weights") for v in ("native", "torch")}
        for _ in range(args.rounds):
            for variant, flag in (("native", "1"), ("torch", "0")):
                os.environ["FLOATLAB_NATIVE"] = flag
                got[("step", variant)].append(timed(step, args.steps))
                got[("weights", variant)].append(timed(weights, args.steps))
        os.environ.pop("FLOATLAB_NATIVE", None)
        for part in ("step", "weights"):
            nat, tor = (statistics.median(got[(part, v)]) for v in ("native", "torch"))
            print(f"{method:8s} {part:8s} {nat:8.1f} {tor:8.1f} {tor / nat:13.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
