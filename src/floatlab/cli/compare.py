"""``floatlab compare``: the main job. Thin: check every input, call floatlab.ptq.compare, print, write."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from floatlab.cli.output import check_int, check_out_dir, command_line, compile_note, progress, say, show_table

DEFAULT_FORMATS = ("bf16", "e4m3", "e5m2", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4")


def compare_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name (see `floatlab models`) or a local HF model folder"),
    formats: str = typer.Option(",".join(DEFAULT_FORMATS), "--formats", "-f", help="comma-separated floatlab format names"),
    method: str = typer.Option("rtn", "--method", help="rtn | gptq | awq | smoothquant | rotate, joined with '+'"),
    weights_only: bool = typer.Option(False, "--weights-only", help="quantize weights only (activations stay fp32)"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows (GPTQ, AWQ, SmoothQuant)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders: retrieval pairs (0 = all 511)"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    out: Path = typer.Option(Path("results/compare"), "--out", "-o", help="folder for results.json, report.md, plots"),
) -> None:
    """Quantize a real model into many formats (weights and activations, RTN by default) and rank them."""
    from floatlab.cli import inputs

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass
    fmts = inputs.format_list(formats, "--formats")
    steps = inputs.method_steps(method)
    inputs.check_calib(calib, steps, method)
    inputs.check_gptq_formats([inputs.spec(f, "--formats") for f in fmts], steps, "--formats")
    inputs.check_pairs(pairs)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    out = check_out_dir(out)
    name, folder, kind, _, cfg = inputs.resolve(model)
    if kind == "causal_lm":
        inputs.check_window(window, cfg)

    from floatlab.ptq.compare import CompareOptions, run_compare
    from floatlab.ptq.report import compare_table, render_compare

    lm = inputs.load(model)
    inputs.check_data(lm, pairs=pairs, windows=windows, window=window, calib=calib,
                      calibrates=inputs.needs_calibration(steps))
    opts = CompareOptions(formats=fmts, method=method, weights_only=weights_only, calib=calib, pairs=pairs,
                          windows=windows, window=window)
    say(f"{lm.name} ({lm.model_type}, {lm.kind}) loaded in {time.time() - t0:.1f}s; baseline: {lm.baseline_note}")
    compile_note()
    with progress():
        results = run_compare(lm, opts)
    results["seconds_wall"] = time.time() - t0
    results["command"] = command_line()
    table_rows = compare_table(results)            # printed first: a failed write cannot hide it
    title = f"floatlab compare: {results['model']} ({'W-only' if weights_only else 'W+A'}, {method})"
    show_table(title, table_rows[0], table_rows[1:], right=[c for c in table_rows[0] if c != "format"])
    render_compare(results, out)
    say(f"wrote {out}/results.json, {out}/report.md and plots; total {results['seconds_wall']:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
