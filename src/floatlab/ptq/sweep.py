"""The bit-width sweep: several PTQ methods over several bit-widths on one model, quality against
bits per weight (the PTQ benchmark's cross-bit-width view, Zhao et al. 2025), with every bit
counted: ``floatlab sweep``.

Each point is a (method, weight format) pair, weight-only: the grid of ``methods`` x ``bits``
(format ``int{b}_asym_g{group}`` by default: an asymmetric integer grid with fp16 scales and
``b``-bit zero points per group of input columns) plus any extra points (e.g. ``ptq161:ptq161``,
``rtn:binary_mean``). Every point quantizes a fresh copy of the fp32 model (one at a time) and is
measured with the metric ``floatlab ptq``/``eval`` record (:func:`floatlab.ptq.compare.measure_single`:
perplexity for causal LMs, mean cosine to the fp32 embeddings for encoders). Bits per weight are
exact: :func:`model_bits` sums ``spec.codec.bits(shape)`` over the quantized layers (codes,
scales, zero points, masks, learned factors). GPTQ's Hessians are collected once and shared by
the points that run plain ``gptq``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from floatlab import progress as _progress
from floatlab.ptq.config import PTQConfig, ReconOptions

#: the default weight format of a sweep point at ``b`` bits
TEMPLATE = "int{bits}_asym_g{group}"


def model_bits(layers: dict[str, nn.Linear], config: PTQConfig) -> tuple[int, int]:
    """``(bits, weights)`` over the layers ``config`` quantizes: ``spec.codec.bits(shape)`` summed,
    and their number of weights. Layers kept in fp32 are not counted."""
    bits = n = 0
    for name, lin in layers.items():
        spec = config.weight_spec(name)
        if spec is None:
            continue
        bits += spec.codec.bits(tuple(lin.weight.shape))
        n += lin.weight.numel()
    return bits, n


@dataclass
class SweepOptions:
    """What :func:`run_sweep` runs.

    Args:
        methods: PTQ method chains of the grid (``rtn``, ``gptq``, ``awq``, ``lwc``, ...).
        bits: the grid's bit-widths.
        group: input columns per scale group of the grid's format (``None``: per row).
        template: the grid's format, ``{bits}`` and ``{group}`` filled in.
        extra: additional ``(method, format)`` points.
        calib: calibration texts / windows (methods that calibrate).
        recon: :class:`~floatlab.ptq.config.ReconOptions` of ``lwc``/``ptq161``.
        pairs, windows, window: the evaluation (as ``floatlab compare``).
        nonfinite_tokens: PTQConfig's policy for non-finite calibration activations.
    """

    methods: tuple[str, ...] = ("rtn", "gptq", "awq", "lwc")
    bits: tuple[int, ...] = (2, 3, 4)
    group: int | None = 64
    template: str = TEMPLATE
    extra: tuple[tuple[str, str], ...] = ()
    calib: int = 32
    recon: ReconOptions = field(default_factory=ReconOptions)
    pairs: int = 64
    windows: int = 16
    window: int = 256
    nonfinite_tokens: str = "error"

    def grid_format(self, bits: int) -> str:
        if self.group is None:
            return self.template.replace("_g{group}", "").format(bits=bits)
        return self.template.format(bits=bits, group=self.group)

    def points(self) -> list[tuple[str, str]]:
        """``(method, format)`` of every point: the grid (methods outer), then the extra points."""
        pts = [(m, self.grid_format(b)) for m in self.methods for b in self.bits]
        return pts + [p for p in self.extra if p not in pts]

    def configs(self) -> list[PTQConfig]:
        """The weight-only :class:`PTQConfig` of every point (validates every name first)."""
        return [PTQConfig(weight=f, method=m, recon=self.recon, nonfinite_tokens=self.nonfinite_tokens)
                for m, f in self.points()]


def run_sweep(lm, opts: SweepOptions, on_row=None) -> dict:
    """Quantize ``lm`` (a :class:`~floatlab.models.loading.LoadedModel`) at every point of
    ``opts`` and measure; returns the results dict (``rows``: one per point with ``method``,
    ``format``, ``bits_per_weight``, the metric, ``seconds``, and for reconstruction methods the
    per-block losses; ``fp32``: the unquantized model's metric; ``environment``:
    :func:`floatlab.provenance.environment`). ``on_row(results)``, if given, is called after the
    fp32 baseline and after every point with the results so far (``floatlab sweep`` writes them,
    so an interrupted sweep keeps what it measured). Raises ``ValueError`` for a bad method or
    format before any work."""
    from floatlab.models.loading import linear_layers
    from floatlab.provenance import environment
    from floatlab.ptq.apply import check_blocks, quantize_model
    from floatlab.ptq.compare import CompareOptions, calibration_batches, measure_single

    t_all = time.time()
    configs = opts.configs()
    layers = linear_layers(lm.model)
    for cfg in configs:
        check_blocks(layers, cfg)
    copts = CompareOptions(pairs=opts.pairs, windows=opts.windows, window=opts.window, calib=opts.calib)
    encoder = lm.kind == "encoder"
    results = {"model": lm.name, "model_type": lm.model_type, "kind": lm.kind, "baseline_note": lm.baseline_note,
               "weights_only": True, "metric": "cos_mean" if encoder else "perplexity",
               "options": {"methods": list(opts.methods), "bits": list(opts.bits), "group": opts.group,
                           "template": opts.template, "extra": [list(p) for p in opts.extra], "calib": opts.calib,
                           "recon": vars(opts.recon).copy(), "pairs": opts.pairs, "windows": opts.windows,
                           "window": opts.window, "nonfinite_tokens": opts.nonfinite_tokens},
               "threads": torch.get_num_threads(), "environment": environment(), "rows": []}
    t0, c0 = time.time(), time.process_time()
    with _progress.scope("fp32"):
        results["fp32"] = {**measure_single(lm, lm.model, copts, ref_model=lm.model if encoder else None),
                           "bits_per_weight": 32.0, "seconds": time.time() - t0,
                           "cpu_seconds": time.process_time() - c0}
    if on_row is not None:
        on_row(results)
    calib = calibration_batches(lm, opts.calib, copts) if any(c.needs_calibration() for c in configs) else []
    hessians = None
    grid = set((m, opts.grid_format(b)) for m in opts.methods for b in opts.bits)
    for cfg in configs:
        label = f"{cfg.method}:{cfg.weight}"
        t0, c0 = time.time(), time.process_time()
        if cfg.steps() == ((), "gptq") and hessians is None:
            from floatlab.ptq.gptq import collect_hessians
            with _progress.scope("gptq hessians (shared)"):
                hessians = collect_hessians(lm.model, layers, calib)
        model = copy.deepcopy(lm.model)
        report = {}
        with _progress.scope(label):
            quantize_model(model, cfg, calib=calib, hessians=hessians if cfg.steps() == ((), "gptq") else None,
                           report=report)
            t_q = time.time() - t0
            metric = measure_single(lm, model, copts, ref_model=lm.model if encoder else None)
        del model
        bits, n = model_bits(layers, cfg)
        row = {"method": cfg.method, "format": cfg.weight.format, "grid": (cfg.method, cfg.weight.format) in grid,
               "bits_per_weight": bits / n, "bits": bits,
               "weights": n, **metric, "seconds_quantize": t_q, "seconds": time.time() - t0,
               "cpu_seconds": time.process_time() - c0}
        if report.get("blocks"):
            row["blocks"] = report["blocks"]
        results["rows"].append(row)
        if on_row is not None:
            on_row(results)
    results["seconds_total"] = time.time() - t_all
    return results


def _quality(row: dict, metric: str) -> float:
    return float(row.get(metric, float("nan")))


def _cpu(row: dict) -> str:
    return f"{row['cpu_seconds']:.0f}" if "cpu_seconds" in row else "-"


def sweep_table(results: dict) -> list[list[str]]:
    """Header plus one row per point: method, format, bits per weight, the metric (and, for
    encoders, the worst text's cosine), wall seconds and CPU seconds of the process (the readable
    cost on a shared machine; ``-`` in results written before it was recorded)."""
    metric = results["metric"]
    head = (["method", "format", "bits/weight", metric] + (["cos_min"] if metric == "cos_mean" else [])
            + ["seconds", "cpu s"])
    fp = results["fp32"]
    rows = [head, ["fp32", "-", "32", f"{_quality(fp, metric):.4f}"] + (["1.0000"] if metric == "cos_mean" else [])
            + [f"{fp['seconds']:.0f}", _cpu(fp)]]
    for r in results["rows"]:
        rows.append([r["method"], r["format"], f"{r['bits_per_weight']:.3f}", f"{_quality(r, metric):.4f}"]
                    + ([f"{r['cos_min']:.4f}"] if metric == "cos_mean" else []) + [f"{r['seconds']:.0f}", _cpu(r)])
    return rows


def plot_sweep(results: dict, path: Path) -> None:
    """Quality against bits per weight, one curve per method of the grid (in order of bits); each
    extra point on its own, labelled ``method:format``; the fp32 value as a dashed line.
    Perplexity on a log axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_method: dict[str, list[tuple[float, float, str]]] = {}
    for r in results["rows"]:
        y = _quality(r, metric)
        if math.isfinite(y):
            key = r["method"] if r.get("grid", True) else f"{r['method']}:{r['format']}"
            by_method.setdefault(key, []).append((r["bits_per_weight"], y, r["format"]))
    for method, pts in by_method.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) > 1 else "s", label=method)
    ax.axhline(_quality(results["fp32"], metric), color="k", ls="--", lw=1, label="fp32")
    if metric == "perplexity":
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes, scales, zero points, masks, factors)")
    ax.set_ylabel("perplexity (lower is better)" if metric == "perplexity" else "mean cosine to fp32 (higher is better)")
    ax.set_title(f"{results['model']}: weight-only PTQ across bit-widths")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from floatlab.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def render_sweep(results: dict, out: Path) -> None:
    """Write ``results.json``, ``report.md`` (the table) and ``quality_vs_bits.png`` into ``out``."""
    from floatlab.atomic import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    plot_sweep(results, out / "quality_vs_bits.png")
    rows = sweep_table(results)
    lines = [f"# floatlab sweep: {results['model']} (weight-only)", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    env = results.get("environment", {})
    lines += ["", "![quality vs bits](quality_vs_bits.png)", "",
              f"Bits per weight count every stored code, scale, zero point, mask bit and learned factor "
              f"(`codec.bits`). Baseline: {results['baseline_note']}.",
              f"Environment: floatlab {env.get('versions', {}).get('floatlab', '?')}, torch "
              f"{env.get('versions', {}).get('torch', '?')}; command: `{results.get('command', '')}`", ""]
    from floatlab.atomic import write_text
    write_text(out / "report.md", "\n".join(lines))
