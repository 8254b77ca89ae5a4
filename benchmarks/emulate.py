"""Cost of floatlab.emulate over plain float32: a 3-layer MLP forward and a 256x256 LU.

Usage: python benchmarks/emulate.py [--quick] [--reps N] [--only=elementwise] [--only=LU ...]
One thread, one process; every setting of a case is warmed up once (which also compiles floatlab's
kernels), then the settings take turns within each repeat (plain float32, fp16, bf16, ...), so a
change of load on a shared machine falls on all alike. Printed: best and median milliseconds and
their ratios to plain float32, and the median process CPU time per call with its ratio (the least
load-sensitive number on a shared machine).

Cases
* elementwise: the MLP's non-matmul work (bias adds, ReLU, a softmax over the output) on
  activations of the same shapes, with the matmuls taken out: the goal is within 10x of float32;
* matmul: the three products alone, rounded once (accumulator=None) and through an
  fp32:rne:16 accumulator (a K-loop of rounded chunk sums, the emulated tensor core);
* MLP forward: the whole forward pass;
* LU 256x256: the right-looking LU as plain torch code (the same code timed under emulate), and
  floatlab.linalg.lu_factor (every operation rounded, without the dispatch layer).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import floatlab
from floatlab.linalg import lu_factor


def timeit(fn, repeats: int) -> tuple[float, float]:
    """Best and median wall time of ``repeats`` calls after a warm-up; the mean process CPU time
    per call goes to ``CPU[0]`` (CPU time is what a loaded, shared machine changes least)."""
    fn()
    times = []
    c0 = time.process_time()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    CPU[0] = (time.process_time() - c0) / repeats
    return min(times), statistics.median(times)


CPU = [0.0]


def interleaved(fns, repeats: int) -> list[tuple[float, float, float]]:
    """(best wall, median wall, median process CPU time) of each of ``fns`` over ``repeats``
    rounds, each round calling every function once in turn (after one warm-up call each)."""
    for fn in fns:
        fn()
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    return [(min(w), statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def right_looking_lu(a: torch.Tensor) -> torch.Tensor:
    a = a.clone()
    n = a.shape[0]
    for k in range(n):
        p = k + int(torch.argmax(a[k:, k].abs()))
        a[[k, p]] = a[[p, k]]
        if k < n - 1:
            a[k + 1:, k] = a[k + 1:, k] / a[k, k]
            a[k + 1:, k + 1:] = a[k + 1:, k + 1:] - a[k + 1:, k, None] * a[k, None, k + 1:]
    return a


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    quick = "--quick" in argv
    only = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]
    reps = 3 if quick else 7
    if "--reps" in argv:
        reps = int(argv[argv.index("--reps") + 1])
    g = torch.Generator().manual_seed(0)
    batch, width = 256, 512
    x = torch.randn(batch, width, generator=g)
    ws = [torch.randn(width, width, generator=g) / width ** 0.5 for _ in range(2)] + \
         [torch.randn(64, width, generator=g) / width ** 0.5]
    bs = [torch.randn(w.shape[0], generator=g) / 10 for w in ws]
    acts = [torch.randn(batch, w.shape[0], generator=g) for w in ws]   # stand-ins for x @ W.T

    def elementwise():
        out = None
        for i, (a, b) in enumerate(zip(acts, bs)):
            h = a + b
            out = torch.relu(h) if i < 2 else torch.softmax(h, -1)
        return out

    def matmuls():
        h = x
        for w in ws:
            h = h @ w.T
        return h

    def mlp():
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = h @ w.T + b
            h = torch.relu(h) if i < 2 else torch.softmax(h, -1)
        return h

    A = floatlab.linalg.randsvd(256, 1e3, generator=g).float()

    settings = [("fp16", {}), ("bf16", {}), ("e4m3", {}), ("hif8", {}), ("fp16", {"rounding": "sr", "generator": "g"}),
                ("fp16", {"accumulator": "fp32:rne:16"})]
    cases = [("elementwise", elementwise), ("matmul", matmuls), ("MLP forward", mlp),
             ("LU 256 (torch code)", lambda: right_looking_lu(A))]
    print(f"torch {torch.__version__}, 1 thread; MLP {batch}x{width} -> {width} -> {width} -> 64; "
          "%d repeats (elementwise: %d; LU: 2), the settings of a case taking turns within each repeat so that "
          "a change of machine load falls on all alike; ratio = emulated median / float32 median, best/best "
          "the same for the best times; cpu = median process CPU time per call" % (reps, 8 * reps))
    print(f"{'case':22s} {'setting':30s} {'ms best':>9s} {'ms median':>10s} {'ratio':>7s} {'best/best':>9s} "
          f"{'cpu ms':>8s} {'cpu ratio':>9s}")
    for name, fn in cases:
        if only and not any(name.startswith(o) for o in only):
            continue
        reps_here = (1 if quick else 2) if name.startswith("LU") else reps * (8 if name == "elementwise" else 1)
        runs = [("float32 (plain)", fn)]
        for fmt, opts in settings:
            if name.startswith("LU") and opts.get("accumulator"):
                continue
            kw = dict(opts)
            if kw.get("generator") == "g":
                kw["generator"] = torch.Generator().manual_seed(0)
            label = fmt + "".join(f" {k}={v}" for k, v in opts.items() if k != "generator")

            def run(fn=fn, fmt=fmt, kw=kw):
                with floatlab.emulate(fmt, **kw):
                    return fn()

            runs.append((label, run))
        stats = interleaved([f for _, f in runs], reps_here)
        (best0, med0, cpu0) = stats[0]
        for (label, _), (b, m, c) in zip(runs, stats):
            print(f"{name:22s} {label:30s} {b * 1e3:9.2f} {m * 1e3:10.2f} {m / med0:7.2f} {b / best0:9.2f} "
                  f"{c * 1e3:8.2f} {c / cpu0:9.2f}", flush=True)
    if only and not any(o.startswith("LU") for o in only):
        return
    # LU with every operation rounded, without the dispatch layer
    _, base = timeit(lambda: right_looking_lu(A), 1 if quick else 3)
    for fmt in ("fp16", "bf16", "e4m3"):
        b, m = timeit(lambda fmt=fmt: lu_factor(A, fmt), 1 if quick else 3)
        print(f"{'LU 256 (linalg)':22s} {'lu_factor ' + fmt:30s} {b * 1e3:9.2f} {m * 1e3:10.2f} {m / base:7.2f}",
              flush=True)
    b, m = timeit(lambda: torch.linalg.lu_factor(A), reps)
    print(f"{'LU 256 (LAPACK)':22s} {'torch.linalg.lu_factor fp32':30s} {b * 1e3:9.2f} {m * 1e3:10.2f} "
          f"{m / base:7.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
