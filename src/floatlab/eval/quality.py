"""Quantization quality of formats on synthetic data: relative MSE and SQNR, and plots."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

import floatlab

DISTRIBUTIONS = ("gaussian", "laplace", "student_t3")


def sample(dist: str, shape, seed: int = 0) -> torch.Tensor:
    """Standard samples of a named distribution (float32), reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return torch.randn(shape, generator=g)
    u = torch.rand(shape, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    if dist == "laplace":
        return (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float()
    if dist == "student_t3":
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        chi2 = torch.randn((3, *shape), generator=g, dtype=torch.float64).pow(2).sum(0)
        return (z / torch.sqrt(chi2 / 3)).float()
    raise ValueError(f"unknown distribution {dist!r}; choose from {', '.join(DISTRIBUTIONS)}")


@dataclass(frozen=True)
class Quality:
    format: str
    bits_per_value: float
    rel_mse: dict[str, float]
    sqnr_db: dict[str, float]


def bits_per_value(fmt) -> float:
    spec = floatlab.get_format(fmt)
    return float(getattr(spec, "bits_per_value", spec.bits))


def fake_quantize_for_quality(fmt, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_used, q(x_used))`` under the table's conventions: block formats scale per block
    along the last axis; float formats see the data at unit scale with overflow saturated;
    integer formats get a per-row absmax scale; unsigned formats see |x|."""
    spec = floatlab.get_format(fmt)
    if not _is_scalar(fmt):
        return x, floatlab.quantize(x, spec)
    if not spec.signed:
        x = x.abs()
    if type(spec).__name__ == "IntFormat":
        s = x.abs().amax(-1, keepdim=True) / spec.max_value
        return x, floatlab.quantize(x / s, spec) * s
    return x, floatlab.quantize(x, spec, saturate=True)


def measure(fmt, x: torch.Tensor) -> float:
    """Relative MSE ``sum((q(x) - x)^2) / sum(x^2)`` under the table's conventions."""
    x, y = fake_quantize_for_quality(fmt, x)
    return float((y.double() - x.double()).pow(2).sum() / x.double().pow(2).sum())


def _is_scalar(fmt) -> bool:
    return getattr(floatlab.get_format(fmt), "kind", "scalar") == "scalar"


def quality_table(formats, n: int = 2 ** 18, seed: int = 0, progress=None) -> list[Quality]:
    """Relative MSE and SQNR of each format on Gaussian, Laplace and Student-t(3) data.

    Scalar formats see the data as is (unit scale, overflow saturates); block formats scale
    per block, so the comparison favours them on wide-range data: that is the point of blocks.
    """
    data = {d: sample(d, (n // 1024, 1024), seed) for d in DISTRIBUTIONS}
    rows = []
    for f in formats:
        rel = {d: measure(f, x) for d, x in data.items()}
        rows.append(Quality(str(f), bits_per_value(f), rel,
                            {d: (-10 * math.log10(v) if v > 0 else math.inf) for d, v in rel.items()}))
        if progress:
            progress(f)
    return rows


def _save(fig, path: Path) -> None:
    from floatlab.eval.report import _save as save_atomically
    save_atomically(fig, Path(path))


def plot_tapered_precision(path: Path, formats=("hif8", "e4m3", "e5m2"), points: int = 4000) -> Path:
    """Relative error vs magnitude across the whole range (the tapered-precision picture)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.logspace(-26, 17, points, base=2.0, dtype=torch.float64)
    x = x * (1 + 0.37 / 8)  # off-grid points so the error is not zero at powers of two
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for f in formats:
        y = floatlab.quantize(x, f, saturate=True)
        rel = ((y - x).abs() / x).clamp(min=1e-6)
        # the upper envelope: the worst relative error in each small window
        env = torch.nn.functional.max_pool1d(rel[None, None], 25, 1, 12)[0, 0]
        ax.plot(x.numpy(), env.numpy(), label=f)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("|x|")
    ax.set_ylabel("relative rounding error (windowed max)")
    ax.set_title("Precision across the range: tapered HiF8 vs E4M3 vs E5M2")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_error_distributions(path: Path, formats=("mxfp4", "nvfp4", "hif4", "int4"), n: int = 2 ** 16,
                             seed: int = 0) -> Path:
    """Histograms of the normalized quantization error of 4-bit formats on Gaussian data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = sample("gaussian", (n // 1024, 1024), seed)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for f in formats:
        _, y = fake_quantize_for_quality(f, x)
        err = (y - x).flatten().numpy()
        rel = measure(f, x)
        ax.hist(err, bins=201, range=(-0.5, 0.5), histtype="step", density=True,
                label=f"{f} (rel. MSE {rel:.4f})")
    ax.set_yscale("log")
    ax.set_xlabel("q(x) - x  (x ~ N(0,1))")
    ax.set_ylabel("density")
    ax.set_title("4-bit formats: error distribution on Gaussian data")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return path
