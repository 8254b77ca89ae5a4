"""``floatlab formats``: the table of every format, or every code of one format."""

from __future__ import annotations

import math
from pathlib import Path

import typer

import floatlab
from floatlab.cli.output import CliError, check_earlier_result, check_int, check_out_dir, command_line, compile_note, say, show_table

_SCALAR_COLUMNS = ("format", "bits", "max", "min normal", "min subnormal", "eps", "finite values",
                   "binades", "specials", "overflow")
_BLOCK_COLUMNS = ("format", "element", "scale", "block", "scale rule", "tensor scale", "bits/value")


def _num(v: float) -> str:
    """Compact and complete (never a cut number): powers of two beyond 2^+-10, or whose decimal
    runs past 8 characters, as 2^k; other integers below 2^53 as integers; the rest as the shortest
    decimal that reads back as the same float64 (every value of a format is a float64 exactly, so
    this names it exactly; where the value has a short exact decimal, as small floats and fixed
    point do, it is that decimal: q3.4's max is 7.9375, not 7.938)."""
    if v == 0 or not math.isfinite(v):
        return str(v)
    m, e = math.frexp(abs(v))          # exact: |v| = m * 2^e with m in [0.5, 1)
    if m == 0.5 and (abs(e - 1) > 10 or len(repr(abs(v))) > 8):   # not math.log2: it rounds
        return f"{'-' if v < 0 else ''}2^{e - 1}"                   # (2 - 2^-52) * 2^1023 up to 1024
    if float(v).is_integer() and abs(v) < 2.0 ** 53:
        return f"{v:.0f}"
    return repr(float(v))


def _specials(info) -> str:
    return " ".join(s for s, on in (("Inf", info.has_inf), ("NaN", info.has_nan),
                                    ("-0", info.has_neg_zero)) if on) or "-"


def _get(name: str):
    try:
        return floatlab.get_format(name)
    except ValueError as err:
        raise CliError(str(err), "NAME") from None


