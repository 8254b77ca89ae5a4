"""GPTQ on one SmolLM2 layer: floatlab against a maintained peer (llm-compressor), in one process.

Usage: python benchmarks/gptq.py [--layer model.layers.0.mlp.down_proj] [--format int4] [--group 128]
                                 [--windows 8] [--window 256] [--threads 1] [--repeats 3] [--profile]
       python benchmarks/gptq.py --whole-model [--format int4] [--block-group 64]

Loads SmolLM2-135M (``floatlab models --prepare smollm2`` first), collects the input Hessian
``2/n X^T X`` of ``--layer`` over ``--windows`` calibration windows of ``--window`` tokens
(floatlab's ``collect_hessians``), then quantizes that layer's weight with GPTQ, damping 0.01,
lazy batches of 128 columns, act-order off, one scale per ``--group`` columns:

* ``floatlab cold``: :func:`floatlab.ptq.gptq.gptq_weight` including the Cholesky factorization
  of the damped Hessian (its factor cache emptied before each run);
* ``floatlab warm``: the same call with the factor reused (what q/k/v, gate/up and every further
  format of ``floatlab compare`` get); its column loop is the native one
  (:mod:`floatlab.ptq.gptq_native`) where a C++ compiler is found;
* ``floatlab warm, Python column loop``: the same with the native loop off (the table rounder's
  eight tensor operations per column; same bits);
* ``floatlab per-column quantize``: the column loop calling :func:`floatlab.quantize` for every
  column and no factor reuse (the implementation before the table rounder; same bits);
* ``llm-compressor``: ``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`` (its eager
  CPU column loop, float32 Cholesky) on the same weight and Hessian. llm-compressor takes its
  group scales as an input (from its observer, on the original weight) while floatlab computes
  each group's scale when GPTQ reaches the group, from the updated weights; so the peer is given
  floatlab's final scales, and the two algorithms agree: same scales, same damping and order.

Then the same (group ``--block-group``) for every linear layer of ``--layer``'s transformer block (q, k, v, o, gate, up,
down) with the Hessians shared where the input is (q/k/v, gate/up, as ``floatlab compare``
shares them): floatlab factors each distinct Hessian once, the peer each layer's.

Prints the best and median wall time of ``--repeats`` runs each (the cases taking turns within
each repeat, so that a shared machine's load falls on all alike) and the ratio floatlab / peer
(below 1: floatlab faster), then whether the quantized weights agree: bit for bit, or how many
weights differ and by how many grid steps at most; once with the peer's own float32
factorization and once with the peer given floatlab's factor (float64 arithmetic, float32
result), which isolates the column loops. Install the peer beside floatlab's torch with
``pip install --no-deps llmcompressor`` (its imports need loguru, compressed-tensors,
transformers, accelerate, which floatlab's ``models`` extra already brings).
"""

from __future__ import annotations

import argparse
import statistics
import time


def _interleaved(cases: list, repeats: int) -> dict:
    """``{name: (best s, median s, last result)}``; the cases run in turn within each repeat, so
    that a shared machine's changing load falls on all of them alike. ``cases``: ``(name, fn,
    setup)``, ``setup`` (untimed, may be ``None``) run before each call, returning a restore
    callable or ``None``."""
    ts = {name: [] for name, _, _ in cases}
    out = {}
    for _ in range(repeats):
        for name, fn, setup in cases:
            restore = setup() if setup is not None else None
            try:
                t0 = time.perf_counter()
                out[name] = fn()
                ts[name].append(time.perf_counter() - t0)
            finally:
                if restore is not None:
                    restore()
    return {name: (min(t), statistics.median(t), out[name]) for name, t in ts.items()}


