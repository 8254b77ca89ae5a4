"""Write a comparison's results: results.json, a Markdown report and PNG plots."""

from __future__ import annotations

import math
import re
from pathlib import Path


def _fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{nd}f}"
    return str(v)


def ranked(rows: list[dict], metric: str, higher_is_better: bool) -> list[dict]:
    key = (lambda r: -r[metric]) if higher_is_better else (lambda r: r[metric])
    return sorted(rows, key=lambda r: (math.isnan(r[metric]) if isinstance(r[metric], float) else False, key(r)))


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) if not callable(k) else k(r) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: Path, results: dict) -> None:
    """``results`` as indented JSON, written atomically (a failed write leaves no half file)."""
    from floatlab.atomic import write_json as _write
    _write(path, results, default=float)


def _save(fig, path: Path) -> None:
    """Save ``fig`` to ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    from floatlab.atomic import atomic_path
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def plot_metric_vs_bits(rows: list[dict], metric: str, label: str, path: Path, log_one_minus: bool = False, *,
                        ci: str | None = None, reference: float | None = None,
                        reference_label: str = "fp32") -> None:
    """Horizontal bars, one per format (labelled with its bits/value), best at the top.

    ``ci``: the key of each row's ``(low, high)`` 95% interval (``"retrieval.recall_at_1_ci"``
    reaches into a nested dict), drawn as error bars. ``reference``: the fp32 value, drawn as a
    vertical line (with ``log_one_minus``, as ``1 - reference``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(r):
        return max(1.0 - r[metric], 1e-7) if log_one_minus else r[metric]

    def interval(r):
        d = r
        for k in ci.split("."):
            d = d[k]
        return d
    order = sorted(rows, key=value, reverse=not log_one_minus)
    vals = [value(r) for r in order]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(order) + 1.4))
    names = [f"{r['format']} ({r['bits_per_value']:g} b)" for r in order]
    err = None
    if ci is not None:
        lo_hi = [interval(r) for r in order]
        err = [[max(v - lo, 0.0) for v, (lo, _) in zip(vals, lo_hi)],
               [max(hi - v, 0.0) for v, (_, hi) in zip(vals, lo_hi)]]
    ax.barh(range(len(order)), vals, color="tab:blue", xerr=err, capsize=3 if err else 0,
            error_kw={"elinewidth": 1, "ecolor": "0.25"})
    if reference is not None:
        ref = max(1.0 - reference, 1e-7) if log_one_minus else reference
        ax.axvline(ref, color="tab:red", linestyle="--", linewidth=1.2, label=f"{reference_label} ({reference:.4g})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(order)), names, fontsize=8)
    ax.invert_yaxis()
    if log_one_minus:
        ax.set_xscale("log")
    ax.set_xlabel(label + (" (bars: 95% interval)" if ci is not None else ""))
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


_BLOCK = re.compile(r"^(?P<stem>.*?)(?:^|\.)(?:layers?|h|blocks?)\.(?P<index>\d+)\.(?P<kind>.+)$")


def layer_groups(names: list[str]) -> tuple[list[str], list[int | None]]:
    """For each layer name, its type (the part after the block number: ``self_attn.q_proj``,
    ``attention.self.query``) and its block number (``None`` outside numbered blocks)."""
    kinds, blocks = [], []
    for n in names:
        m = _BLOCK.match(n)
        kinds.append(m["kind"] if m else n)
        blocks.append(int(m["index"]) if m else None)
    return kinds, blocks


def plot_layer_sqnr(rows: list[dict], path: Path) -> None:
    """Per-layer output SQNR, readable for hundreds of layers: left, by layer type (mean over the
    blocks, bars from the worst to the best block); right, by block (its worst layer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("layer_sqnr_db")]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    kinds_order: list[str] = []
    for k, r in enumerate(rows):
        names = list(r["layer_sqnr_db"])
        kinds, blocks = layer_groups(names)
        vals = [min(v, 120.0) for v in r["layer_sqnr_db"].values()]
        for kd in kinds:
            if kd not in kinds_order:
                kinds_order.append(kd)
        by_kind = {kd: [v for v, k2 in zip(vals, kinds) if k2 == kd] for kd in kinds_order}
        xs = [i + (k - (len(rows) - 1) / 2) * 0.8 / max(len(rows), 1) for i in range(len(kinds_order))]
        means = [sum(v) / len(v) if v else float("nan") for v in by_kind.values()]
        lo = [m - min(v) if v else 0 for m, v in zip(means, by_kind.values())]
        hi = [max(v) - m if v else 0 for m, v in zip(means, by_kind.values())]
        ax_t.errorbar(xs, means, yerr=[lo, hi], fmt="o", markersize=4, capsize=2, linewidth=1,
                      label=r["format"], color=f"C{k % 10}")
        nums = sorted({b for b in blocks if b is not None})
        if nums:
            worst = [min(v for v, b in zip(vals, blocks) if b == n) for n in nums]
            ax_b.plot(nums, worst, marker=".", linewidth=1, label=r["format"], color=f"C{k % 10}")
    ax_t.set_xticks(range(len(kinds_order)), kinds_order, rotation=35, ha="right", fontsize=8)
    ax_t.set_ylabel("output SQNR vs fp32 (dB)")
    ax_t.set_title("by layer type (mean over blocks; bars: worst to best)", fontsize=9)
    ax_b.set_xlabel("block (transformer layer)")
    ax_b.set_title("by block (its worst linear layer)", fontsize=9)
    for ax in (ax_t, ax_b):
        ax.grid(True, alpha=0.3)
    ax_b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
