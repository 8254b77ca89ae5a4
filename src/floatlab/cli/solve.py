"""``floatlab solve``: the mixed-precision iterative refinement study (LU-IR and GMRES-IR).

Runnable on its own as ``python -m floatlab.cli.solve [OPTIONS]``; :func:`register` mounts it
on the main CLI as ``floatlab solve``.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from floatlab.cli.output import (CliError, FloatlabCommand, check_earlier_result, check_int, check_out_dir, command_line,
                                 flag_errors, progress, say)
from floatlab.linalg.refine import METHODS, PRECISIONS
from floatlab.linalg.study import (DEFAULT_FORMATS, boundaries, kappa_label, memory_bytes, parse_kappas, run_study,
                                   to_markdown, unit_roundoff, write_outputs)

app = typer.Typer(help="LU-IR and GMRES-IR with low-precision LU factorizations.", add_completion=False,
                  pretty_exceptions_enable=False)


def _physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _split(text: str, valid=None, what: str = "") -> list[str]:
    items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))   # each once
    if not items:
        raise ValueError(f"no {what}s given")
    for item in items:
        if valid is not None and item not in valid:
            raise ValueError(f"unknown {what} {item!r} (valid: {', '.join(valid)})")
    return items


@app.command("solve", cls=FloatlabCommand)
def solve(
    n: int = typer.Option(100, help="Matrix size (200 takes about 4x longer than 100)."),
    kappas: str = typer.Option("1e1..1e10", help="Condition numbers: 'LOW..HIGH' (powers of ten) or a comma list."),
    formats: str = typer.Option(",".join(DEFAULT_FORMATS), help="Factorization formats u_f (any scalar floatlab format)."),
    methods: str = typer.Option(",".join(METHODS), help="Refinement methods: lu-ir, gmres-ir."),
    working: str = typer.Option("fp64,fp32", help="Working precisions u (fp64, fp32)."),
    residual: str = typer.Option("fp64", help="Residual precision u_r (fp64 or fp32, at least as precise as u)."),
    scaling: str = typer.Option("auto", help="'auto' (squeeze for formats with less range than fp32), 'squeeze' or 'none'."),
    gmres_tol: float = typer.Option(1e-6, help="GMRES relative tolerance per correction."),
    gmres_max_iter: int = typer.Option(0, help="GMRES steps per correction (0: n // 2; n steps would solve "
                                       "any system without the preconditioner)."),
    mode: int = typer.Option(3, help="randsvd mode: 3 geometric singular values, 2 one small, 1 one large."),
    seed: int = typer.Option(0, help="Random seed of the matrices."),
    out: Path | None = typer.Option(None, help="Directory for results.json (rows, boundaries, command, "
                                    "environment), report.md and solve.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier result in --out (without it, an --out that holds one is refused)"),
) -> None:
    """Refinement steps of LU-IR and GMRES-IR to working-precision accuracy over kappa = 1e1..1e10."""
    check_int(n, "--n", 2)
    check_int(mode, "--mode", 1, 3)
    check_int(gmres_max_iter, "--gmres-max-iter", 0)
    if not 0 < gmres_tol < 1:          # -1 ran the whole study, every GMRES stopping at once
        raise CliError(f"must be a relative tolerance in (0, 1), got {gmres_tol:g}", "--gmres-tol")
    with flag_errors("--kappas"):
        kappa_list = parse_kappas(kappas)
    with flag_errors("--formats", TypeError):
        fmt_list = _split(formats, what="format")
        for f in fmt_list:
            unit_roundoff(f)
    with flag_errors("--methods"):
        method_list = _split(methods, METHODS, "method")
    with flag_errors("--working"):
        work_list = _split(working, tuple(PRECISIONS), "working precision")
    with flag_errors("--residual"):
        if len(_split(residual, tuple(PRECISIONS), "residual precision")) > 1:
            raise ValueError(f"give one residual precision u_r (fp64 or fp32), got {residual!r}; "
                             "each working precision u is refined with the same u_r")
        residual = residual.strip()
        if any(PRECISIONS[residual].itemsize < PRECISIONS[w].itemsize for w in work_list):
            raise ValueError(f"u_r = {residual} is less precise than a working precision in {working!r}")
    with flag_errors("--scaling"):
        if scaling not in ("auto", "squeeze", "none"):
            raise ValueError(f"must be auto, squeeze or none, got {scaling!r}")
    need, have = memory_bytes(n, gmres_max_iter or None), _physical_memory()
    if have and need > have // 2:
        raise CliError(f"n = {n} needs about {need / 2 ** 30:.1f} GiB (six n x n float64 matrices), more than "
                       f"half of this machine's {have / 2 ** 30:.1f} GiB; choose a smaller --n (the rounded LU "
                       f"is O(n^3): --n 100 already takes minutes)", "--n")
    if out is not None:
        check_earlier_result(out, ("results.json", "report.md"), overwrite)
        out = check_out_dir(out)

    from floatlab.progress import task

    total = len(kappa_list) * len(fmt_list) * len(method_list) * len(work_list)
    with progress(), task("solve", total, "runs") as t:
        rows = run_study(n, kappa_list, fmt_list, method_list, work_list, residual, seed=seed,
                         scaling=scaling, gmres_tol=gmres_tol, gmres_max_iter=gmres_max_iter or None,
                         mode=mode, on_step=lambda label: t.advance(1, label))
    say(to_markdown(rows))
    for bnd in boundaries(rows):
        last = bnd["last_converged_kappa"]
        say(f"u={bnd['u']} {bnd['u_f']} {bnd['method']}: "
            + ("did not converge at any kappa" if last is None else f"converged up to kappa {kappa_label(last)}"))
    if out is not None:
        config = {"command": command_line(), "n": n, "kappas": kappa_list, "formats": fmt_list,
                  "methods": method_list, "working": work_list, "residual": residual, "scaling": scaling,
                  "gmres_tol": gmres_tol, "gmres_max_iter": gmres_max_iter or max(1, n // 2), "seed": seed,
                  "randsvd_mode": mode}
        paths = write_outputs(rows, out, config)
        say("wrote " + ", ".join(str(p) for p in paths.values()))


def register(main_app: typer.Typer) -> None:
    """Mount this command on the main CLI as ``floatlab solve``."""
    main_app.command("solve", cls=FloatlabCommand)(solve)


if __name__ == "__main__":
    app()
