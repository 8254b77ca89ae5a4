"""``floatlab formats``: the table of every format, or every code of one format."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import floatlab


def _num(v: float) -> str:
    """Compact: integers as is, powers of two beyond 2^+-10 as 2^k, the rest with 4 digits."""
    if v == 0 or not math.isfinite(v):
        return str(v)
    e = math.log2(abs(v))
    if e.is_integer() and abs(e) > 10:
        return f"2^{int(e)}"
    if float(v).is_integer() and abs(v) < 1e7:
        return f"{v:.0f}"
    return f"{v:.4g}"


def _specials(info) -> str:
    return " ".join(s for s, on in (("Inf", info.has_inf), ("NaN", info.has_nan),
                                    ("-0", info.has_neg_zero)) if on) or "-"


def formats_command(
    name: str = typer.Argument(None, help="One format to show (e.g. hif8, e4m3, e6m9); all if omitted."),
    values: bool = typer.Option(False, "--values", help="List every code of the format and its value."),
    quality: bool = typer.Option(False, "--quality", help="Relative MSE / SQNR of every format on Gaussian, Laplace and Student-t(3) data."),
    plot: Path = typer.Option(None, "--plot", help="Write PNG plots (tapered precision; 4-bit error distributions) into this folder."),
    n: int = typer.Option(2 ** 18, "--n", help="Samples per distribution for --quality."),
) -> None:
    """Print every format's facts (bits, range, precision, specials), or one format's codes."""
    console = Console()
    if quality or plot:
        if quality:
            _print_quality(console, [name] if name else floatlab.list_formats(), n)
        if plot:
            _write_plots(console, plot)
        return
    if values:
        if name is None:
            raise typer.BadParameter("--values needs a format name, e.g. `floatlab formats hif8 --values`")
        _print_codes(console, name)
        return
    names = floatlab.list_formats("scalar") if name is None else [name]
    table = Table(title="floatlab scalar formats (all facts derived from the spec)")
    for col in ("format", "bits", "max", "min normal", "min subnormal", "eps", "finite values",
                "binades", "specials", "overflow"):
        table.add_column(col, justify="left" if col in ("format", "specials") else "right")
    for n in names:
        try:
            info = floatlab.finfo(n)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        table.add_row(n, str(info.bits), _num(info.max), _num(info.smallest_normal),
                      _num(info.smallest_subnormal), _num(info.eps), str(info.num_finite),
                      str(info.binades), _specials(info), info.overflow)
    console.print(table)
    if name is None:
        _print_blocks(console)


def _print_blocks(console: Console) -> None:
    table = Table(title="block formats")
    for col in ("format", "element", "scale", "block", "scale rule", "tensor scale", "bits/value"):
        table.add_column(col)
    for n in floatlab.list_formats("block"):
        f = floatlab.get_format(n)
        table.add_row(n, f.element.name, f.scale.name, "x".join(map(str, f.block)), f.rule.value,
                      "fp32" if f.tensor_scale else "-", f"{f.bits_per_value:g}")
    console.print(table)


def _print_quality(console: Console, names: list[str], n: int) -> None:
    from rich.progress import Progress

    from floatlab.eval.quality import DISTRIBUTIONS, quality_table

    names = [x for x in names if floatlab.get_format(x).bits <= 16 or floatlab.get_format(x).kind == "block"]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("measuring", total=len(names))
        rows = quality_table(names, n=n, progress=lambda f: bar.advance(task))
    rows.sort(key=lambda r: (r.bits_per_value, r.rel_mse["gaussian"]))
    table = Table(title=f"quantization quality, {n} samples per distribution. Block formats: blocks "
                        "along the last axis. Float formats: unit scale, overflow saturated. Integers: "
                        "per-row (1024) absmax scale. Unsigned formats: |x|.")
    table.add_column("format")
    table.add_column("bits/value", justify="right")
    for d in DISTRIBUTIONS:
        table.add_column(f"rel. MSE {d}", justify="right")
        table.add_column(f"SQNR dB {d}", justify="right")
    for r in rows:
        cells = []
        for d in DISTRIBUTIONS:
            cells += [f"{r.rel_mse[d]:.3e}", f"{r.sqnr_db[d]:.2f}"]
        table.add_row(r.format, f"{r.bits_per_value:g}", *cells)
    console.print(table)


def _write_plots(console: Console, folder: Path) -> None:
    from floatlab.eval.quality import plot_error_distributions, plot_tapered_precision

    folder.mkdir(parents=True, exist_ok=True)
    for p in (plot_tapered_precision(folder / "tapered_precision.png"),
              plot_error_distributions(folder / "fp4_error_distributions.png")):
        console.print(f"wrote {p}")


def _print_codes(console: Console, name: str) -> None:
    import torch

    try:
        fmt = floatlab.get_format(name)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if fmt.bits > 12:
        raise typer.BadParameter(f"{fmt.name} has {2 ** fmt.bits} codes; --values lists formats of up to 12 bits")
    codes = torch.arange(2 ** fmt.bits)
    vals = floatlab.decode(codes, fmt, dtype=torch.float64).tolist()
    width = (fmt.bits + 3) // 4
    table = Table(title=f"every code of {fmt.name}")
    for col in ("code", "bits", "value"):
        table.add_column(col, justify="right")
    for c, v in zip(codes.tolist(), vals):
        table.add_row(f"0x{c:0{width}X}", format(c, f"0{fmt.bits}b"), repr(v) if not math.isfinite(v) else f"{v!r}")
    console.print(table)
