"""Low-bit weight codecs side by side at matched bits per weight: the FineQ-style cluster codec
(:mod:`floatlab.codecs.cluster`) against plain 2- and 3-bit group integer grids, each rounded by
RTN and by GPTQ, on one model (issue 16's codec comparison).

Every point is a ``method:format`` pair, weight-only; it quantizes a fresh copy of the fp32 model
and records the exact bits per weight (``codec.bits`` summed over the layers: codes, index fields,
scales, zero points), the perplexity (or the encoders' mean cosine, as ``floatlab sweep``), and
each layer's **weight SQNR** ``10 log10(sum W^2 / sum (W - Q(W))^2)`` in dB (for GPTQ, ``Q(W)``
is GPTQ's rounded weight, which trades weight error for output error, so its weight SQNR can be
lower than RTN's while its perplexity is better). GPTQ's Hessians are collected once and shared.

Run::

    python -m floatlab.advise.codec_study --model smollm2 --points rtn:fineq,gptq:fineq,rtn:int2_asym_g64 \\
        --windows 8 --calib 16 --out docs/data/advise_fineq_smollm2.json

and ``--plot PATH`` draws perplexity against bits per weight.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

#: the default points: FineQ's presets and 2/3-bit group integers around their bits, RTN and GPTQ
FORMATS = ("int2_asym_g64", "cluster_222-330", "int2_asym_g32", "fineq", "fineq_g96", "int3_asym", "int3_asym_g128")
POINTS = tuple(f"{m}:{f}" for m in ("rtn", "gptq") for f in FORMATS)


def weight_sqnr(w: torch.Tensor, q: torch.Tensor) -> float:
    """``10 log10(sum w^2 / sum (w - q)^2)`` in dB (``inf`` when equal)."""
    w, q = w.double(), q.double()
    err = float(((w - q) ** 2).sum())
    sig = float((w ** 2).sum())
    return math.inf if err == 0 else 10 * math.log10(sig / err)


def run_study(lm, points, *, windows: int = 8, window: int = 256, calib: int = 16, pairs: int = 64,
              log=print, on_row=None) -> dict:
    """Quantize ``lm`` at every ``(method, format)`` of ``points`` and measure (see the module).
    ``on_row(results)``, if given, is called after every point (so an interrupted run keeps what
    it measured)."""
    from floatlab.models.loading import linear_layers
    from floatlab.provenance import environment
    from floatlab.ptq.apply import check_blocks, quantize_model
    from floatlab.ptq.compare import CompareOptions, calibration_batches, measure_single
    from floatlab.ptq.config import PTQConfig
    from floatlab.ptq.sweep import model_bits

    configs = [PTQConfig(weight=f, method=m) for m, f in points]
    layers = linear_layers(lm.model)
    for cfg in configs:
        check_blocks(layers, cfg)
    copts = CompareOptions(pairs=pairs, windows=windows, window=window, calib=calib)
    encoder = lm.kind == "encoder"
    results = {"model": lm.name, "metric": "cos_mean" if encoder else "perplexity", "weights_only": True,
               "options": {"windows": windows, "window": window, "calib": calib, "pairs": pairs},
               "threads": torch.get_num_threads(), "environment": environment(), "rows": []}
    c0 = time.process_time()
    results["fp32"] = measure_single(lm, lm.model, copts, ref_model=lm.model if encoder else None)
    results["fp32"]["cpu_seconds"] = time.process_time() - c0
    needs = any(c.needs_calibration() for c in configs)
    batches = calibration_batches(lm, calib, copts) if needs else []
    hessians = None
    for cfg in configs:
        c0 = time.process_time()
        if cfg.steps() == ((), "gptq") and hessians is None:
            from floatlab.ptq.gptq import collect_hessians
            hessians = collect_hessians(lm.model, layers, batches)
        model = copy.deepcopy(lm.model)
        quantize_model(model, cfg, calib=batches, hessians=hessians if cfg.steps() == ((), "gptq") else None)
        sq = {n: weight_sqnr(lin.weight.detach(), model.get_submodule(n).weight.detach()) for n, lin in layers.items()}
        metric = measure_single(lm, model, copts, ref_model=lm.model if encoder else None)
        del model
        bits, n = model_bits(layers, cfg)
        finite = [v for v in sq.values() if math.isfinite(v)]
        row = {"method": cfg.method, "format": cfg.weight.format, "bits_per_weight": bits / n, **metric,
               "weight_sqnr_db": sq, "weight_sqnr_mean_db": sum(finite) / len(finite),
               "weight_sqnr_min_db": min(finite), "cpu_seconds": time.process_time() - c0}
        results["rows"].append(row)
        log(f"{cfg.method}:{cfg.weight.format}: {row['bits_per_weight']:.4f} bits/weight, "
            f"{results['metric']} {row.get(results['metric'], float('nan')):.4g}, weight SQNR mean "
            f"{row['weight_sqnr_mean_db']:.2f} dB (min {row['weight_sqnr_min_db']:.2f}), {row['cpu_seconds']:.0f} s CPU")
        if on_row is not None:
            on_row(results)
    return results


def plot_study(results: dict, path) -> None:
    """Perplexity (log scale) and mean weight SQNR against bits per weight, one line per method and
    codec family (integer grids, cluster codecs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = results["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for method, style in (("rtn", "o-"), ("gptq", "s--")):
        for family, color in (("int", "C0"), ("cluster", "C3")):
            rows = sorted((r for r in results["rows"] if r["method"] == method
                           and (r["format"].startswith("int") == (family == "int"))), key=lambda r: r["bits_per_weight"])
            if not rows:
                continue
            x = [r["bits_per_weight"] for r in rows]
            label = f"{method} {'int group' if family == 'int' else 'FineQ cluster'}"
            axes[0].plot(x, [r[m] for r in rows], style, color=color, label=label)
            axes[1].plot(x, [r["weight_sqnr_mean_db"] for r in rows], style, color=color, label=label)
            for r in rows:
                axes[0].annotate(r["format"], (r["bits_per_weight"], r[m]), fontsize=6, xytext=(3, 3),
                                 textcoords="offset points")
    axes[0].axhline(results["fp32"][m], color="k", ls=":", lw=1, label="fp32")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"{m} ({results['options']['windows']} x {results['options']['window']} tokens)")
    axes[1].set_ylabel("mean per-layer weight SQNR (dB)")
    for ax in axes:
        ax.set_xlabel("bits per weight (every stored bit)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['model']}: FineQ cluster codec vs group integers (weight-only)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--points", default=",".join(POINTS), help="method:format, comma-separated")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--plot", type=Path, help="PNG of the metric and weight SQNR against bits")
    a = ap.parse_args(argv)
    points = []
    for p in a.points.split(","):
        method, sep, fmt = p.strip().partition(":")
        if not sep or not fmt:
            ap.error(f"--points: {p!r} is not method:format (e.g. gptq:fineq)")
        points.append((method, fmt))
    from floatlab.ptq.config import PTQConfig
    for m, f in points:                                 # every name checked before the model loads
        try:
            PTQConfig(weight=f, method=m)
        except ValueError as err:
            ap.error(f"--points: {m}:{f}: {err}")
    if a.threads:
        torch.set_num_threads(a.threads)
    from floatlab.atomic import write_json
    from floatlab.models import load_model
    import sys
    lm = load_model(a.model)
    t0 = time.time()
    command = "python -m floatlab.advise.codec_study " + " ".join(sys.argv[1:] if argv is None else argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save(res: dict) -> None:
        res["command"], res["seconds_wall"] = command, time.time() - t0
        write_json(a.out, res)
    res = run_study(lm, points, windows=a.windows, window=a.window, calib=a.calib, on_row=save)
    res["complete"] = True
    save(res)
    if a.plot:
        plot_study(res, a.plot)
    print(f"wrote {a.out}" + (f" and {a.plot}" if a.plot else ""))


if __name__ == "__main__":
    main()
