"""Write a comparison's results: results.json, a Markdown report and PNG plots."""

from __future__ import annotations

import json
import math
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
    path.write_text(json.dumps(results, indent=2, default=float))


def plot_metric_vs_bits(rows: list[dict], metric: str, label: str, path: Path, log_one_minus: bool = False) -> None:
    """Horizontal bars, one per format (labelled with its bits/value), best at the top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    vals = [(r["format"], r["bits_per_value"], (max(1.0 - r[metric], 1e-7) if log_one_minus else r[metric]))
            for r in rows]
    vals.sort(key=lambda v: v[2], reverse=not log_one_minus)
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(vals) + 1.2))
    names = [f"{f} ({b:g} b)" for f, b, _ in vals]
    ax.barh(range(len(vals)), [v for _, _, v in vals], color="tab:blue")
    ax.set_yticks(range(len(vals)), names, fontsize=8)
    ax.invert_yaxis()
    if log_one_minus:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_sqnr(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for r in rows:
        sq = r.get("layer_sqnr_db") or {}
        if not sq:
            continue
        ys = [min(v, 120.0) for v in sq.values()]
        ax.plot(range(len(ys)), ys, marker=".", label=r["format"], linewidth=1)
    ax.set_xlabel("linear layer (model order)")
    ax.set_ylabel("output SQNR vs fp32 (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
