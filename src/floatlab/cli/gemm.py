"""``floatlab gemm``: error analysis of precision-recovery GEMM methods.

Runnable on its own as ``python -m floatlab.cli.gemm [OPTIONS]`` (typer runs a
single-command app without naming the command). To mount it in the main CLI
as ``floatlab gemm [OPTIONS]``, call :func:`register` (it does
``main_app.command("gemm")(gemm)``). (``main_app.add_typer(app,
name="gemm")`` would nest it as ``floatlab gemm gemm``.)
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from floatlab.gemm import METHODS
from floatlab.gemm.analysis import (
    DISTRIBUTIONS,
    TABLE_COLUMNS,
    parse_list,
    parse_method_spec,
    parse_sizes,
    run_analysis,
    table_cells,
    write_outputs,
)

app = typer.Typer(
    help="Error analysis of precision-recovery GEMM methods against a float64 reference.",
    add_completion=False,
)


def _parse_methods(text: str) -> list[str]:
    """Comma-separated method specs; ``all`` expands to every method (e.g. ``all,ozaki:6``)."""
    items: list[str] = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        for spec in METHODS if item == "all" else [item]:
            parse_method_spec(spec)  # raises ValueError with the closest valid names
            if spec not in items:
                items.append(spec)
    if not items:
        raise ValueError("no methods given")
    return items


@app.command("gemm")
def gemm(
    sizes: str = typer.Option("256,512,1024", help="Comma-separated sizes: N (square) or MxKxN."),
    dists: str = typer.Option(
        ",".join(DISTRIBUTIONS), help=f"Comma-separated input distributions ({', '.join(DISTRIBUTIONS)}) or 'all'."
    ),
    methods: str = typer.Option(
        "all",
        help=f"Comma-separated methods ({', '.join(METHODS)}); 'all' adds every method; 'ozaki:<slices>' and "
        "'sgemm_cube:<s>' set the method's parameter.",
    ),
    seed: int = typer.Option(0, help="Random seed for the operands."),
    accumulator: str = typer.Option(
        "none",
        help="Accumulator: 'none' (float32 BLAS, round-to-nearest) or 'fmt[:rounding[:chunk]]', "
        "e.g. 'fp32:rtz:16' for a tensor-core-like accumulator.",
    ),
    out: Path | None = typer.Option(None, help="Directory for gemm.json, gemm.md and gemm.png."),
) -> None:
    """Measure max/mean/Frobenius relative errors of each method against float64."""
    console = Console()
    try:
        size_list = parse_sizes(sizes)
        dist_list = parse_list(dists, DISTRIBUTIONS, "distribution")
        method_list = _parse_methods(methods)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    total = len(size_list) * len(dist_list) * len(method_list)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("gemm", total=total)

        def step(label: str) -> None:
            progress.update(task, advance=1, description=label)

        try:
            rows = run_analysis(size_list, dist_list, method_list, seed=seed, accumulator=accumulator, on_step=step)
        except (ValueError, NotImplementedError) as exc:
            raise typer.BadParameter(str(exc)) from exc

    title = f"GEMM error vs float64 (accumulator: {rows[0]['accumulator'] if rows else accumulator}, seed {seed})"
    table = Table(title=title)
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("size", "dist", "method", "status") else "right")
    for row in rows:
        table.add_row(*table_cells(row), style="red" if row["broken"] else None)
    console.print(table)
    broken = sum(r["broken"] for r in rows)
    console.print(f"{broken} of {len(rows)} runs flagged broken (non-finite, >100x fp32's error, or >4u for fp16/bf16).")
    if out is not None:
        paths = write_outputs(rows, out)
        console.print("wrote " + ", ".join(str(p) for p in paths.values()))


def register(main_app: typer.Typer) -> None:
    """Mount this command on the main CLI as ``floatlab gemm``."""
    main_app.command("gemm")(gemm)


if __name__ == "__main__":
    app()
