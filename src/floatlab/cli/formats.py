"""``floatlab formats``: the table of every format, or every code of one format."""

from __future__ import annotations

import math

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
) -> None:
    """Print every format's facts (bits, range, precision, specials), or one format's codes."""
    console = Console()
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
