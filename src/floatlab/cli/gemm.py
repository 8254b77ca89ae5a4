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

from floatlab.cli.output import CliError, FloatlabCommand, check_earlier_result, check_out_dir, command_line, flag_errors, progress, say, show_table
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
from floatlab.text import plural

app = typer.Typer(
    help="Error analysis of precision-recovery GEMM methods against a float64 reference.",
    add_completion=False,
    pretty_exceptions_enable=False,
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


def _parse_accumulator(text: str):
    import floatlab
    from floatlab.gemm.accumulate import Accumulator

    acc = Accumulator.parse(text)
    if acc is not None:
        floatlab.get_format(acc.fmt)          # a bad format name, with its did-you-mean hint
        if acc.chunk < 1:
            raise ValueError(f"chunk in {text!r} must be >= 1, got {acc.chunk}")
    return acc


@app.command("gemm", cls=FloatlabCommand)
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
        help="Accumulator: 'none' (float32 BLAS, round-to-nearest) or 'fmt:rounding:chunk' (the last two "
        "optional), e.g. 'fp32:rtz:16' for a tensor-core-like accumulator.",
    ),
    out: Path | None = typer.Option(None, help="Directory for gemm.json, gemm.md, gemm.png and results.json "
                                    "(the rows with the command and the environment)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Measure max/mean/Frobenius relative errors of each method against float64."""
    with flag_errors("--sizes"):
        size_list = parse_sizes(sizes)
    with flag_errors("--dists"):
        dist_list = parse_list(dists, DISTRIBUTIONS, "distribution")
    with flag_errors("--methods"):
        method_list = _parse_methods(methods)
    with flag_errors("--accumulator", TypeError):
        _parse_accumulator(accumulator)
    if out is not None:
        check_earlier_result(out, ("results.json", "gemm.json", "gemm.md"), overwrite)
        out = check_out_dir(out)

    from floatlab.progress import task

    total = len(size_list) * len(dist_list) * len(method_list)
    with progress(), task("gemm", total, "runs") as t:
        try:
            rows = run_analysis(size_list, dist_list, method_list, seed=seed, accumulator=accumulator,
                                on_step=lambda label: t.advance(1, label))
        except NotImplementedError as exc:
            raise CliError(str(exc), "--methods") from None

    title = f"GEMM error vs float64 (accumulator: {rows[0]['accumulator'] if rows else accumulator}, seed {seed})"
    show_table(title, TABLE_COLUMNS, [table_cells(r) for r in rows],
               right=[c for c in TABLE_COLUMNS if c not in ("size", "dist", "method", "status")])
    broken = sum(r["broken"] for r in rows)
    say(f"{broken} of {plural(len(rows), 'run')} flagged broken (non-finite, >100x fp32's error, or >4u for fp16/bf16).")
    if out is not None:
        from floatlab.atomic import write_json
        from floatlab.gemm.analysis import _json_safe
        from floatlab.provenance import environment

        paths = write_outputs(rows, out)
        paths["results"] = write_json(out / "results.json", {"command": command_line(), "environment": environment(),
                                                              "rows": [_json_safe(r) for r in rows]})
        say("wrote " + ", ".join(str(p) for p in paths.values()))


def register(main_app: typer.Typer) -> None:
    """Mount this command on the main CLI as ``floatlab gemm``."""
    main_app.command("gemm")(gemm)


if __name__ == "__main__":
    app()
