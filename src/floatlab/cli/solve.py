"""``floatlab solve``: the mixed-precision iterative refinement study (LU-IR and GMRES-IR).

Runnable on its own as ``python -m floatlab.cli.solve [OPTIONS]``; :func:`register` mounts it
on the main CLI as ``floatlab solve``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from floatlab.linalg.refine import METHODS, PRECISIONS
from floatlab.linalg.study import DEFAULT_FORMATS, boundaries, parse_kappas, run_study, to_markdown, write_outputs

app = typer.Typer(help="LU-IR and GMRES-IR with low-precision LU factorizations.", add_completion=False)


def _split(text: str, valid=None, what: str = "") -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"no {what}s given")
    if valid is not None:
        for item in items:
            if item not in valid:
                raise ValueError(f"unknown {what} {item!r} (valid: {', '.join(valid)})")
    return items


@app.command("solve")
def solve(
    n: int = typer.Option(100, help="Matrix size (the study's default is 100; 200 takes about 4x longer)."),
    kappas: str = typer.Option("1e1..1e10", help="Condition numbers: 'LOW..HIGH' (powers of ten) or a comma list."),
    formats: str = typer.Option(",".join(DEFAULT_FORMATS), help="Factorization formats u_f (any scalar floatlab format)."),
    methods: str = typer.Option(",".join(METHODS), help="lu-ir, gmres-ir."),
    working: str = typer.Option("fp64,fp32", help="Working precisions u (fp64, fp32)."),
    residual: str = typer.Option("fp64", help="Residual precision u_r (fp64 or fp32, at least u)."),
    scaling: str = typer.Option("auto", help="'auto' (squeeze for formats with less range than fp32), 'squeeze' or 'none'."),
    gmres_tol: float = typer.Option(1e-6, help="GMRES relative tolerance per correction."),
    gmres_max_iter: int = typer.Option(0, help="GMRES steps per correction (0: n // 2; n steps would solve "
                                       "any system without the preconditioner)."),
    seed: int = typer.Option(0, help="Random seed of the matrices."),
    mode: int = typer.Option(3, help="randsvd mode: 3 geometric singular values, 2 one small, 1 one large."),
    out: Path | None = typer.Option(None, help="Directory for results.json, report.md and solve.png."),
) -> None:
    """Iterations of LU-IR and GMRES-IR to double-precision accuracy over kappa = 1e1..1e10."""
    console = Console()
    try:
        if n < 2:
            raise ValueError(f"--n must be at least 2, got {n}")
        if mode not in (1, 2, 3):
            raise ValueError(f"--mode must be 1, 2 or 3, got {mode}")
        kappa_list = parse_kappas(kappas)
        fmt_list = _split(formats, what="format")
        method_list = _split(methods, METHODS, "method")
        work_list = _split(working, tuple(PRECISIONS), "working precision")
        _split(residual, tuple(PRECISIONS), "residual precision")
        from floatlab.linalg.study import unit_roundoff
        for f in fmt_list:
            unit_roundoff(f)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    total = len(kappa_list) * len(fmt_list) * len(method_list) * len(work_list)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("solve", total=total)
        rows = run_study(n, kappa_list, fmt_list, method_list, work_list, residual, seed=seed,
                         scaling=scaling, gmres_tol=gmres_tol, gmres_max_iter=gmres_max_iter or None, mode=mode,
                         on_step=lambda label: progress.update(task, advance=1, description=label))
    print(to_markdown(rows), flush=True)
    for bnd in boundaries(rows):
        last = bnd["last_converged_kappa"]
        console.print(f"u={bnd['u']} {bnd['u_f']} {bnd['method']}: converged up to kappa "
                      f"{'none' if last is None else f'{last:.0e}'}", markup=False, highlight=False)
    if out is not None:
        config = {"command": "floatlab solve " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                  "n": n, "kappas": kappa_list, "formats": fmt_list, "methods": method_list,
                  "working": work_list, "residual": residual, "scaling": scaling,
                  "gmres_tol": gmres_tol, "gmres_max_iter": gmres_max_iter or max(1, n // 2), "seed": seed,
                  "randsvd_mode": mode}
        paths = write_outputs(rows, out, config)
        console.print("wrote " + ", ".join(str(p) for p in paths.values()), markup=False, highlight=False)


def register(main_app: typer.Typer) -> None:
    """Mount this command on the main CLI as ``floatlab solve``."""
    main_app.command("solve")(solve)


if __name__ == "__main__":
    app()
