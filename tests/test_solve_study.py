"""The refinement study behind ``floatlab solve``: rows, tables, outputs, command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from floatlab.linalg.study import boundaries, cell, parse_kappas, run_study, to_markdown, write_outputs


def test_parse_kappas():
    assert parse_kappas("1e1..1e4") == [10.0, 100.0, 1000.0, 10000.0]
    assert parse_kappas("10, 1e8") == [10.0, 1e8]
    with pytest.raises(ValueError):
        parse_kappas("0.5")


def test_small_study_rows_tables_and_files(tmp_path):
    rows = run_study(n=24, kappas=[10.0, 1e8], formats=["fp16"], working=["fp64"], seed=1)
    assert len(rows) == 4
    by = {(r["kappa"], r["method"]): r for r in rows}
    assert by[(10.0, "lu-ir")]["status"] == "converged"
    assert by[(1e8, "lu-ir")]["status"] in ("stagnated", "diverged", "max_iter")
    assert by[(10.0, "gmres-ir")]["gmres_iterations"] >= 1
    md = to_markdown(rows)
    assert "| kappa | fp16 (scaled) LU-IR | fp16 (scaled) GMRES-IR |" in md
    for status in ("stagnated", "diverged", "max_iter", "failed"):   # every word a cell can hold is explained
        short = cell({"status": status, "method": "lu-ir"})
        assert f"{short} = " in md, short
    bnd = {b["method"]: b for b in boundaries(rows)}
    assert bnd["lu-ir"]["last_converged_kappa"] == 10.0
    paths = write_outputs(rows, tmp_path, {"command": "floatlab solve --n 24"})
    data = json.loads(paths["json"].read_text())
    assert "environment" in data and data["rows"][0]["u_f"] == "fp16"
    assert "floatlab solve --n 24" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_bad_input():
    with pytest.raises(ValueError, match="unknown format"):
        run_study(n=8, kappas=[10.0], formats=["fp99"])
    with pytest.raises(ValueError, match="method"):
        run_study(n=8, kappas=[10.0], methods=["cg"])
    with pytest.raises(ValueError, match="precision"):
        run_study(n=8, kappas=[10.0], working=["fp128"])


def test_command_line(tmp_path):
    from floatlab.cli.solve import app

    result = CliRunner().invoke(app, ["--n", "16", "--kappas", "10", "--formats", "bf16", "--working", "fp32",
                                      "--methods", "lu-ir", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "bf16 LU-IR" in result.output and (tmp_path / "report.md").exists()
    bad = CliRunner().invoke(app, ["--formats", "fp17"])
    assert bad.exit_code == 2 and "--formats" in bad.output and "fp17" in bad.output
    bad = CliRunner().invoke(app, ["--working", "fp64", "--residual", "fp32"])
    assert bad.exit_code == 2 and "--residual" in bad.output


def test_outputs_are_written_whole_with_the_umask_mode_and_a_bad_out_is_refused_first(tmp_path, monkeypatch):
    """``floatlab solve --out`` writes results.json, report.md and solve.png through the shared
    atomic writer (umask's mode, no temporary left, a failed plot keeps the previous PNG), and
    refuses a file given as --out before any solve."""
    import os

    import matplotlib.figure

    from floatlab.cli import app as main_app

    args = ["solve", "--n", "8", "--kappas", "10", "--formats", "bf16", "--working", "fp64",
            "--methods", "lu-ir", "--out", str(tmp_path)]
    old = os.umask(0o027)
    try:
        r = CliRunner().invoke(main_app, args)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    names = ["report.md", "results.json", "solve.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert {n: oct((tmp_path / n).stat().st_mode & 0o777) for n in names} == {n: oct(0o640) for n in names}

    before = (tmp_path / "solve.png").read_bytes()

    def half_then_fail(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_fail)
    r = CliRunner().invoke(main_app, args)
    assert r.exit_code != 0
    assert (tmp_path / "solve.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names

    r = CliRunner().invoke(main_app, ["solve", "--n", "8", "--out", str(tmp_path / "report.md")])
    assert r.exit_code == 2 and "--out" in r.output and "is a file" in r.output
    assert "Traceback" not in r.output
