"""``floatlab compare``: the main job. Thin: parse, call floatlab.ptq.compare, print, write."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def compare_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name (see `floatlab models`) or a local HF model folder"),
    formats: str = typer.Option(",".join(
        ("bf16", "e4m3", "e5m2", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4")),
        "--formats", "-f", help="comma-separated floatlab format names"),
    method: str = typer.Option("rtn", "--method", help="rtn | gptq | awq | smoothquant | rotate, joined with '+'"),
    weights_only: bool = typer.Option(False, "--weights-only", help="quantize weights only (activations stay fp32)"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows (GPTQ, AWQ, SmoothQuant)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders: retrieval pairs (0 = all 511)"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    out: Path = typer.Option(Path("results/compare"), "--out", "-o", help="folder for results.json, report.md, plots"),
) -> None:
    """Quantize a real model into many formats (weights and activations, RTN by default) and rank them."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from floatlab.models.loading import ModelError, load_model
    from floatlab.ptq.compare import CompareOptions, run_compare
    from floatlab.ptq.report import render_compare

    console = Console(width=140)
    t0 = time.time()
    try:
        from floatlab.ptq.quantizer import QuantSpec
        for f in formats.split(","):
            if f.strip():
                QuantSpec(f.strip())          # a bad format name fails before the model loads
        lm = load_model(model, log=console.print)
        opts = CompareOptions(formats=tuple(f.strip() for f in formats.split(",") if f.strip()), method=method,
                              weights_only=weights_only, calib=calib, pairs=pairs, windows=windows, window=window)
        console.print(f"[bold]{lm.name}[/] ({lm.model_type}, {lm.kind}) loaded in {time.time() - t0:.1f}s; "
                      f"baseline: {lm.baseline_note}")
        with Progress(TextColumn("{task.description:>12}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=False) as bar:
            tasks = {}

            def progress(label, k, total):
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.advance(tasks[label], k)
            results = run_compare(lm, opts, progress=progress)
    except (ModelError, ValueError, TypeError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    results["seconds_wall"] = time.time() - t0
    table_rows, md = render_compare(results, out)
    table = Table(title=f"floatlab compare: {results['model']} ({'W-only' if weights_only else 'W+A'}, {method})")
    for col in table_rows[0]:
        table.add_column(col)
    for r in table_rows[1:]:
        table.add_row(*r)
    console.print(table)
    console.print(f"wrote {out}/results.json, {out}/report.md and plots; total {results['seconds_wall']:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
