"""The refinement study: LU-IR and GMRES-IR over condition numbers, factorization formats and
working precisions (``floatlab solve``).

For each condition number ``kappa`` one random matrix ``A = randsvd(n, kappa, mode)`` (mode 3:
geometrically spaced singular values; mode 2: one small singular value; ``||A||_2 = 1``), a random solution ``x_true ~ N(0, 1)`` and
``b = A x_true`` (float64). Each factorization format ``u_f`` factors ``A`` once (scaled with
:func:`~floatlab.linalg.squeeze` where ``scaling`` asks for it); each (method, ``u``) pair then
refines with the same factors and ``u_r = residual``. A row records the final status, the number
of refinement steps, GMRES steps, backward and forward errors.

The textbook expectation (Carson & Higham 2017, 2018): LU-IR converges while ``kappa u_f`` is well
below 1 (its error contracts by about ``kappa u_f`` per step); GMRES-IR converges further, since the
LU-preconditioned matrix is well conditioned long after the factors stop being accurate.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from floatlab.emulation.rounding import resolve_format
from floatlab.formats.finfo import finfo

from .matrices import randsvd
from .refine import METHODS, PRECISIONS, default_scaling, factorize, refine

DEFAULT_KAPPAS = tuple(10.0 ** k for k in range(1, 11))
DEFAULT_FORMATS = ("fp16", "bf16", "e4m3")

Row = dict[str, Any]


def unit_roundoff(fmt) -> float:
    """``u = eps / 2`` of a floatlab format (fp64: 2^-53)."""
    spec = resolve_format(fmt)
    if spec.name == "fp64":
        return 2.0 ** -53
    return finfo(spec).eps / 2


def parse_kappas(text: str) -> list[float]:
    """``"1e1..1e10"`` (every power of ten in between) or a comma list ``"10,1e4,1e8"`` (sorted,
    each value once: ``1e1,10`` is one kappa).

    Raises:
        ValueError: neither form, a number that does not parse, a value below 1 or not finite,
            or a reversed range.
    """
    text = text.strip()
    syntax = "give 'LOW..HIGH' (every power of ten in between, e.g. 1e1..1e8) or a comma list (e.g. 10,1e4,1e8)"
    try:
        if ".." in text:
            lo, hi = (float(t) for t in text.split(".."))
        else:
            vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"cannot read condition numbers from {text!r}: {syntax}") from None
    if ".." not in text and not vals:
        raise ValueError(f"no condition numbers in {text!r}: {syntax}")
    given = (lo, hi) if ".." in text else vals
    if not all(math.isfinite(v) for v in given):
        raise ValueError(f"condition numbers must be finite numbers (above 1.8e308 a float64 is inf), got {text!r}")
    if ".." in text:
        if not (lo >= 1 and hi >= lo):
            raise ValueError(f"kappa range {text!r} must satisfy 1 <= low <= high")
        a, b = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
        if a > b:
            raise ValueError(f"kappa range {text!r} holds no power of ten; {syntax}")
        return [10.0 ** k for k in range(a, b + 1)]
    if not vals or any(not v >= 1 for v in vals):
        raise ValueError(f"condition numbers must be >= 1, got {text!r}")
    return sorted(set(vals))             # each once, in the order of the tables


def kappa_label(kappa: float) -> str:
    """``"1e3"`` for a power of ten, else the value as given (``"50"``, ``"2.5e+04"``)."""
    k = round(math.log10(kappa))
    return f"1e{k}" if 10.0 ** k == kappa else f"{kappa:g}"


def memory_bytes(n: int, gmres_max_iter: int | None = None) -> int:
    """About the most memory one case of the study holds at once, in bytes: ``A``, its factors
    and their scaled copies (float64, ``n x n`` each, six of them) and GMRES's Krylov basis
    (``(m + 1) x n``, ``m = gmres_max_iter``, default ``n // 2``)."""
    m = max(1, n // 2) if gmres_max_iter is None else gmres_max_iter
    return 8 * (6 * n * n + (m + 1) * n)


def _seed(seed: int, n: int, kappa: float) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{n}:{kappa:.6g}".encode())) % (2 ** 63)


def run_study(n: int = 100, kappas: Sequence[float] = DEFAULT_KAPPAS,
              formats: Sequence[str] = DEFAULT_FORMATS, methods: Sequence[str] = METHODS,
              working: Sequence[str] = ("fp64", "fp32"), residual: str = "fp64", *, seed: int = 0,
              scaling: str = "auto", gmres_tol: float = 1e-6, gmres_max_iter: int | None = None,
              mode: int = 3, on_step: Callable[[str], None] | None = None) -> list[Row]:
    """Run every (kappa, format, method, working precision) case; one row each.

    ``gmres_max_iter`` limits GMRES's Krylov dimension per correction (default ``n // 2``): with
    ``n`` steps GMRES solves any system by itself, so a converged GMRES-IR run here means the
    low-precision LU preconditioner did the work.

    Raises:
        ValueError: an unknown format, method, precision or scaling; ``n < 2``.
    """
    if scaling not in ("auto", "none", "squeeze"):
        raise ValueError(f"scaling must be 'auto', 'none' or 'squeeze', got {scaling!r}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} (valid: {', '.join(METHODS)})")
    for w in (*working, residual):
        if w not in PRECISIONS:
            raise ValueError(f"unknown precision {w!r} (valid: {', '.join(PRECISIONS)})")
    uf = {f: unit_roundoff(f) for f in formats}      # also checks the names
    if gmres_max_iter is None:
        gmres_max_iter = max(1, n // 2)
    rows: list[Row] = []
    for kappa in kappas:
        g = torch.Generator().manual_seed(_seed(seed, n, kappa))
        A = randsvd(n, kappa, mode=mode, generator=g)
        x_true = torch.randn(n, dtype=torch.float64, generator=g)
        b = A @ x_true
        kappa_inf = float(torch.linalg.cond(A, float("inf")))
        for fmt in formats:
            sc = default_scaling(fmt) if scaling == "auto" else (None if scaling == "none" else "squeeze")
            t0 = time.perf_counter()
            factors, failure = None, ""
            try:
                factors = factorize(A, fmt, scaling=sc)
            except (ArithmeticError, ValueError) as err:   # overflow, zero pivot in u_f
                failure = f"factorization failed: {err}"
            t_fact = time.perf_counter() - t0
            for w in working:
                for method in methods:
                    base = {"n": n, "kappa": kappa, "kappa_inf": kappa_inf, "u_f": fmt,
                            "unit_roundoff_f": uf[fmt], "kappa_uf": kappa * uf[fmt],
                            "scaling": sc or "none", "method": method, "u": w, "u_r": residual,
                            "seed": seed, "factor_seconds": t_fact, "gmres_max_iter": gmres_max_iter,
                            "randsvd_mode": mode}
                    if factors is None:
                        rows.append({**base, "status": "failed", "reason": failure, "iterations": 0,
                                     "gmres_iterations": 0, "gmres_per_step": [],
                                     "backward_error": None, "forward_error": None,
                                     "backward_errors": [], "growth": None, "seconds": 0.0})
                    else:
                        t1 = time.perf_counter()
                        res = refine(A, b, method=method, working=w, residual=residual,
                                     factors=factors, gmres_tol=gmres_tol,
                                     gmres_max_iter=gmres_max_iter, x_true=x_true)
                        rows.append({**base, "status": res.status, "reason": "",
                                     "theta": factors.meta.get("theta"), "mu": factors.mu,
                                     "iterations": res.iterations,
                                     "gmres_iterations": sum(res.gmres_iterations),
                                     "gmres_per_step": list(res.gmres_iterations),
                                     "backward_error": res.backward_errors[-1],
                                     "forward_error": res.forward_errors[-1],
                                     "backward_errors": res.backward_errors,
                                     "growth": factors.growth,
                                     "seconds": time.perf_counter() - t1})
                    if on_step is not None:
                        on_step(f"kappa={kappa_label(kappa)} {fmt} {method} u={w}")
    return rows


def cell(row: Row) -> str:
    """``"7"`` (converged in 7 steps), ``"3 (51)"`` (GMRES-IR: steps, GMRES steps), or the failure."""
    if row["status"] == "converged":
        return f"{row['iterations']}" + (f" ({row['gmres_iterations']})" if row["method"] == "gmres-ir" else "")
    short = {"stagnated": "stag", "diverged": "div", "max_iter": "max", "failed": "fail"}[row["status"]]
    return f"{short}" + (f" ({row['gmres_iterations']})" if row["method"] == "gmres-ir" and row["gmres_iterations"] else "")


def to_markdown(rows: Sequence[Row]) -> str:
    """One table per working precision: a row per kappa, a column per (u_f, method)."""
    out = []
    for w in dict.fromkeys(r["u"] for r in rows):
        sub = [r for r in rows if r["u"] == w]
        cols = list(dict.fromkeys((r["u_f"], r["scaling"], r["method"]) for r in sub))
        header = ["kappa"] + [f"{f}{' (scaled)' if s == 'squeeze' else ''} {m.upper()}" for f, s, m in cols]
        lines = [f"u = {w}, u_r = {sub[0]['u_r']}, n = {sub[0]['n']}, randsvd mode {sub[0].get('randsvd_mode', 3)}, "
                 f"GMRES <= {sub[0].get('gmres_max_iter')} steps per correction: refinement steps to "
                 f"backward error <= 2u (GMRES-IR: steps (total GMRES steps)); "
                 "stag = stagnated, div = diverged, max = still above 2u after max_iter refinement steps, "
                 "fail = the factorization failed (zero pivot or overflow)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for kappa in dict.fromkeys(r["kappa"] for r in sub):
            cells = [kappa_label(kappa)]
            for f, s, m in cols:
                match = [r for r in sub if r["kappa"] == kappa and (r["u_f"], r["scaling"], r["method"]) == (f, s, m)]
                cells.append(cell(match[0]) if match else "")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def boundaries(rows: Sequence[Row]) -> list[Row]:
    """Per (u, u_f, method): the largest kappa that converged with every smaller one converging too,
    and the first that did not."""
    out = []
    keys = dict.fromkeys((r["u"], r["u_f"], r["method"]) for r in rows)
    for u, f, m in keys:
        sub = sorted((r for r in rows if (r["u"], r["u_f"], r["method"]) == (u, f, m)), key=lambda r: r["kappa"])
        last, first_fail = None, None
        for r in sub:
            if r["status"] == "converged" and first_fail is None:
                last = r
            elif first_fail is None:
                first_fail = r
        out.append({"u": u, "u_f": f, "method": m,
                    "last_converged_kappa": None if last is None else last["kappa"],
                    "kappa_uf_there": None if last is None else last["kappa_uf"],
                    "first_failure_kappa": None if first_fail is None else first_fail["kappa"],
                    "first_failure": None if first_fail is None else first_fail["status"]})
    return out


def plot(rows: Sequence[Row], path: str | Path) -> Path:
    """Final backward error against kappa, one panel per working precision (x: not converged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = list(dict.fromkeys(r["u"] for r in rows))
    fig, axes = plt.subplots(1, len(ws), figsize=(6 * len(ws), 4.4), squeeze=False)
    series = list(dict.fromkeys((r["u_f"], r["method"]) for r in rows))
    for ax, w in zip(axes[0], ws):
        for i, (f, m) in enumerate(series):
            sub = sorted((r for r in rows if r["u"] == w and (r["u_f"], r["method"]) == (f, m)), key=lambda r: r["kappa"])
            ks = [r["kappa"] for r in sub]
            errs = [r["backward_error"] if r["backward_error"] is not None and math.isfinite(r["backward_error"])
                    else 1.0 for r in sub]
            style = "-" if m == "lu-ir" else "--"
            color = f"C{[s[0] for s in series].index(f) % 10}"
            ax.plot(ks, errs, style, color=color, label=f"{f} {m.upper()}", alpha=0.8)
            for k, e, r in zip(ks, errs, sub):
                ax.scatter(k, e, marker="o" if r["status"] == "converged" else "x", color=color, s=22)
        ax.axhline(2 * (2.0 ** -53 if w == "fp64" else 2.0 ** -24), color="gray", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("kappa_2(A)")
        ax.set_ylabel("final normwise backward error")
        ax.set_title(f"u = {w}, u_r = {rows[0]['u_r']}, n = {rows[0]['n']}  (x = not converged)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    from floatlab.atomic import atomic_path
    try:
        with atomic_path(path) as tmp:        # whole or not at all, the umask's mode
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path


def write_outputs(rows: Sequence[Row], out_dir: str | Path, config: dict | None = None) -> dict[str, Path]:
    """``results.json`` (rows, boundaries, config, ``environment``), ``report.md``, ``solve.png``."""
    from floatlab.atomic import write_json, write_text
    from floatlab.provenance import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "report.md", "png": out / "solve.png"}

    def safe(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    clean = [{k: ([safe(x) for x in v] if isinstance(v, list) else safe(v)) for k, v in r.items()} for r in rows]
    payload = {"config": config or {}, "rows": clean, "boundaries": boundaries(rows),
               "environment": environment()}
    write_json(paths["json"], payload, indent=1)
    lines = ["# Iterative refinement study", ""]
    if config and config.get("command"):
        lines += ["```", config["command"], "```", ""]
    lines += [to_markdown(rows), "", "| u | u_f | method | last converged kappa (kappa u_f) | first failure |",
              "|---|---|---|---|---|"]
    for bnd in boundaries(rows):
        last = "none" if bnd["last_converged_kappa"] is None else \
            f"{kappa_label(bnd['last_converged_kappa'])} ({bnd['kappa_uf_there']:.2g})"
        first = "none" if bnd["first_failure_kappa"] is None else f"{kappa_label(bnd['first_failure_kappa'])} ({bnd['first_failure']})"
        lines.append(f"| {bnd['u']} | {bnd['u_f']} | {bnd['method']} | {last} | {first} |")
    write_text(paths["md"], "\n".join(lines) + "\n")
    plot(rows, paths["png"])
    return paths
