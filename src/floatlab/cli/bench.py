"""``floatlab bench speed``: floatlab and the installed peers on one tensor, side by side."""

from __future__ import annotations

import typer

from floatlab.cli.output import CliError, check_int, compile_note, say


def speed_command(
    size: int = typer.Option(2 ** 24, help="elements of the float32 test tensor (rounded down to whole rows of the block width)"),
    reps: int = typer.Option(5, help="timed runs per implementation (the best counts)"),
    case: list[str] = typer.Option(None, help="cases to run (default: all): "
                                   "'e4m3 rne', 'e5m2 rne', 'fp16 rne', 'bf16 rne', 'hif8 rna', 'e4m3 sr', 'bf16 sr', mxfp4, nvfp4, hif4"),
    peers: bool = typer.Option(True, help="also time the installed peers"),
) -> None:
    """Elements/s and the ratio to x.clone() and to dst.copy_(x) for every implementation."""
    from floatlab.bench.speed import BLOCK_ROW, CASES, HEADER, run_speed

    check_int(size, "--size", BLOCK_ROW, hint=f"one row of {BLOCK_ROW} values at least")
    check_int(reps, "--reps", 1)
    unknown = [c for c in case or [] if c not in CASES]
    if unknown:
        raise CliError(f"unknown case(s) {', '.join(map(repr, unknown))}; choose from "
                       f"{', '.join(map(repr, CASES))}", "--case")
    compile_note()
    import torch

    say(f"{size:,} float32 values (rounded down to whole rows of {BLOCK_ROW}), {torch.get_num_threads()} "
        f"torch thread(s) (OMP_NUM_THREADS), best of {reps}; a ratio above 1 is faster than the "
        "baseline: fresh outputs, encode and decode compare with x.clone(), `out=` rows with "
        "dst.copy_(x) (the goal column says which)")
    say(HEADER)
    run_speed(size=size, reps=reps, cases=case or None, peers=peers, log=say)


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks: speed against the peers.", no_args_is_help=True)
    bench.command("speed")(speed_command)
    app.add_typer(bench, name="bench")
