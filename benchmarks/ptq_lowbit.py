"""Wall time and peak memory of the block-wise reconstruction methods (LWC, PTQ1.61) on SmolLM2.

Usage: python benchmarks/ptq_lowbit.py [--windows 32] [--window 256] [--epochs 20] [--blocks N]
                                       [--threads 2] [--method lwc|ptq161|both] [--amp auto|bf16|off]
                                       [--json data/lowbit_bench_smollm2.json]

Each method runs in its own process (so each peak is its own): it loads SmolLM2-135M
(``floatlab models --prepare smollm2`` first), builds ``--windows`` calibration windows of
``--window`` tokens from the documentation text, and quantizes weight-only: LWC on
``int2_asym_g64``, PTQ1.61 on ``ptq161``. ``--blocks N`` stops after the first N transformer
blocks (the others stay fp32) to measure quickly; the time of the whole model is then about
``30 / N`` times the measured reconstruction time. Prints the wall time (model load,
calibration, reconstruction), the process CPU time (readable on a loaded machine), the peak
resident memory (``ru_maxrss``) and the model's own size. ``--amp``: the reconstruction's mixed
precision (``ReconOptions.amp``; this benchmark's default ``auto`` takes ``bf16`` on CPUs that
multiply bfloat16 in hardware, AVX512-BF16 or AMX, and ``off`` elsewhere, where torch emulates
bfloat16 matmuls far slower than float32; the library's default is ``off``).
``--json PATH`` appends each run's record (with the command, the load average before and after,
and the machine) to a JSON list.
Goal (issue 14): under 15 minutes per method on 2 cores with 32 windows of 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

FORMATS = {"lwc": "int2_asym_g64", "ptq161": "ptq161"}


def run_one(args) -> dict:
    import torch

    from floatlab.models.loading import linear_layers, load_model
    from floatlab.ptq.apply import quantize_model
    from floatlab.ptq.compare import CompareOptions, calibration_batches
    from floatlab.ptq.config import PTQConfig, ReconOptions

    torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    lm = load_model("smollm2", log=lambda *a: None)
    model_mb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2 ** 20
    t_load = time.perf_counter() - t0
    opts = CompareOptions(window=args.window, windows=16, calib=args.windows)
    calib = calibration_batches(lm, args.windows, opts)
    fmt = FORMATS[args.method]
    overrides = ()
    if args.blocks:
        n = lm.model.config.num_hidden_layers
        overrides = tuple((f"model.layers.{i}.*", None, None) for i in range(args.blocks, n))
    cfg = PTQConfig(weight=fmt, method=args.method, overrides=overrides,
                    recon=ReconOptions(epochs=args.epochs, amp=args.amp))
    report = {}
    t1, c1 = time.perf_counter(), time.process_time()
    quantize_model(lm.model, cfg, calib=calib, report=report)
    t_rec, c_rec = time.perf_counter() - t1, time.process_time() - c1
    layers = len([n for n in linear_layers(lm.model)])
    return {"method": args.method, "format": fmt, "amp": args.amp, "windows": args.windows, "window": args.window,
            "epochs": args.epochs, "blocks": len(report["blocks"]), "threads": args.threads, "layers": layers,
            "seconds_load": t_load, "seconds_reconstruct": t_rec, "seconds_total": time.perf_counter() - t0,
            "cpu_seconds_reconstruct": c_rec, "cpu_seconds_total": time.process_time() - c0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "model_mb": model_mb,
            "block_seconds": [b["seconds"] for b in report["blocks"]],
            "block_loss": [[b["loss_start"], b["loss_end"]] for b in report["blocks"]]}


def _cpu_model() -> str:
    """The CPU's model name, family and model numbers, and torch's vector capability."""
    import torch
    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return (f"{info.get('model name', platform.processor() or platform.machine())} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}), torch {torch.backends.cpu.get_cpu_capability()}")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--blocks", type=int, default=0, help="reconstruct only the first N blocks (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="both", choices=["lwc", "ptq161", "both"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="ReconOptions.amp; auto (default): bf16 on CPUs with AVX512-BF16 or AMX, else off")
    p.add_argument("--json", default=None, help="append each run's record to this JSON list")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.amp == "auto":
        from floatlab.ptq.reconstruct import cpu_has_native_bf16
        args.amp = "bf16" if cpu_has_native_bf16() else "off"
    if args.child:
        print(json.dumps(run_one(args)))
        return
    for method in (["lwc", "ptq161"] if args.method == "both" else [args.method]):
        cmd = [sys.executable, __file__, "--child", "--method", method, "--windows", str(args.windows),
               "--window", str(args.window), "--epochs", str(args.epochs), "--blocks", str(args.blocks),
               "--threads", str(args.threads), "--amp", args.amp]
        load0 = os.getloadavg()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        r.update(load_before=load0, load_after=os.getloadavg(), cpu=platform.processor() or platform.machine(),
                 cpu_model=_cpu_model(),
                 cores=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 command="python benchmarks/ptq_lowbit.py " + " ".join(argv))
        if args.json:
            path = Path(args.json)
            data = json.loads(path.read_text()) if path.exists() else []
            if isinstance(data, dict):        # the docs' data file: notes beside a "runs" list
                data.setdefault("runs", []).append(r)
            else:
                data = data + [r]
            path.write_text(json.dumps(data, indent=1) + "\n")
        scale = 30 / r["blocks"] if args.blocks else 1
        print(f"{method:7s} {r['format']:14s} amp {r['amp']}, {r['windows']}x{r['window']} tokens, {r['epochs']} epochs, "
              f"{r['blocks']} blocks, {r['threads']} threads: reconstruction {r['seconds_reconstruct']:.0f} s"
              + (f" (not the whole model: its 30 blocks at this rate would take about "
                 f"{r['seconds_reconstruct'] * scale / 60:.1f} min, an estimate)" if args.blocks else
                 f" ({r['seconds_reconstruct'] / 60:.1f} min)")
              + f", total {r['seconds_total']:.0f} s; CPU time: reconstruction {r['cpu_seconds_reconstruct']:.0f} s"
              + (f" (30 blocks: about {r['cpu_seconds_reconstruct'] * scale / 60:.1f} CPU-min, an estimate)"
                 if args.blocks else "")
              + f", total {r['cpu_seconds_total']:.0f} s; peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(model {r['model_mb']:.0f} MB); load average {r['load_before'][0]:.1f} before, "
              f"{r['load_after'][0]:.1f} after")


if __name__ == "__main__":
    main(sys.argv[1:])
