"""floatlab train --sweep: the grid's recipes and counted overheads, the file checks, and a
sweep killed mid-cell resumes without training any finished cell again."""

from __future__ import annotations

import json

import pytest

from floatlab.train.sweep import SweepError, load_sweep, make_cell, run_sweep, sweep_from_dict


@pytest.fixture(autouse=True)
def _uncompiled(monkeypatch):
    # the reference path (the same numbers, tests/test_fast.py) without compiling kernels per cell
    monkeypatch.setenv("FLOATLAB_FAST", "0")


def _axes(**kw):
    a = dict(element="e2m1", scale="e8m0", block=32, sr="none", rht="none", tensor_scaling="none")
    a.update(kw)
    return a


def test_cells_put_sr_rht_and_scaling_on_the_named_roles():
    c = make_cell(_axes(scale="ue4m3+ts", block=16, sr="grads", rht="wgrad"))
    assert c.format == "e2m1/ue4m3/16/ts"
    spec = c.recipe.default
    roundings = {(g, o): getattr(spec.gemm(g), o).rounding for g in ("fprop", "dgrad", "wgrad") for o in "ab"}
    assert roundings == {("fprop", "a"): None, ("fprop", "b"): None, ("dgrad", "a"): "sr",
                         ("dgrad", "b"): None, ("wgrad", "a"): "sr", ("wgrad", "b"): None}
    assert (spec.fprop.hadamard, spec.dgrad.hadamard, spec.wgrad.hadamard) == (0, 0, 16)
    assert all(getattr(spec.gemm(g), o).format == "e2m1/ue4m3/16/ts" for g in ("fprop", "dgrad", "wgrad") for o in "ab")
    everything = make_cell(_axes(sr="all", rht="all", tensor_scaling="delayed")).recipe.default
    assert all(getattr(everything.gemm(g), o).rounding == "sr" and getattr(everything.gemm(g), o).scaling.value
               == "delayed" for g in ("fprop", "dgrad", "wgrad") for o in "ab")
    assert make_cell(_axes(scale="e8m0:rceil")).format == "e2m1/e8m0/32/rceil"


@pytest.mark.parametrize("axes, ops", [
    (_axes(), 0.0),
    (_axes(sr="grads"), 2 * 2 / 6),                      # SR: 2 ops on 2 of the 6 operands
    (_axes(sr="all"), 2.0),
    (_axes(rht="wgrad"), 2 * (4 + 1) / 6),               # RHT16: log2(16) + 1 on wgrad's 2 operands
    (_axes(rht="backward", sr="backward"), (4 * 5 + 4 * 2) / 6),
    (_axes(scale="ue4m3+ts", block=16), 2.0),            # the tensor scale: amax + multiply, everywhere
    (_axes(tensor_scaling="current"), 2.0),
])
def test_counted_overhead(axes, ops):
    assert make_cell(axes).extra_ops == pytest.approx(ops)


@pytest.mark.parametrize("d, words", [
    ({"grid": {"colour": ["red"]}}, "unknown grid axis colour"),
    ({"grid": {"scale": ["e8m0", "nope"]}}, "unknown format 'nope'"),
    ({"grid": {"scale": ["e8m0+ts"]}}, "no second scaling level"),
    ({"grid": {"sr": ["gradz"]}}, "sr must be one of"),
    ({"grid": {"rht": ["grads"]}}, "rht must be one of"),
    ({"grid": {"block": []}}, "grid.block is empty"),
    ({"grid": {"block": [16, 16]}}, "repeats a value"),
    ({"steps": 0}, "steps must be"), ({"seeds": 0}, "seeds must be"), ({"rht_size": 12}, "rht_size"),
    ({"recipes": ["nvfp5"]}, "unknown recipe 'nvfp5'"), ({"options": {"dtype": "fp8"}}, "options: dtype"),
    ({"stepz": 3}, "unknown key(s) stepz"),
])
def test_bad_sweeps_name_the_key(d, words):
    with pytest.raises(SweepError) as err:
        sweep_from_dict(d)
    assert words in str(err.value)