def _steps(a, b, scale, group: int) -> tuple[int, float]:
    """(weights that differ, max |difference| in grid steps) of two dequantized weights."""
    rows, cols = a.shape
    s = scale.reshape(rows, cols // group, 1)
    d = ((a - b).reshape(rows, cols // group, group) / s).abs()
    return int((a != b).sum()), float(d.max())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="model.layers.0.mlp.down_proj")
    p.add_argument("--format", default="int4", help="a floatlab integer format (the peer's int grid)")
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--block-group", type=int, default=64,
                   help="group size of the whole-block comparison (SmolLM2's 576 inputs take 64, not 128)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print where a cold floatlab call spends its time")
    p.add_argument("--whole-model", action="store_true",
                   help="instead: GPTQ of every linear layer (--format, --block-group), native vs Python column loop")
    args = p.parse_args(argv)
    if args.whole_model:
        return _whole_model(args)

    import torch

    from floatlab.models.loading import linear_layers, load_model
    from floatlab.ptq import gptq, gptq_native
    from floatlab.ptq.compare import CompareOptions, calibration_batches
    from floatlab.ptq.config import GPTQOptions
    from floatlab.ptq.quantizer import QuantSpec

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", log=lambda *a: None)
    layers = linear_layers(lm.model)
    lin = layers[args.layer]
    prefix = ".".join(args.layer.split(".")[:3]) + "."          # model.layers.N.
    block = {n: l for n, l in layers.items() if n.startswith(prefix)}
    calib = calibration_batches(lm, args.windows, CompareOptions(window=args.window, windows=2, calib=args.windows))
    t0 = time.perf_counter()
    hs = gptq.collect_hessians(lm.model, block, calib)
    t_hess = time.perf_counter() - t0
    shared: list = []               # one tensor per distinct input (q/k/v, gate/up), as compare shares them
    for n, h in hs.items():
        hs[n] = next((u for u in shared if u.shape == h.shape and torch.equal(u, h)), h)
        if hs[n] is h:
            shared.append(h)
    H = hs[args.layer]
    w = lin.weight.detach().to(torch.float32).clone()
    bw = {n: l.weight.detach().to(torch.float32).clone() for n, l in block.items()}
    del lm, calib, layers, block
    rows, cols = w.shape
    spec = QuantSpec(args.format, group_size=args.group)
    opts = GPTQOptions(damp=0.01, block_size=128, act_order=False)
    print(f"layer {args.layer} weight {rows}x{cols}, {args.format} group {args.group}, damp 0.01, block 128, "
          f"act-order off; Hessian from {args.windows} windows of {args.window} tokens ({t_hess:.1f} s); "
          f"{torch.get_num_threads()} thread(s), best/median of {args.repeats}")

    run = lambda: gptq.gptq_weight(w, H, spec, opts)    # noqa: E731
    ours = run()
    wq, scale = ours.dequantize(), ours.row_scale

    def plain():                    # per-column quantize calls, no factor reuse (the former loop)
        build, limit = gptq._TableRounder.__dict__["build"], gptq.FACTOR_CACHE_BYTES
        gptq._factors.clear()
        gptq._TableRounder.build, gptq.FACTOR_CACHE_BYTES = staticmethod(lambda *a: None), 0

        def restore():
            gptq._TableRounder.build, gptq.FACTOR_CACHE_BYTES = build, limit
        return restore

    def warm():
        gptq._factor(H, opts.damp, False)        # factored before (untimed): reused by the call

    def python_loop():              # warm, the table rounder's Python column loop (no native loop)
        warm()
        avail = gptq_native.available
        gptq_native.available = lambda: False

        def restore():
            gptq_native.available = avail
        return restore
    cases = [("floatlab cold (with Cholesky)", run, gptq._factors.clear),
             ("floatlab warm (factor reused)", run, warm),
             ("floatlab warm, Python column loop", run, python_loop),
             ("floatlab per-column quantize", run, plain)]

    peer = None
    try:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq import gptq_quantize as peer_mod
        peer = True
    except Exception as err:        # noqa: BLE001  (report any import failure, then go on)
        print(f"llm-compressor: not importable ({type(err).__name__}: {err}); "
              "pip install --no-deps llmcompressor")
    if peer:
        bits = int(args.format.removeprefix("int"))
        qargs = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group",
                                 group_size=args.group, actorder=None)
        s = scale.reshape(rows, cols // args.group).unsqueeze(0).contiguous()
        zp = torch.zeros_like(s, dtype=torch.int8)

        def peer_run():
            return peer_mod.quantize_weight(w.unsqueeze(0).clone(), H.unsqueeze(0).clone(), s, zp, None, qargs,
                                            blocksize=128, percdamp=0.01)[0][0]
        cases.append(("llm-compressor quantize_weight", peer_run, None))
        factor = gptq._factor(H, 0.01, False).hinv
        real = peer_mod.factorize_hessian
        peer_mod.factorize_hessian = lambda W, Hs, damp, fb: factor.unsqueeze(0).clone()
        try:
            pq_same = peer_run()
        finally:
            peer_mod.factorize_hessian = real
    res = _interleaved(cases, args.repeats)
    old = res["floatlab per-column quantize"][2]
    same_old = torch.equal(old.dequantize(), wq) and torch.equal(old.values.view(torch.int32), ours.values.view(torch.int32))
    if peer:
        peer_b, pq = res["llm-compressor quantize_weight"][0], res["llm-compressor quantize_weight"][2]
    rows_out = [(name, b, m) for name, (b, m, _) in res.items()]

    print(f"{'':34s} {'best s':>8s} {'median s':>9s} {'best / peer':>12s}")
    for name, b, m in rows_out:
        ratio = f"{b / peer_b:12.2f}" if peer else f"{'-':>12s}"
        print(f"{name:34s} {b:8.3f} {m:9.3f} {ratio}")
    py = res["floatlab warm, Python column loop"][2]
    same_py = torch.equal(py.dequantize(), wq) and torch.equal(py.values.view(torch.int32), ours.values.view(torch.int32))
    print(f"floatlab per-column quantize vs table rounder: {'bit for bit' if same_old else 'DIFFERENT'}; "
          f"Python column loop vs {'native' if gptq_native.available() else 'Python (no compiler)'} loop: "
          f"{'bit for bit' if same_py else 'DIFFERENT'}")
    if peer:
        n, mx = _steps(pq, wq, scale, args.group)
        print("llm-compressor (own float32 Cholesky) vs floatlab: "
              + ("bit for bit" if n == 0 else f"{n} of {rows * cols} weights differ ({100 * n / (rows * cols):.3f}%), "
                                              f"max {mx:.0f} grid step(s)"))
        n2, mx2 = _steps(pq_same, wq, scale, args.group)
        print("llm-compressor given floatlab's factor vs floatlab: "
              + ("bit for bit" if n2 == 0 and torch.equal(pq_same, wq) else f"{n2} weights differ, max {mx2:.0f} grid step(s)"))
    # the whole transformer block: floatlab factors each distinct Hessian once (cache emptied
    # before each run), the peer factors every layer's
    bspec = QuantSpec(args.format, group_size=args.block_group)
    sb = {n: gptq.gptq_weight(x, hs[n], bspec, opts).row_scale for n, x in bw.items()}

    def fl_block():
        return {n: gptq.gptq_weight(x, hs[n], bspec, opts) for n, x in bw.items()}
    bcases = [("floatlab block (cold)", fl_block, gptq._factors.clear)]
    if peer:
        def peer_block():
            out = {}
            for n, x in bw.items():
                r, c = x.shape
                sc = sb[n].reshape(r, c // args.block_group).unsqueeze(0).contiguous()
                out[n] = peer_mod.quantize_weight(x.unsqueeze(0).clone(), hs[n].unsqueeze(0).clone(), sc,
                                                  torch.zeros_like(sc, dtype=torch.int8), None, bqargs,
                                                  blocksize=128, percdamp=0.01)[0][0]
            return out
        bqargs = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group",
                                  group_size=args.block_group, actorder=None)
        bcases.append(("llm-compressor block", peer_block, None))
    bres = _interleaved(bcases, args.repeats)
    print(f"\ntransformer block {prefix[:-1]}: {len(bw)} layers ({', '.join(n[len(prefix):] for n in bw)}), "
          f"{len(shared)} distinct Hessians, {args.format} group {args.block_group}")
    print(f"{'':34s} {'best s':>8s} {'median s':>9s} {'best / peer':>12s}")
    for name, (b, m, _) in bres.items():
        ratio = f"{b / bres['llm-compressor block'][0]:12.2f}" if peer else f"{'-':>12s}"
        print(f"{name:34s} {b:8.3f} {m:9.3f} {ratio}")
    if peer:
        ours_b, theirs_b = bres["floatlab block (cold)"][2], bres["llm-compressor block"][2]
        tot, n_diff, mx = 0, 0, 0.0
        for n in bw:
            k, m = _steps(theirs_b[n], ours_b[n].dequantize(), sb[n], args.block_group)
            tot, n_diff, mx = tot + bw[n].numel(), n_diff + k, max(mx, m)
        print(f"llm-compressor (own float32 Cholesky) vs floatlab over the block: {n_diff} of {tot} weights differ "
              f"({100 * n_diff / tot:.3f}%), max {mx:.0f} grid step(s)")
    if args.profile:
        import cProfile
        import pstats
        gptq._factors.clear()
        pr = cProfile.Profile()
        pr.runcall(run)
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)


