"""``floatlab eval DIR``: reload a ``floatlab ptq`` output and reproduce its metric."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import typer


def eval_command(folder: Path = typer.Argument(..., help="a folder written by `floatlab ptq`")) -> None:
    """Reload the quantized model in FOLDER and recompute the metric recorded at save time."""
    from rich.console import Console

    from floatlab.models.loading import ModelError, load_model
    from floatlab.ptq.compare import CompareOptions, measure_single
    from floatlab.ptq.io import load_quantized

    console = Console(width=140)
    t0 = time.time()
    try:
        lm, cfg, saved = load_quantized(folder, log=console.print)
        rec = saved.get("metric", {})
        opts = CompareOptions(pairs=rec.get("pairs", 100), windows=rec.get("windows", 16), window=rec.get("window", 256))
        ref = load_model(saved["model"], log=console.print).model if lm.kind == "encoder" and "cos_mean" in rec else None
        metric = measure_single(lm, lm.model, opts, ref_model=ref)
    except (ModelError, ValueError, TypeError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2)
    console.print(f"{cfg.label()} on {saved['model']}")
    same = True
    for k, v in metric.items():
        r = rec.get(k)
        ok = r == v
        same &= ok
        console.print(f"  {k:14s} {v!s:>24}   saved {r!s:>24}   {'identical' if ok else 'DIFFERENT'}")
    console.print(("[green]reproduced exactly[/]" if same else "[red]metric differs from the saved one[/]")
                  + f" ({time.time() - t0:.1f}s)")
    if not same:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
