"""Error analysis of the GEMM methods over sizes and input distributions.

Errors are measured against a float64 reference ``C64 = A.double() @ B.double()``
(exact inputs, 53-bit arithmetic):

* ``max_rel`` / ``mean_rel``: max and mean over ``(i, j)`` of the elementwise
  normwise-relative error ``|C - C64|_ij / (|A| |B|)_ij``; the denominator is
  the natural scale of a dot product's rounding error, so the measure is well
  defined even where ``C64_ij`` cancels to (nearly) zero.
* ``fro_rel``: Frobenius-normwise ``||C - C64||_F / ||C64||_F``.

A method is flagged **broken** when its result has non-finite entries, or when
``max_rel`` exceeds its break threshold (:func:`break_threshold`):

* methods targeting FP32 accuracy (all but ``fp16``/``bf16``): ``BREAK_FACTOR``
  (100) times the fp32 product's ``max_rel`` on the same inputs (floored at
  ``2**-24``);
* ``fp16`` / ``bf16``: ``4u`` with ``u`` the input format's unit roundoff
  (``2**-11``, ``2**-8``). Rounding both inputs costs at most ``(2u + u**2)``
  of ``(|A||B|)_ij``, plus FP32 accumulation error far below ``u``; more than
  twice that bound can only come from underflow or overflow of the inputs.
"""

from __future__ import annotations

import difflib
import json
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .accumulate import Accumulator
from .methods import METHODS, check_method, matmul, method_cost

BREAK_FACTOR = 100.0
UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}
FP32_FLOOR = 2.0**-24

DISTRIBUTIONS: dict[str, str] = {
    "normal": "N(0, 1)",
    "uniform": "U(-1, 1)",
    "wide": "N(0, 1) * 2^U{-10..10}: exponent spread of 20 binades, inside the FP16 range",
    "beyond_fp16": "N(0, 1) * 1e5: most values beyond 65504, the largest FP16 number",
    "tiny": "N(0, 1) * 2^-20: hi is FP16-subnormal and the scaled FP16 residual underflows",
}

Row = dict[str, Any]


def make_operands(dist: str, m: int, k: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 operands ``A`` (m x k) and ``B`` (k x n) from distribution ``dist``."""

    def one(shape: tuple[int, int]) -> torch.Tensor:
        if dist == "normal":
            return torch.randn(shape, generator=generator)
        if dist == "uniform":
            return torch.rand(shape, generator=generator) * 2 - 1
        if dist == "wide":
            e = torch.randint(-10, 11, shape, generator=generator).float()
            return torch.randn(shape, generator=generator) * torch.exp2(e)
        if dist == "beyond_fp16":
            return torch.randn(shape, generator=generator) * 1e5
        if dist == "tiny":
            return torch.randn(shape, generator=generator) * 2.0**-20
        raise ValueError(f"unknown distribution {dist!r} (valid: {', '.join(DISTRIBUTIONS)})")

    return one((m, k)), one((k, n))


def relative_errors(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict[str, float | bool]:
    """Errors of ``c`` against the float64 product of ``a`` and ``b`` (see module docstring)."""
    a64, b64 = a.double(), b.double()
    ref = a64 @ b64
    scale = a64.abs() @ b64.abs()
    finite = bool(torch.isfinite(c).all())
    diff = (c.double() - ref).abs()
    diff = torch.where(torch.isfinite(c), diff, torch.full_like(diff, math.inf))
    elem = torch.where(scale > 0, diff / scale.clamp_min(torch.finfo(torch.float64).tiny), diff * math.inf)
    elem = torch.nan_to_num(elem, nan=0.0, posinf=math.inf)  # 0 * inf where diff == 0 and scale == 0
    ref_norm = float(torch.linalg.norm(ref))
    fro = float(torch.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(torch.linalg.norm(diff)) * math.inf
    if elem.numel() == 0:
        return {"max_rel": 0.0, "mean_rel": 0.0, "fro_rel": 0.0, "finite": finite}
    return {
        "max_rel": float(elem.max()),
        "mean_rel": float(elem.mean()),
        "fro_rel": 0.0 if math.isnan(fro) else fro,
        "finite": finite,
    }


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """Parse ``"256,512x128x64"``: comma-separated items, each ``N`` (square) or ``MxKxN``."""
    sizes = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"size {item!r} must be a positive integer N or a triple MxKxN")
        dims = [int(p) for p in parts]
        sizes.append((dims[0], dims[0], dims[0]) if len(dims) == 1 else (dims[0], dims[1], dims[2]))
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def parse_method_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"ozaki:6"`` -> ``("ozaki", {"slices": 6})``; ``"sgemm_cube:12"`` -> ``({"s": 12})``."""
    name, _, param = spec.strip().partition(":")
    check_method(name)
    if not param:
        return name, {}
    if name not in ("ozaki", "sgemm_cube"):
        raise ValueError(f"method spec {spec!r}: only 'ozaki:<slices>' and 'sgemm_cube:<s>' take a parameter")
    # the same ranges matmul enforces, checked here so a bad spec fails before any run starts
    low, high, what = (1, None, "slices") if name == "ozaki" else (0, 40, "s")
    value = int(param) if param.strip().lstrip("-").isdigit() else None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"method spec {spec!r}: {name}'s {what} must be {allowed}, got {param!r}")
    return name, {what: value}


