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
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads; 0 keeps torch's default (one per core). 1 is the default: on shared cores OpenMP barriers stall when cores are oversubscribed (on a loaded 2-core machine the default run took 3x as long on 2 threads as on 1); results.json records the count"),
    profile: bool = typer.Option(False, "--profile", help="print where the time went (load, fp32 reference, calibration, quantize / evaluate / layer SQNR per format, report; the kernels built or compiled on the way) and store it in results.json under \"profile\""),
) -> None:
    """Quantize a real model into many formats (weights and activations, RTN by default) and rank them."""
    from floatlab.cli import inputs

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass (but the kernels'
    # cache, below: a build that outlives a refused input is only cached for the next run)
    fmts = inputs.format_list(formats, "--formats")
    if device.strip().lower() == "cpu":
        # the native libraries these formats run (a C++ build of seconds each on a fresh machine,
        # cached) are built on a free core while the other inputs are checked and the model loads
        from floatlab.kernels.dispatch import prepare_native
        prepare_native(fmts)
    method, grid = inputs.method_grid(method)
    calibrates = any(inputs.needs_calibration(st) for st in grid)
    for st, m in zip(grid, method.split(",")):
        inputs.check_calib(calib, st, m)
        inputs.check_gptq_formats([inputs.spec(f, "--formats") for f in fmts], st, "--formats")
    inputs.check_pairs(pairs)
    inputs.check_text_field(text_field, calib_data, eval_data)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    check_int(threads, "--threads", 0, hint="0 keeps torch's default")
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

    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        _run(model, dev, opts_kw=dict(formats=fmts, method=method, weights_only=weights_only, calib=calib,
                                      pairs=pairs, windows=windows, window=window, calib_data=cal_texts,
                                      eval_data=eval_texts, nonfinite_tokens=policy, device=str(dev)),
             checks=dict(pairs=pairs, windows=windows, window=window, calib=calib, calibrates=calibrates,
                         calib_data=cal_texts, eval_data=eval_texts),
             threads=threads, profile=profile, out=out, t0=t0, title_bits=(weights_only, method))
    finally:
        torch.set_num_threads(before)    # called in-process (tests, notebooks): the caller's threads back


def _run(model, dev, opts_kw, checks, threads, profile, out, t0, title_bits) -> None:
    """Load, run the grid, print and write (the inputs are checked)."""
    import torch

    from floatlab import parallel
    from floatlab.cli import inputs
    from floatlab.ptq.compare import CompareOptions, run_compare
    from floatlab.ptq.report import compare_table, render_compare

    weights_only, method = title_bits
    rank, size = parallel.init_from_env(dev)
    lm = inputs.load(model, device=dev)
    inputs.check_data(lm, **checks)
    opts = CompareOptions(**opts_kw)
    t_load = time.time() - t0
    if rank == 0:
        n = torch.get_num_threads()
        say(f"{lm.name} ({lm.model_type}, {lm.kind}) loaded in {t_load:.1f}s; baseline: {lm.baseline_note}"
            + (f"; {size} processes" if size > 1 else "")
            + f"; {n} torch thread{'s' if n != 1 else ''} per process ("
            + ("--threads" if threads > 0 else "torch's default, --threads 0") + ")")
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
    results["seconds_load"] = t_load
    results["command"] = command_line()
    if profile:
        from floatlab.ptq.compare import compare_profile
        results["profile"] = compare_profile(results, seconds_load=t_load)
        results["profile"]["kernels"] = _kernel_times()
    table_rows = compare_table(results)            # printed first: a failed write cannot hide it
    title = f"floatlab compare: {results['model']} ({'W-only' if weights_only else 'W+A'}, {method})"
    show_table(title, table_rows[0], table_rows[1:], right=[c for c in table_rows[0] if c not in ("format", "method")])
    t_report = time.time()
    render_compare(results, out)
    t_report = time.time() - t_report
    if profile:
        _show_profile(results, t_report, time.time() - t0)
    say(f"wrote {out}/results.json, {out}/report.md and plots; total {time.time() - t0:.1f}s")


def _show_profile(results: dict, t_report: float, wall: float) -> None:
    """The ``--profile`` tables: phases, then each cell (wall-clock seconds)."""
    prof = results["profile"]
    phases = [*prof["phases"], ["report (results.json, plots, report.md)", t_report]]
    body = [[name, f"{s:.1f}", f"{100 * s / wall:.0f}%"] for name, s in phases]
    show_table(f"where the time went: {wall:.1f} s wall on {results['threads']} torch thread(s)",
               ["phase", "s", "of wall"], body, right=["s", "of wall"])
    show_table("per cell", ["cell", "quantize s", "evaluate s", "SQNR s", "total s"],
               [[c[0], *(f"{v:.1f}" for v in c[1:])] for c in prof["formats"]],
               right=["quantize s", "evaluate s", "SQNR s", "total s"])
    kernels = prof.get("kernels") or []
    if kernels:
        show_table("kernels built in this process (inside the phases above)", ["kernel", "how", "s"],
                   [[k, how, f"{s:.1f}"] for k, how, s in kernels], right=["s"])
    else:
        say("kernels: none built or compiled in this process (native libraries loaded from the cache)")


def _kernel_times() -> list[list]:
    """``[kernel, how, seconds]`` for each native library built or loaded in the background
    (:func:`floatlab.kernels.dispatch.prepare_native`: seconds on its own thread, overlapping the
    run) and each kernel torch.compile compiled (or loaded from inductor's cache) in this
    process (seconds of its first call, within the phase that made it)."""
    from floatlab.kernels import compiler, dispatch

    rows = [[name, "native build/load (background)", s] for name, s in dispatch.native_preparation().items()]
    rows += [[name, "torch.compile (first call)", s] for name, s in compiler.first_calls()]
    return rows


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
