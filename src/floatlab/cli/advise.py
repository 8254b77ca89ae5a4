"""``floatlab advise``: a per-layer format for every linear layer under a bit, byte or energy budget,
verified end to end. Thin: check every input, call floatlab.advise, print, write."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from floatlab.cli.output import (CliError, check_earlier_result, check_int, check_out_dir, command_line, compile_note, flag_errors, progress,
                                 say, show_table)


def advise_command(
    model: str = typer.Option("minilm", "--model", "-m", help="built-in model name or local HF model folder"),
    formats: str = typer.Option("mxfp4,nvfp4,hif4,mxfp6_e2m3,mxfp8_e4m3", "--formats", "-f", help="candidate weight formats, comma-separated (formats or codec names)"),
    budget: str = typer.Option(..., "--budget", "-b", help="the budget; several comma-separated values draw a Pareto sweep (the first gives the recipe)"),
    kind: str = typer.Option("bits", "--kind", help="bits (average bits per weight, scales included) | bytes (quantized layers' total) | energy (average MAC energy per weight, x int8 MAC)"),
    solver: str = typer.Option("milp", "--solver", help="milp | greedy | genetic, comma-separated to compare (the first gives the recipe)"),
    sensitivity: str = typer.Option("auto", "--sensitivity", help="auto (measured for encoders, fisher for causal LMs) | measured | fisher | fisher-trace"),
    tie: bool = typer.Option(True, "--tie/--no-tie", help="q/k/v and gate/up take one format (they read one input)"),
    random: int = typer.Option(0, "--random", help="random assignments of each budget measured as controls"),
    uniform: bool = typer.Option(True, "--uniform/--no-uniform", help="measure every candidate format alone as a control"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="quantize with the advice and measure it (the sum of sensitivities is an assumption)"),
    calib: int = typer.Option(8, "--calib", help="fisher: calibration windows"),
    pairs: int = typer.Option(32, "--pairs", help="encoders: retrieval pairs whose texts are measured (0 = all 511)"),
    windows: int = typer.Option(4, "--windows", help="causal LMs: perplexity windows"),
    window: int = typer.Option(256, "--window", help="causal LMs: tokens per window"),
    seed: int = typer.Option(0, "--seed", help="random controls and the genetic search"),
    check: int = typer.Option(0, "--check", help="with a Fisher proxy: also measure this many layers (spread over the model) and report the proxy's rank correlation with them"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="keep sensitivities in the cache folder (resumable)"),
    out: Path = typer.Option(Path("results/advise"), "--out", "-o", help="folder for results.json, recipe.json, overrides.txt, report.md, pareto.png"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Choose a format per linear layer under a budget, write it as a recipe for `floatlab ptq`, and
    verify it end to end against uniform formats and random assignments."""
    from floatlab.advise.advisor import AdviseOptions, KINDS
    from floatlab.advise.search import SOLVERS
    from floatlab.cli import inputs
    from floatlab.cli.output import parse_choice

    t0 = time.time()
    # every input first: nothing is loaded or computed before they all pass
    fmts = inputs.format_list(formats, "--formats")
    try:
        budgets = tuple(float(b) for b in budget.split(",") if b.strip())
    except ValueError:
        raise CliError(f"{budget!r}: expected a number or comma-separated numbers, e.g. 4.5 or 4.5,5,6", "--budget") from None
    if not budgets or not all(b > 0 and b != float("inf") for b in budgets):   # NaN fails b > 0
        raise CliError(f"{budget!r}: budgets must be positive numbers, e.g. 4.5 or 4.5,5,6", "--budget")
    kind = parse_choice(kind, KINDS, "--kind")
    solvers = tuple(s.strip().lower() for s in solver.split(",") if s.strip())
    if not solvers:
        raise CliError(f"no solver given (choose from {', '.join(SOLVERS)}, comma-separated)", "--solver")
    for s in solvers:
        parse_choice(s, tuple(SOLVERS), "--solver")
    sensitivity = parse_choice(sensitivity, ("auto", "measured", "fisher", "fisher-trace"), "--sensitivity")
    check_int(random, "--random", 0)
    check_int(calib, "--calib", 1)
    check_int(seed, "--seed", 0)
    check_int(check, "--check", 0)
    inputs.check_pairs(pairs)
    check_int(windows, "--windows", 1)
    check_int(window, "--window", 2)
    with flag_errors("--formats/--budget/--kind"):
        opts = AdviseOptions(formats=fmts, budgets=budgets, kind=kind, solvers=solvers, sensitivity=sensitivity,
                             tie=tie, random=random, uniform=uniform, verify=verify, calib=calib, seed=seed,
                             check=check)
    out = check_out_dir(out)
    name, folder, mkind, _, mcfg = inputs.resolve(model)
    if mkind == "causal_lm":
        inputs.check_window(window, mcfg)
    if check and (opts.sensitivity == "measured" or (opts.sensitivity == "auto" and mkind != "causal_lm")):
        raise CliError("--check compares a proxy with measured sensitivities; these are measured already: "
                       "drop --check or use --sensitivity fisher", "--check")
    if opts.sensitivity.startswith("fisher") and mkind != "causal_lm":
        raise CliError(f"the Fisher proxy needs a next-token loss; {name} is an {mkind}: use --sensitivity measured",
                       "--sensitivity")
    check_earlier_result(out, ("results.json", "recipe.json", "overrides.txt", "report.md"), overwrite)  # last

    from floatlab.advise.advisor import BudgetError, advise_table, check_advise, render_advise, run_advise
    from floatlab.ptq.compare import CompareOptions

    lm = inputs.load(model)
    copts = CompareOptions(pairs=pairs, windows=windows, window=window, calib=calib)
    inputs.check_data(lm, pairs=pairs, windows=windows, window=window, calib=calib,
                      calibrates=opts.sensitivity.startswith("fisher") or (opts.sensitivity == "auto" and lm.kind != "encoder"))
    with flag_errors("--budget", BudgetError):
        try:
            check_advise(lm, opts)
        except BudgetError:
            raise
        except ValueError as err:
            raise CliError(str(err), "--model/--formats") from None
    compile_note()
    with progress():
        results = run_advise(lm, opts, copts, cache=None if cache else False)
    results["command"] = command_line()
    results["seconds_wall"] = time.time() - t0
    first = next(r for r in results["rows"] if r["kind"] == "searched")
    show_table(f"advice at {first['budget']:g}{' ' + results['unit'] if results['unit'] else ''} ({first['label']})",
               ("layer", "format", "sensitivity"),
               [[n, f, f"{results['sensitivity'][n][f]:.3g}"] for n, f in first["assignment"].items()],
               right=("sensitivity",))
    table = advise_table(results)
    show_table(f"floatlab advise: {results['model']} (measured end to end, weight-only RTN)", table[0], table[1:],
               right=table[0][1:6])
    pc = results.get("proxy_check")
    if pc:
        f = lambda v: "-" if v is None else f"{v:.3f}"
        say(f"proxy check on {len(pc['layers'])} measured layers: Spearman {f(pc['spearman_all'])} over all "
            f"{pc['pairs']} (layer, format) pairs, {f(pc['spearman_downgrade'])} on the downgrade costs from "
            f"{pc['downgrade_from']}; per format " + ", ".join(f"{k} {f(v)}" for k, v in pc["spearman_per_format"].items()))
    render_advise(results, out)
    say(f"wrote {out}/results.json, recipe.json, overrides.txt (floatlab ptq --override rules), report.md, "
        f"pareto.png in {results['seconds_wall']:.0f}s")
    say(f"quantize with it: floatlab ptq --model {model} --format {results['recipe']['weight']['format']} "
        f"$(sed 's/^/--override /' {out}/overrides.txt) --out OUT")


def register(app: typer.Typer) -> None:
    app.command("advise")(advise_command)