def parse_list(text: str, valid: Iterable[str], what: str) -> list[str]:
    """Split a comma-separated list and check each entry against ``valid`` (``"all"`` = every one)."""
    valid = list(valid)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return valid
    for item in items:
        if item not in valid:
            close = difflib.get_close_matches(item, valid, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown {what} {item!r}{hint} (valid: {', '.join(valid)})")
    if not items:
        raise ValueError(f"no {what}s given")
    return items


def _case_seed(seed: int, dist: str, size: tuple[int, int, int]) -> int:
    """Seed depending only on (seed, dist, size), so cases do not depend on which others run."""
    return (seed * 1_000_003 + zlib.crc32(f"{dist}:{size}".encode())) % (2**63)


def run_analysis(
    sizes: Sequence[tuple[int, int, int]],
    dists: Sequence[str],
    methods: Sequence[str],
    *,
    seed: int = 0,
    accumulator: str | Accumulator | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every method on every (size, distribution) case; one row per run.

    ``methods`` entries may carry a parameter (``"ozaki:6"``, ``"sgemm_cube:12"``).
    ``on_step(label)`` is called after each method run (for progress bars).
    The fp32 product is always computed (it sets the break threshold) and is
    reported only if requested.
    """
    specs = [parse_method_spec(m) for m in methods]
    acc = Accumulator.parse(accumulator)
    rows: list[Row] = []
    for size in sizes:
        m, k, n = size
        for dist in dists:
            gen = torch.Generator().manual_seed(_case_seed(seed, dist, size))
            a, b = make_operands(dist, m, k, n, gen)
            fp32_err = relative_errors(matmul(a, b, "fp32", accumulator=acc), a, b)
            for spec, (name, params) in zip(methods, specs):
                err = relative_errors(matmul(a, b, name, accumulator=acc, **params), a, b)
                rows.append(_row(spec, name, params, size, dist, err, fp32_err, acc))
                if on_step is not None:
                    on_step(f"{m}x{k}x{n} {dist} {spec}")
    return rows


def break_threshold(target: str, fp32_max_rel: float) -> float:
    """``max_rel`` above which a method with accuracy class ``target`` counts as broken."""
    if target == "fp32":
        return BREAK_FACTOR * max(fp32_max_rel, FP32_FLOOR)
    return 4 * UNIT_ROUNDOFF[target]


def _row(spec, name, params, size, dist, err, fp32_err, acc) -> Row:
    m, k, n = size
    target = METHODS[name].target
    fp32_level = max(fp32_err["max_rel"], FP32_FLOOR)
    reason = ""
    if not err["finite"]:
        reason = "non-finite output"
    elif err["max_rel"] > break_threshold(target, fp32_err["max_rel"]):
        if target == "fp32":
            reason = f"error {err['max_rel'] / fp32_level:.3g}x fp32's"
        else:
            reason = f"error {err['max_rel'] / UNIT_ROUNDOFF[target]:.3g}u > 4u ({target})"
    return {
        "size": f"{m}x{k}x{n}",
        "M": m, "K": k, "N": n,
        "dist": dist,
        "method": spec,
        "accumulator": str(acc) if acc is not None else "fp32 (BLAS, RN)",
        "cost": method_cost(name, k=k, slices=params.get("slices")),
        "max_rel": err["max_rel"],
        "mean_rel": err["mean_rel"],
        "fro_rel": err["fro_rel"],
        "vs_fp32": err["max_rel"] / fp32_level,
        "finite": err["finite"],
        "broken": bool(reason),
        "reason": reason,
    }


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}")


TABLE_COLUMNS = ("size", "dist", "method", "cost", "max_rel", "mean_rel", "fro_rel", "vs_fp32", "status")


def table_cells(row: Row) -> list[str]:
    """The row's cells in :data:`TABLE_COLUMNS` order, as strings."""
    status = f"BROKEN: {row['reason']}" if row["broken"] else "ok"
    vs = "inf" if math.isinf(row["vs_fp32"]) else f"{row['vs_fp32']:.3g}"
    return [row["size"], row["dist"], row["method"], str(row["cost"]), _fmt(row["max_rel"]),
            _fmt(row["mean_rel"]), _fmt(row["fro_rel"]), vs, status]


def to_markdown(rows: Sequence[Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _json_safe(row: Row) -> Row:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def plot(rows: Sequence[Row], path: str | Path) -> Path:
    """Plot max relative error per method (log scale), one panel per distribution.

    Broken runs are drawn as red crosses; non-finite errors are pinned to the
    top of the panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = list(dict.fromkeys(r["dist"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(dists), figsize=(4.2 * len(dists), 4.2), squeeze=False, sharey=True)
    finite_vals = [r["max_rel"] for r in rows if math.isfinite(r["max_rel"]) and r["max_rel"] > 0]
    top = max(finite_vals, default=1.0) * 10
    bottom = min(finite_vals, default=1e-9) / 10
    for ax, dist in zip(axes[0], dists):
        for mi, method in enumerate(methods):
            for si, size in enumerate(sizes):
                match = [r for r in rows if r["dist"] == dist and r["method"] == method and r["size"] == size]
                if not match:
                    continue
                r = match[0]
                y = r["max_rel"] if math.isfinite(r["max_rel"]) else top
                y = max(y, bottom)
                x = mi + (si - (len(sizes) - 1) / 2) * 0.8 / max(len(sizes), 1)
                ax.scatter(x, y, marker="x" if r["broken"] else "o", color="red" if r["broken"] else f"C{si}", s=28)
                if not math.isfinite(r["max_rel"]):
                    ax.annotate("inf", (x, y), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6)
        for si, size in enumerate(sizes):
            ax.scatter([], [], marker="o", color=f"C{si}", label=size)
        ax.set_yscale("log")
        ax.set_ylim(bottom, top * 2)
        ax.set_title(dist)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=8)
        ax.grid(True, which="major", axis="y", alpha=0.3)
    axes[0][0].set_ylabel("max |C - C64| / (|A||B|)  (x = broken)")
    axes[0][0].legend(title="size", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    from floatlab.atomic import atomic_path
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def write_outputs(rows: Sequence[Row], out_dir: str | Path) -> dict[str, Path]:
    """Write ``gemm.json``, ``gemm.md`` and ``gemm.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "gemm.json", "md": out / "gemm.md", "png": out / "gemm.png"}
    from floatlab.atomic import write_text
    write_text(paths["json"], json.dumps([_json_safe(r) for r in rows], indent=2) + "\n")
    write_text(paths["md"], to_markdown(rows))
    plot(rows, paths["png"])
    return paths
