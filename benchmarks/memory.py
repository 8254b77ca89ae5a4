"""Peak resident memory of ``floatlab compare`` and ``floatlab ptq`` relative to the fp32 model.

Usage: python benchmarks/memory.py [--model smollm2|PATH] [--formats F1,F2,...] [--windows 4]
                                   [--window 128] [--calib 8] [--threads 1] [--only NAME,...]

Each command runs as its own child process of this script (the ``floatlab`` CLI, exactly as a
user types it, output into a temporary folder), and its peak resident memory is the
``ru_maxrss`` that ``os.wait4`` reports for that child alone. Printed beside it: the fp32 size
of the model (4 bytes per parameter, read from the safetensors headers, whatever dtype the
checkpoint stores), the peak as a multiple of it, and the same after subtracting the resident
memory of a process that only imports torch, transformers and floatlab and loads the tokenizer
(the fixed cost of the interpreter and libraries, which dominates for a small model).

Runs (``--only`` picks some):

* ``compare``: ``floatlab compare`` over ``--formats`` (default 7 formats, RTN, weights and
  activations), one quantized variant held at a time, its layers as packed codes decoded in each
  forward pass, the fp32 model's checkpoint-mapped pages held one layer at a time;
* ``compare-gptq``: the same with ``--method gptq --weights-only`` (GPTQ's Hessians collected
  one transformer block at a time for each format);
* ``ptq-gptq`` / ``ptq-gptq-blockwise``: ``floatlab ptq --method gptq --format int4``, the whole
  model in memory vs ``--blockwise`` (the checkpoint read one transformer block at a time);
* ``ptq-rtn`` / ``ptq-rtn-blockwise``: the same with RTN (no calibration).

Peak resident memory counts the checkpoint's file pages while they are mapped into the process;
pages that a run drops after use (``CheckpointWeights.paged``) stay in the system's page cache,
which is not counted (it is reclaimable, and shared with any other reader of the file).

Goal (issue 17): peak <= 1.5x the fp32 checkpoint. The numbers in docs/workflow.md come from this
script (run, size and analysis there); it asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMATS = "bf16,e4m3,hif8,mxfp8_e4m3,int8,mxfp4,nvfp4"
RUNS = ("baseline", "compare", "compare-gptq", "ptq-rtn", "ptq-rtn-blockwise", "ptq-gptq", "ptq-gptq-blockwise")


def fp32_bytes(folder: Path) -> int:
    """4 bytes per parameter of the checkpoint's ``*.safetensors`` files (from their headers)."""
    n = 0
    for p in sorted(folder.glob("*.safetensors")):
        with open(p, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        for k, v in header.items():
            if k != "__metadata__":
                count = 1
                for d in v["shape"]:
                    count *= d
                n += count
    return 4 * n


def model_folder(model: str) -> Path:
    from floatlab.models.loading import resolve_model

    return Path(resolve_model(model, log=lambda *a: None)[1])


def measure(cmd: list[str], env: dict) -> tuple[int, float, int]:
    """``(peak resident bytes, seconds, exit status)`` of ``cmd`` run as a child process."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
    return usage.ru_maxrss * 1024, time.time() - t0, proc.returncode     # ru_maxrss: KiB on Linux


def commands(args, out: Path) -> dict[str, list[str]]:
    fl = [sys.executable, "-c", "from floatlab.cli import main; main()"]      # the `floatlab` command
    data = ["--windows", str(args.windows), "--window", str(args.window)]
    ptq = [*fl, "ptq", "--model", args.model, "--format", "int4", *data, "--overwrite"]
    baseline = ("import torch, transformers, floatlab; from transformers import AutoTokenizer; "
                f"AutoTokenizer.from_pretrained({str(model_folder(args.model))!r})")
    return {
        "baseline": [sys.executable, "-c", baseline],
        "compare": [*fl, "compare", "--model", args.model, "--formats", args.formats, *data,
                    "--out", str(out / "compare")],
        "compare-gptq": [*fl, "compare", "--model", args.model, "--formats", args.formats, "--method", "gptq",
                         "--weights-only", "--calib", str(args.calib), *data, "--out", str(out / "compare-gptq")],
        "ptq-rtn": [*ptq, "--method", "rtn", "--out", str(out / "rtn")],
        "ptq-rtn-blockwise": [*ptq, "--method", "rtn", "--blockwise", "--out", str(out / "rtn-b")],
        "ptq-gptq": [*ptq, "--method", "gptq", "--calib", str(args.calib), "--out", str(out / "gptq")],
        "ptq-gptq-blockwise": [*ptq, "--method", "gptq", "--calib", str(args.calib), "--blockwise",
                               "--out", str(out / "gptq-b")],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="built-in model name or local HF model folder")
    ap.add_argument("--formats", default=FORMATS, help="compare's formats (comma-separated)")
    ap.add_argument("--windows", type=int, default=4, help="perplexity windows")
    ap.add_argument("--window", type=int, default=128, help="tokens per window")
    ap.add_argument("--calib", type=int, default=8, help="GPTQ calibration windows")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    ap.add_argument("--only", default=",".join(RUNS), help=f"runs, comma-separated: {', '.join(RUNS)}")
    args = ap.parse_args()
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    bad = [r for r in only if r not in RUNS]
    if bad:
        ap.error(f"unknown run {bad[0]!r}; choose from {', '.join(RUNS)}")
    if "baseline" not in only:
        only.insert(0, "baseline")
    folder = model_folder(args.model)
    size = fp32_bytes(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    gib = 2 ** 30
    print(f"model {args.model} ({folder}): fp32 size {size / gib:.3f} GiB; {args.windows} windows x {args.window} "
          f"tokens, GPTQ calib {args.calib} windows, {args.threads} thread(s)")
    print(f"{'run':<20} {'peak RSS GiB':>12} {'x fp32':>7} {'(peak-base) x fp32':>19} {'seconds':>8}")
    base = 0
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args, Path(tmp))
        for name in only:
            peak, secs, rc = measure(cmds[name], env)
            if name == "baseline":
                base = peak
            status = "" if rc == 0 else f"  FAILED (exit {rc})"
            print(f"{name:<20} {peak / gib:>12.3f} {peak / size:>7.2f} {(peak - base) / size:>19.2f} "
                  f"{secs:>8.1f}{status}", flush=True)
    print("commands:")
    for n, c in commands(args, Path("OUT")).items():
        if n in only and n != "baseline":
            print("  floatlab " + " ".join(c[3:]))


if __name__ == "__main__":
    main()