def test_sweep_file_errors_name_the_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("grid: [1, 2\n")
    with pytest.raises(SweepError, match="s.yaml: not valid YAML"):
        load_sweep(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
    q = tmp_path / "s.json"
    q.write_text(json.dumps({"grid": {"sr": ["x"]}}))
    with pytest.raises(SweepError, match="s.json: sr must be one of"):
        load_sweep(q)


class Killed(Exception):
    pass


def test_killed_sweep_resumes_without_repeating_finished_cells(tmp_path):
    import torch
    torch.set_num_threads(1)
    p = tmp_path / "sweep.yaml"
    p.write_text("name: t\npreset: smoke\nsteps: 8\nseeds: 1\n"
                 "grid:\n  scale: [e8m0, ue5m3]\n  block: [16]\n")
    sw = load_sweep(p)
    names = [c.name for c in sw.cells()]
    trained: dict[str, int] = {}

    def progress(name, seed, total):
        def step(k, loss):
            trained[name] = trained.get(name, 0) + 1
            if kill and name == names[1] and k == 7:    # dies after step 7 of the second cell
                raise Killed
        return step

    kill = True
    with pytest.raises(Killed):
        run_sweep(sw, tmp_path / "out", progress=progress)
    assert trained == {"bf16": 8, names[0]: 8, names[1]: 7}
    assert not (tmp_path / "out" / "sweep.json").exists()
    kill, trained, plans = False, {}, {}
    doc = run_sweep(sw, tmp_path / "out", progress=progress,
                    on_run=lambda name, seed, plan: plans.__setitem__(name, plan))
    # finished cells reused, the killed one resumed from its step-6 checkpoint (smoke: every 6)
    assert plans == {"bf16": "reused", names[0]: "reused", names[1]: "resumed at step 6"}
    assert trained == {names[1]: 2}
    assert [r["cell"] for r in doc["rows"]] == names
    for f in ("sweep.json", "sweep.csv", "sweep.md", "sweep.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert all(r["time_ratio"] > 0 and r["final_loss"] > 0 for r in rows)


@pytest.mark.parametrize("args, flag, words", [
    (["--sweep", "{f}", "-r", "hif4"], "--sweep", "from the sweep file"),
    (["--sweep", "{f}", "--seeds", "2"], "--sweep", "from the sweep file"),
    (["--sweep", "{bad}"], "--sweep", "sr must be one of"),
    (["--sweep", "{missing}"], "--sweep", "does not exist"),
    (["--dtype", "fp8"], "--dtype", "dtype must be one of fp32, fp16, bf16"),
    (["--loss-scale", "static"], "--loss-scale", "loss_scale must be one of"),
    (["--loss-scale", "dynamic", "--loss-scale-window", "0"], "--loss-scale-window", "growth_interval"),
    (["--bf16-warmup", "-2"], "--bf16-warmup", "warmup_bf16"),
    (["--dtype", "fp16", "--master-weights", "bf16"], "--master-weights", "fp32"),
    (["--task", "digits", "--dtype", "fp16"], "--dtype", "an option of the lm task"),
])
def test_cli_refuses_in_one_line_before_any_work(tmp_path, args, flag, words):
    from typer.testing import CliRunner

    from floatlab.cli import app
    f, bad = tmp_path / "s.yaml", tmp_path / "bad.yaml"
    f.write_text("preset: smoke\nsteps: 2\n")
    bad.write_text("grid: {sr: [x]}\n")
    args = [a.format(f=f, bad=bad, missing=tmp_path / "missing.yaml") for a in args]
    res = CliRunner().invoke(app, ["train", *args, "--out", str(tmp_path / "d")])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and flag in errors[0] and words in errors[0], res.output
    assert not (tmp_path / "d" / "runs").exists()
