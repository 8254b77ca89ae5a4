"""``floatlab sweep``: several PTQ methods over several bit-widths on one model, quality against
exact bits per weight. Thin: check every input, call floatlab.ptq.sweep, print, write."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from floatlab.cli.output import (CliError, check_earlier_result, check_int, check_out_dir, command_line, compile_note,
                                 progress, say, show_table)
from floatlab.text import plural


def sweep_command(
    model: str = typer.Option("smollm2", "--model", "-m", help="built-in model name or local HF model folder"),
    methods: str = typer.Option("rtn,gptq,awq,lwc", "--methods", help="PTQ methods of the grid, comma-separated (rtn, gptq, awq, lwc, rotate+gptq, ...)"),
    bits: str = typer.Option("2,3,4", "--bits", help="bit-widths of the grid, comma-separated"),
    group: int = typer.Option(64, "--group", help="input columns per scale group of the grid's format (0: one group per row)"),
    template: str = typer.Option("int{bits}_asym_g{group}", "--template", help="the grid's weight format, with {bits} and {group}"),
    add: list[str] = typer.Option([], "--add", help="an extra point METHOD:FORMAT, e.g. ptq161:ptq161 or rtn:binary_mean (repeatable)"),
    calib: int = typer.Option(32, "--calib", help="calibration texts / windows"),
    epochs: int = typer.Option(20, "--epochs", help="lwc/ptq161: reconstruction epochs per block"),
    lr: float = typer.Option(None, "--lr", help="lwc/ptq161: learning rate (default: each method's own)"),
    seed: int = typer.Option(0, "--seed", help="lwc/ptq161: seed of the sequence order and random masks"),
    amp: str = typer.Option("off", "--amp", help="lwc/ptq161: mixed precision of the training steps: off (float32) | bf16 (bfloat16 autocast)"),
    pairs: int = typer.Option(64, "--pairs", help="encoders: retrieval pairs (0 = all 511)"),
    windows: int = typer.Option(16, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    out: Path = typer.Option(Path("results/sweep"), "--out", "-o", help="folder for results.json, report.md, quality_vs_bits.png"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Weight-only PTQ of MODEL with every METHOD at every bit-width (plus --add points): a table
    and a plot of quality against bits per weight, every stored bit counted."""
    from floatlab.cli import inputs
    from floatlab.cli.output import flag_errors
    from floatlab.ptq.config import ReconOptions
    from floatlab.ptq.sweep import SweepOptions

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass
    mlist = tuple(m.strip() for m in methods.split(",") if m.strip())
    for m in mlist:
        inputs.method_steps(m, "--methods")
    try:
        blist = tuple(int(b) for b in bits.split(",") if b.strip())
    except ValueError:
        raise CliError(f"{bits!r}: expected comma-separated integers, e.g. 2,3,4", "--bits") from None
    extra = []
    for a in add:
        m, sep, f = a.partition(":")
        if not sep or not m.strip() or not f.strip():
            raise CliError(f"{a!r}: expected METHOD:FORMAT, e.g. ptq161:ptq161", "--add")
        inputs.method_steps(m.strip(), "--add")
        inputs.spec(f.strip(), "--add")
        extra.append((m.strip(), f.strip()))
    if not (mlist and blist) and not extra:
        raise CliError("nothing to run: give --methods and --bits, or --add points", "--methods")
    check_int(group, "--group", 0)
    check_int(epochs, "--epochs", 0)
    with flag_errors("--lr"):
        recon = ReconOptions(epochs=epochs, lr=lr, seed=check_int(seed, "--seed", 0))
    with flag_errors("--amp"):
        recon = dataclasses.replace(recon, amp=amp)
    opts = SweepOptions(methods=mlist if blist else (), bits=blist if mlist else (), group=group or None,
                        template=template, extra=tuple(extra), calib=calib, recon=recon, pairs=pairs,
                        windows=windows, window=window)
    with flag_errors("--template"):
        configs = opts.configs()
    if any(c.needs_calibration() for c in configs):
        check_int(calib, "--calib", 1, hint="these methods calibrate on these texts/windows")
    inputs.check_pairs(pairs)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    out = check_out_dir(out)
    name, folder, kind, _, mcfg = inputs.resolve(model)
    if kind == "causal_lm":
        inputs.check_window(window, mcfg)
    check_earlier_result(out, ("results.json", "report.md"), overwrite)   # last: a mistake is named before any prompt

    from floatlab.models.loading import linear_layers
    from floatlab.ptq.sweep import render_sweep, run_sweep, sweep_table

    lm = inputs.load(model)
    layers = linear_layers(lm.model)
    for c in configs:
        inputs.check_layers(layers, c, "--template/--group/--add")
    say(f"{lm.name} loaded; {plural(len(configs), 'point')}: " + ", ".join(f"{c.method}:{c.weight.format}" for c in configs))
    compile_note()
    from floatlab.atomic import write_json

    def partial(res: dict) -> None:             # an interrupted sweep keeps the points it measured
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", {**res, "command": command_line(), "complete": False})

    with progress():
        results = run_sweep(lm, opts, on_row=partial)
    results["complete"] = True
    results["seconds_wall"] = time.time() - t0
    results["command"] = command_line()
    table = sweep_table(results)
    show_table(f"floatlab sweep: {results['model']} (weight-only)", table[0], table[1:],
               right=[c for c in table[0] if c not in ("method", "format")])
    render_sweep(results, out)
    say(f"wrote {out}/results.json, {out}/report.md and {out}/quality_vs_bits.png; total {results['seconds_wall']:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