def formats_command(
    name: str = typer.Argument(None, help="One format to show (e.g. hif8, e4m3, e6m9, nvfp4); all if omitted."),
    values: bool = typer.Option(False, "--values", help="List every code of the format and its value "
                                "(block formats: of their element format)."),
    quality: bool = typer.Option(False, "--quality", help="Relative MSE / SQNR of every format on Gaussian, Laplace and Student-t(3) data."),
    plot: Path = typer.Option(None, "--plot", help="Write PNG plots (tapered precision; 4-bit error distributions) into this folder."),
    n: int = typer.Option(None, "--n", help="Samples per distribution for --quality (rows of 1024; at least 1024; "
                          "default 262,144)."),
    out: Path = typer.Option(None, "--out", "-o", help="With --quality: also write results.json (with the environment) and "
                             "quality.md into this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
    cost: bool = typer.Option(False, "--cost", help="The hardware cost model: bits moved per value and MAC energy/area "
                              "relative to an int8 MAC (floatlab.hw; fitted to Horowitz ISSCC 2014, 45 nm)."),
) -> None:
    """Print every format's facts (bits, range, precision, specials), or one format's codes."""
    if cost:
        if values or quality or plot is not None or out is not None or n is not None:
            raise CliError("--cost prints the cost table alone; drop --values/--quality/--plot/--out/--n", "--cost")
        _print_cost(name)
        return
    fmt = _get(name) if name is not None else None
    if out is not None and not quality:
        raise CliError("writes the --quality results; add --quality", "--out")
    if n is not None and not quality:          # was ignored without a word
        raise CliError("sets the samples of --quality; add --quality", "--n")
    n = 2 ** 18 if n is None else n
    if quality:
        check_int(n, "--n", 1024)
        names = [name] if name else floatlab.list_formats()
        if fmt is not None and not _measurable(fmt):
            raise CliError(f"{fmt.name} has {fmt.bits} bits; --quality measures formats of up to 16 bits "
                           "and block formats", "--quality")
        names = [x for x in names if _measurable(floatlab.get_format(x))]
        if out is not None:
            check_earlier_result(out, ("results.json", "quality.md"), overwrite)
            out = check_out_dir(out)
    if plot is not None:
        plot = check_out_dir(plot, "--plot")
    if values and name is None:
        raise CliError("needs a format name, e.g. `floatlab formats hif8 --values`", "--values")
    if values and _kind(fmt) != "block" and fmt.bits > 12:
        raise CliError(f"{fmt.name} has {2 ** fmt.bits} codes; --values lists formats of up to 12 bits", "--values")

    if quality or plot:
        if quality:
            _print_quality(names, n, out)
        if plot:
            _write_plots(plot)
        return
    if fmt is not None and _kind(fmt) == "block":
        _print_blocks([fmt.name])
        if values:
            _print_codes(fmt.element, f"every code of {fmt.name}'s element format {fmt.element.name} "
                                      "(before its block scale)")
        return
    if values:
        _print_codes(fmt, f"every code of {fmt.name}")
        return
    names = floatlab.list_formats("scalar") if name is None else [fmt.name]
    rows = []
    for nm in names:
        info = floatlab.finfo(nm)
        rows.append([nm, str(info.bits), _num(info.max), _num(info.smallest_normal),
                     _num(info.smallest_subnormal), _num(info.eps), str(info.num_finite),
                     str(info.binades), _specials(info), info.overflow])
    show_table("floatlab scalar formats (all facts derived from the spec)", _SCALAR_COLUMNS, rows,
               right=_SCALAR_COLUMNS[1:8])
    if name is None:
        _print_blocks(floatlab.list_formats("block"))


def _kind(fmt) -> str:
    return getattr(fmt, "kind", "scalar")


def _measurable(fmt) -> bool:
    return _kind(fmt) == "block" or fmt.bits <= 16


def _print_blocks(names: list[str]) -> None:
    rows = []
    for n in names:
        f = floatlab.get_format(n)
        rows.append([n, f.element.name, f.scale.name, "x".join(map(str, f.block)), f.rule.value,
                     "fp32" if f.tensor_scale else "-", f"{f.bits_per_value:g}"])
    show_table("block formats", _BLOCK_COLUMNS, rows, right=("bits/value",))


def _print_cost(name: str | None) -> None:
    from floatlab.hw import cost_table

    try:
        rows = cost_table(None if name is None else [name])
    except ValueError as err:
        raise CliError(str(err), "NAME") from None
    columns = ("format", "bits moved/value", "MAC energy", "MAC area", "datapath")
    cells = [[r.format, f"{r.bits_moved:g}", f"{r.energy:.3f}", f"{r.area:.3f}", r.datapath] for r in rows]
    show_table("hardware cost model: MAC energy and area relative to an int8 MAC (relative numbers only; "
               "first-principles parts fitted to Horowitz ISSCC 2014, 45 nm; see floatlab.hw.cost)",
               columns, cells, right=columns[1:4])


def _print_quality(names: list[str], n: int, out: Path | None) -> None:
    from floatlab.eval.quality import DISTRIBUTIONS, quality_table
    from floatlab.progress import track

    from floatlab.cli.output import progress

    compile_note()
    samples = (n // 1024) * 1024
    with progress():
        rows = quality_table(track(names, "measuring", unit="formats"), n=n)
    rows.sort(key=lambda r: (r.bits_per_value, r.rel_mse["gaussian"]))
    title = (f"quantization quality, {samples} samples per distribution. Block formats: blocks along "
             "the last axis. Float formats: unit scale, overflow saturated. Integers: per-row (1024) "
             "absmax scale. Unsigned formats: |x|.")
    columns = ["format", "bits/value"]
    for d in DISTRIBUTIONS:
        columns += [f"rel. MSE {d}", f"SQNR dB {d}"]
    cells = []
    for r in rows:
        c = [r.format, f"{r.bits_per_value:g}"]
        for d in DISTRIBUTIONS:
            c += [f"{r.rel_mse[d]:.3e}", f"{r.sqnr_db[d]:.2f}"]
        cells.append(c)
    show_table(title, columns, cells, right=columns[1:])
    if out is not None:
        from floatlab.atomic import write_json, write_text
        from floatlab.cli.output import markdown_rows
        from floatlab.provenance import environment

        results = {"command": command_line(), "samples": samples,
                   "distributions": list(DISTRIBUTIONS), "environment": environment(),
                   "rows": [{"format": r.format, "bits_per_value": r.bits_per_value, "rel_mse": r.rel_mse,
                             "sqnr_db": r.sqnr_db} for r in rows]}
        write_json(out / "results.json", results, default=float)
        write_text(out / "quality.md", "\n".join([title, "", *markdown_rows(columns, cells, columns[1:]), ""]))
        say(f"wrote {out / 'results.json'} and {out / 'quality.md'}")


def _write_plots(folder: Path) -> None:
    from floatlab.eval.quality import plot_error_distributions, plot_tapered_precision

    for p in (plot_tapered_precision(folder / "tapered_precision.png"),
              plot_error_distributions(folder / "fp4_error_distributions.png")):
        say(f"wrote {p}")


def _print_codes(fmt, title: str) -> None:
    import torch

    codes = torch.arange(2 ** fmt.bits)
    vals = floatlab.decode(codes, fmt, dtype=torch.float64).tolist()
    width = (fmt.bits + 3) // 4
    rows = [[f"0x{c:0{width}X}", format(c, f"0{fmt.bits}b"), repr(v)] for c, v in zip(codes.tolist(), vals)]
    show_table(title, ("code", "bits", "value"), rows, right=("code", "bits", "value"))
