"""``floatlab compare``: the main job. Thin: check every input, call floatlab.ptq.compare, print, write.

Under ``torchrun --nproc_per_node N -m floatlab.cli compare ...`` the grid of methods x formats is
split over the N processes; rank 0 prints the table and writes the one merged results.json and
report.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from floatlab.cli.output import (check_earlier_result, check_int, check_out_dir, command_line, compile_note, progress,
                                 say, show_table)

DEFAULT_FORMATS = ("bf16", "e4m3", "e5m2", "hif8", "mxfp8_e4m3", "int8", "mxfp4", "nvfp4", "hif4", "int4")


def compare_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name (see `floatlab models`) or a local HF model folder"),
    formats: str = typer.Option(",".join(DEFAULT_FORMATS), "--formats", "-f", help="comma-separated floatlab format names"),
    method: str = typer.Option("rtn", "--method", help="rtn | gptq | awq | smoothquant | rotate, joined with '+'; several separated by commas (a grid)"),
    weights_only: bool = typer.Option(False, "--weights-only", help="quantize weights only (activations stay fp32)"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows (GPTQ, AWQ, SmoothQuant)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders, built-in text: retrieval pairs (0 = all 511)"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    calib_data: Path = typer.Option(None, "--calib-data", help="your own calibration text: .txt, .jsonl, .parquet or a saved datasets folder (default: the built-in text)"),
    eval_data: Path = typer.Option(None, "--eval-data", help="your own evaluation text, same kinds (default: the built-in text)"),
    text_field: str = typer.Option(None, "--text-field", help="the field holding the text in .jsonl/.parquet/datasets data (default: text)"),
    nonfinite_tokens: str = typer.Option("error", "--nonfinite-tokens", help="a NaN/Inf in a calibration token's input: error | exclude (leave the token out)"),
    device: str = typer.Option("cpu", "--device", help="where the model runs: cpu, cuda, cuda:N (under torchrun: each process its local GPU)"),
    out: Path = typer.Option(Path("results/compare"), "--out", "-o", help="folder for results.json, report.md, plots"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out without asking"),
) -> None:
    """Quantize a real model into many formats (weights and activations, RTN by default) and rank them."""
    from floatlab import parallel
    from floatlab.cli import inputs

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass
    fmts = inputs.format_list(formats, "--formats")
    method, grid = inputs.method_grid(method)
    calibrates = any(inputs.needs_calibration(st) for st in grid)
    for st, m in zip(grid, method.split(",")):
        inputs.check_calib(calib, st, m)
        inputs.check_gptq_formats([inputs.spec(f, "--formats") for f in fmts], st, "--formats")
    inputs.check_pairs(pairs)
    inputs.check_text_field(text_field, calib_data, eval_data)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    policy = inputs.nonfinite(nonfinite_tokens)
    dev = inputs.device(device)
    out = check_out_dir(out)
    name, folder, kind, _, cfg = inputs.resolve(model)
    if kind == "causal_lm":
        inputs.check_window(window, cfg)
    cal_texts = inputs.text_data(calib_data, "--calib-data", text_field) if calibrates else None
    eval_texts = inputs.text_data(eval_data, "--eval-data", text_field)
    if calib_data is not None and not calibrates:
        from floatlab.cli.output import warn
        warn(f"--calib-data is not read: method {method!r} does not calibrate")
    check_earlier_result(out, ("results.json", "report.md"), overwrite)   # last: a mistake is named before any prompt

    from floatlab.ptq.compare import CompareOptions, run_compare
    from floatlab.ptq.report import compare_table, render_compare

    rank, size = parallel.init_from_env(dev)
    lm = inputs.load(model, device=dev)
    inputs.check_data(lm, pairs=pairs, windows=windows, window=window, calib=calib, calibrates=calibrates,
                      calib_data=cal_texts, eval_data=eval_texts)
    opts = CompareOptions(formats=fmts, method=method, weights_only=weights_only, calib=calib, pairs=pairs,
                          windows=windows, window=window, calib_data=cal_texts, eval_data=eval_texts,
                          nonfinite_tokens=policy, device=str(dev))
    if rank == 0:
        say(f"{lm.name} ({lm.model_type}, {lm.kind}) loaded in {time.time() - t0:.1f}s; baseline: {lm.baseline_note}"
            + (f"; {size} processes" if size > 1 else ""))
        compile_note()
    try:
        if rank == 0:
            with progress():
                results = run_compare(lm, opts)
        else:
            results = run_compare(lm, opts)
    finally:
        parallel.finish()
    if rank != 0:
        return
    results["seconds_wall"] = time.time() - t0
    results["command"] = command_line()
    table_rows = compare_table(results)            # printed first: a failed write cannot hide it
    title = f"floatlab compare: {results['model']} ({'W-only' if weights_only else 'W+A'}, {method})"
    show_table(title, table_rows[0], table_rows[1:], right=[c for c in table_rows[0] if c not in ("format", "method")])
    render_compare(results, out)
    say(f"wrote {out}/results.json, {out}/report.md and plots; total {results['seconds_wall']:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