def _whole_model(args) -> None:
    """GPTQ of every linear layer of SmolLM2, each layer's factor computed afresh, with the native
    column loop and with the Python loop (in turn per layer); total seconds and bit-equality."""
    import torch

    from floatlab.models.loading import linear_layers, load_model
    from floatlab.ptq import gptq, gptq_native
    from floatlab.ptq import hessians as hessians_mod
    from floatlab.ptq.compare import CompareOptions, calibration_batches
    from floatlab.ptq.config import GPTQOptions
    from floatlab.ptq.quantizer import QuantSpec

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", log=lambda *a: None)
    layers = linear_layers(lm.model)
    calib = calibration_batches(lm, args.windows, CompareOptions(window=args.window, windows=2, calib=args.windows))
    t0 = time.perf_counter()
    hs = hessians_mod.shared_hessians(lm.model, layers, calib)
    t_hess = time.perf_counter() - t0
    spec, opts = QuantSpec(args.format, group_size=args.block_group), GPTQOptions()
    real = gptq_native.available
    tot, same = {"native": 0.0, "python": 0.0}, True
    try:
        for n, lin in layers.items():
            w = lin.weight.detach().float()
            out = {}
            for k in tot:
                gptq._factors.clear()
                gptq_native.available = real if k == "native" else (lambda: False)
                t = time.perf_counter()
                out[k] = gptq.gptq_weight(w, hs[n], spec, opts)
                tot[k] += time.perf_counter() - t
            same = same and torch.equal(out["native"].dequantize(), out["python"].dequantize())
    finally:
        gptq_native.available = real
    print(f"{len(layers)} layers, {args.format} group {args.block_group}, {torch.get_num_threads()} thread(s); Hessians "
          f"from {args.windows} windows of {args.window} tokens: {t_hess:.1f} s; GPTQ with the native column loop "
          f"{tot['native']:.1f} s{'' if real() else ' (not available: Python loop)'}, Python loop {tot['python']:.1f} s; "
          f"{'bit for bit' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
