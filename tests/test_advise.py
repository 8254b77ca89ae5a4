"""The per-layer format advisor (floatlab.advise): solvers on constructed instances, the budget's
bad inputs, sensitivities checked against their definitions, and the command end to end on a tiny
model."""

import itertools
import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from floatlab.advise import BudgetError, Problem, solve_genetic, solve_greedy, solve_milp
from floatlab.advise.search import random_assignments

pytest.importorskip("scipy")


def _random_problem(seed, n=4, k=3):
    rng = random.Random(seed)
    cost = [sorted(rng.uniform(1, 10) for _ in range(k)) for _ in range(n)]
    loss = [sorted((rng.uniform(0, 5) for _ in range(k)), reverse=True) for _ in range(n)]
    lo, hi = sum(c[0] for c in cost), sum(c[-1] for c in cost)
    return Problem(cost, loss, lo + rng.uniform(0.2, 0.8) * (hi - lo))


def _brute_force(p):
    best = None
    for choice in itertools.product(range(len(p.options)), repeat=p.size):
        if p.total_cost(choice) <= p.budget and (best is None or p.total_loss(choice) < p.total_loss(best)):
            best = choice
    return best


def test_milp_finds_the_known_optimum_where_greedy_does_not():
    """Knapsack trap. A: cost 6 or 0 (loss 0 / 6), B: cost 3 or 0 (loss 0 / 4); budget 6, so 3
    must be saved. Greedy downgrades the best loss per cost saved first: A (1 per unit, against
    B's 4/3), saving 6 for a loss of 6, and cannot take A back. The optimum downgrades B: loss 4."""
    p = Problem([[0, 6], [0, 3]], [[6, 0], [4, 0]], budget=6)
    assert _brute_force(p) == (1, 0)
    sol = solve_milp(p)
    assert sol.choice == (1, 0) and sol.loss == 4 and sol.cost == 6
    g = solve_greedy(p)
    assert g.choice == (0, 1) and g.loss == 6


def test_milp_equals_brute_force_on_random_instances():
    worse = 0
    for seed in range(12):
        p = _random_problem(seed)
        best = _brute_force(p)
        sol = solve_milp(p)
        assert sol.cost <= p.budget
        assert sol.loss == pytest.approx(p.total_loss(best), abs=1e-9)
        g = solve_greedy(p)
        assert g.cost <= p.budget and g.loss >= sol.loss - 1e-9
        worse += g.loss > sol.loss + 1e-9
    assert worse < 12


def test_genetic_never_scores_or_returns_an_assignment_over_budget():
    class Watched(Problem):
        def total_loss(self, sol):
            assert self.total_cost(sol) <= self.budget, "an assignment over budget was scored"
            return super().total_loss(sol)

    for seed in range(6):
        base = _random_problem(seed, n=8, k=4)
        p = Watched(base.cost, base.loss, base.budget)
        sol = solve_genetic(p, generations=15, seed=seed)
        assert sol.cost <= p.budget and sol.extra["rejected"] >= 0
        assert sol.loss <= solve_greedy(p).loss + 1e-9          # seeded with the greedy solution
        for choice in random_assignments(p, 5, seed=seed):
            assert p.total_cost(choice) <= p.budget


def test_budget_outside_the_possible_range_says_what_is_possible():
    p = Problem([[1, 2], [1, 2]], [[1, 0], [1, 0]], budget=1.5)
    with pytest.raises(BudgetError, match=r"below the cheapest assignment \(2.*possible budgets: 2 to 4"):
        p.check_budget()
    p.budget = 4
    with pytest.raises(BudgetError, match=r"at or above the richest assignment \(4.*useful budgets: 2 to 4"):
        p.check_budget()
    with pytest.raises(ValueError, match="no quantizable layer"):
        Problem([], [], 1.0)


def test_tie_groups_join_the_layers_that_read_one_input():
    from floatlab.advise.advisor import tie_groups
    names = [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
            [f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")] + \
            ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key"]
    assert tie_groups(names) == [[0, 1, 2], [3], [4, 5], [6], [7, 8]]
    assert tie_groups(names, tie=False) == [[i] for i in range(9)]


def test_unknown_or_too_few_formats_and_bad_options_are_refused():
    from floatlab.advise.advisor import AdviseOptions
    with pytest.raises(ValueError, match="candidate format 'mxfp5'.*Did you mean"):
        AdviseOptions(formats=("mxfp4", "mxfp5"), budgets=(4.5,))
    with pytest.raises(ValueError, match="at least two"):
        AdviseOptions(formats=("mxfp4",), budgets=(4.5,))
    with pytest.raises(ValueError, match="unknown solver 'lp'"):
        AdviseOptions(formats=("mxfp4", "nvfp4"), budgets=(4.5,), solvers=("lp",))
    with pytest.raises(ValueError, match="no MAC datapath"):
        AdviseOptions(formats=("mxfp4", "int2_asym_salient10wmag"), budgets=(1.0,), kind="energy")


# ---- on a tiny model -------------------------------------------------------------------------
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tinymodels
    from floatlab.models import load_model
    folder = tinymodels.build("llama", tmp_path_factory.mktemp("llama"))
    return folder, load_model(folder, log=lambda *a: None)


def test_model_without_quantizable_layer_is_refused(tiny):
    from dataclasses import replace

    from floatlab.advise.advisor import AdviseOptions, check_advise
    lm = replace(tiny[1], model=torch.nn.Sequential(torch.nn.LayerNorm(4)))
    with pytest.raises(ValueError, match="no quantizable layer"):
        check_advise(lm, AdviseOptions(formats=("int4", "int8"), budgets=(6.0,)))


def test_budget_range_checked_on_the_model_before_any_work(tiny):
    from floatlab.advise.advisor import AdviseOptions, check_advise
    lm = tiny[1]
    with pytest.raises(BudgetError, match="below the cheapest"):
        check_advise(lm, AdviseOptions(formats=("int4", "int8"), budgets=(3.0,)))
    with pytest.raises(BudgetError, match="at or above the richest"):
        check_advise(lm, AdviseOptions(formats=("int4", "int8"), budgets=(9.0,)))
    layers, cost, scale, unit = check_advise(lm, AdviseOptions(formats=("int4", "int8"), budgets=(6.0,)))
    assert unit == " bits/weight" and scale == sum(l.weight.numel() for l in layers.values())


def test_fisher_sensitivity_is_its_definition(tiny):
    from floatlab.advise.sensitivity import fisher_sensitivity, quantized_weight
    from floatlab.ptq.compare import CompareOptions, calibration_batches
    from floatlab.ptq.quantizer import QuantSpec
    lm = tiny[1]
    copts = CompareOptions(window=16, windows=1, calib=2)
    before = [p.requires_grad for p in lm.model.parameters()]
    sens = fisher_sensitivity(lm, ("int4", "int8"), copts, calib=2, cache=False)
    name = "model.layers.1.mlp.down_proj"
    lin = lm.model.get_submodule(name)
    F = torch.zeros_like(lin.weight)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    batches = calibration_batches(lm, 2, copts)
    windows = [b["input_ids"][i:i + 1] for b in batches for i in range(b["input_ids"].shape[0])]
    assert len(windows) == 2
    for ids in windows:                            # each window alone, T = its predicted tokens
        w = lin.weight
        w.requires_grad_(True)
        lm.model(input_ids=ids, labels=ids).loss.backward()
        F += (ids.shape[1] - 1) * w.grad ** 2
        w.grad = None
        w.requires_grad_(False)
    for p, rg in zip(lm.model.parameters(), before):
        p.requires_grad_(rg)
    F /= len(windows)                              # the mean over windows of T g^2
    d2 = (quantized_weight(lin, QuantSpec("int4")) - lin.weight.detach()) ** 2
    assert sens[name]["int4"] == pytest.approx(0.5 * float((F * d2).sum()), rel=1e-4)
    assert all(s["int8"] < s["int4"] for s in sens.values())
    assert [p.requires_grad for p in lm.model.parameters()] == before          # put back as they were


def test_measured_sensitivity_is_the_loss_change_and_is_cached(tiny, tmp_path):
    from floatlab.advise.sensitivity import LossFn, measured_sensitivity, quantized_weight
    from floatlab.ptq.compare import CompareOptions
    from floatlab.ptq.modules import QuantLinear, set_module
    from floatlab.ptq.quantizer import QuantSpec
    lm = tiny[1]
    fn = LossFn(lm, CompareOptions(window=16, windows=1))
    layers = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj"]
    sens, base = measured_sensitivity(lm, ("int2", "int8"), fn, layers=layers, cache=tmp_path)
    lin = lm.model.get_submodule(layers[1])
    set_module(lm.model, layers[1], QuantLinear(lin, quantized_weight(lin, QuantSpec("int2")), QuantSpec("int2"), None))
    by_hand = fn.loss(lm.model) - base
    set_module(lm.model, layers[1], lin)
    assert sens[layers[1]]["int2"] == pytest.approx(by_hand, rel=1e-6)
    calls = []
    real = fn.loss
    fn.loss = lambda m: calls.append(1) or real(m)
    again, _ = measured_sensitivity(lm, ("int2", "int8"), fn, layers=layers, cache=tmp_path)
    assert again == sens and len(calls) == 1                      # only the fp32 baseline: read from the cache


def test_advise_command_end_to_end(tiny, tmp_path):
    from floatlab.cli import app
    from floatlab.ptq.config import PTQConfig
    folder = tiny[0]
    runner = CliRunner()
    out = tmp_path / "adv"
    r = runner.invoke(app, ["advise", "--model", str(folder), "--formats", "int2_asym_g32,int4_asym_g32,int8",
                            "--budget", "4,5", "--solver", "milp,greedy", "--random", "1", "--windows", "1",
                            "--window", "16", "--calib", "1", "--no-cache", "--out", str(out)],
                      env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    searched = [row for row in res["rows"] if row["kind"] == "searched"]
    assert [(row["label"], row["budget"]) for row in searched] == [("milp", 4), ("greedy", 4), ("milp", 5), ("greedy", 5)]
    for row in res["rows"]:
        if row["budget"] is not None:
            assert row["bits_per_weight"] <= row["budget"] + 1e-12
        assert math.isfinite(row["metric"])
    assert sorted(row["label"] for row in res["rows"] if row["kind"] == "uniform") == \
        ["int2_asym_g32", "int4_asym_g32", "int8"]
    # an assignment found twice is measured once: the repeat names the first and has its loss
    first = {}
    for row in res["rows"]:
        key = tuple(sorted(row["assignment"].items())) if "assignment" in row else None
        if key is not None and key in first:
            assert row["same_as"] == first[key][0] and row["loss"] == first[key][1]
        elif key is not None:
            assert "same_as" not in row
            first[key] = (f"{row['label']} @ {row['budget']}", row["loss"])
    assert (out / "pareto.png").stat().st_size > 0 and "| searched (milp) |" in (out / "report.md").read_text()
    # the recipe is the assignment; floatlab ptq takes its --override rules
    cfg = PTQConfig.from_dict(json.loads((out / "recipe.json").read_text()))
    assign = searched[0]["assignment"]
    assert all(cfg.weight_spec(n).format == f for n, f in assign.items())
    rules = (out / "overrides.txt").read_text().split()
    args = ["ptq", "--model", str(folder), "--format", cfg.weight.format, "--windows", "1", "--window", "16",
            "--out", str(tmp_path / "q")]
    for rule in rules:
        args += ["--override", rule]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = PTQConfig.from_dict(json.loads((tmp_path / "q" / "config.json").read_text())["ptq"])
    assert all(saved.weight_spec(n).format == f for n, f in assign.items())


@pytest.mark.parametrize("args, flag, text", [
    (["--budget", "1"], "--budget", "below the cheapest"),
    (["--budget", "20"], "--budget", "at or above the richest"),
    (["--budget", "4", "--formats", "int4,nvfp5"], "--formats", "nvfp5"),
    (["--budget", "x"], "--budget", "expected a number"),
    (["--budget", "4", "--solver", "lp"], "--solver", "lp"),
    (["--budget", "4", "--kind", "joules"], "--kind", "joules"),
])
def test_advise_mistakes_are_one_line_before_any_work(tiny, tmp_path, args, flag, text):
    from floatlab.cli import app
    base = ["advise", "--model", str(tiny[0]), "--formats", "int4,int8", "--window", "16", "--no-cache",
            "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 2, r.output
    assert flag in r.output and text in r.output and "Traceback" not in r.output


def test_proxy_check_layers_and_rank_agreement():
    from floatlab.advise.sensitivity import check_layers, rank_agreement
    names = [f"l{i}" for i in range(10)]
    assert check_layers(names, 4) == ["l0", "l3", "l6", "l9"]
    assert check_layers(names, 20) == names and check_layers(names, 1) == ["l5"]
    measured = {n: {"a": 3.0 * (i + 1), "b": 1.0 * (i + 1) + 0.5, "c": 0.1 * i} for i, n in enumerate(names[:5])}
    same = rank_agreement(measured, measured, ["a", "b", "c"])
    assert same["spearman_all"] == pytest.approx(1) and same["spearman_downgrade"] == pytest.approx(1)
    assert same["spearman_per_format"]["a"] == pytest.approx(1) and same["sum_ratio_proxy_to_measured"] == 1
    flipped = {n: {f: -v for f, v in row.items()} for n, row in measured.items()}
    assert rank_agreement(flipped, measured, ["a", "b", "c"])["spearman_all"] == pytest.approx(-1)


def test_advise_check_measures_a_subset_against_the_proxy(tiny, tmp_path):
    from floatlab.cli import app
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["advise", "--model", str(tiny[0]), "--formats", "int4,int8", "--budget", "6",
                                 "--window", "16", "--windows", "1", "--calib", "1", "--no-uniform", "--no-verify",
                                 "--sensitivity", "fisher", "--check", "3", "--no-cache", "--out", str(out)])
    assert r.exit_code == 0, r.output
    pc = json.loads((out / "results.json").read_text())["proxy_check"]
    assert len(pc["layers"]) == 3 and set(pc["measured"]) == set(pc["layers"]) and pc["pairs"] == 6
    assert pc["downgrade_from"] == "int8" and "proxy check on 3 measured layers" in r.output
    r = CliRunner().invoke(app, ["advise", "--model", str(tiny[0]), "--formats", "int4,int8", "--budget", "6",
                                 "--window", "16", "--sensitivity", "measured", "--check", "3", "--out", str(out)])
    assert r.exit_code == 2 and "--check" in r.output


def test_codec_study_counts_bits_and_weight_sqnr(tiny, tmp_path):
    from floatlab.advise.codec_study import main, weight_sqnr
    from floatlab.codecs import get_codec
    w = torch.tensor([3.0, 4.0])
    assert weight_sqnr(w, w) == math.inf
    assert weight_sqnr(w, torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0))
    out = tmp_path / "s.json"
    main(["--model", str(tiny[0]), "--points", "rtn:fineq,gptq:fineq,rtn:int3_asym", "--windows", "1",
          "--window", "16", "--calib", "2", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["complete"] and [(r["method"], r["format"]) for r in res["rows"]] == \
        [("rtn", "fineq"), ("gptq", "fineq"), ("rtn", "int3_asym")]
    from floatlab.models.loading import linear_layers
    shapes = [tuple(lin.weight.shape) for lin in linear_layers(tiny[1].model).values()]
    n = sum(a * b for a, b in shapes)
    assert res["rows"][0]["bits_per_weight"] == pytest.approx(sum(get_codec("fineq").bits(s) for s in shapes) / n)
    rtn, gptq = res["rows"][0], res["rows"][1]
    assert set(rtn["weight_sqnr_db"]) == set(gptq["weight_sqnr_db"]) and len(rtn["weight_sqnr_db"]) == len(shapes)
    # same scales, and RTN takes the nearest grid point (the least-error layout) per weight: GPTQ's
    # error-compensated weights can only be farther from W
    assert rtn["weight_sqnr_mean_db"] >= gptq["weight_sqnr_mean_db"]
    with pytest.raises(SystemExit):
        main(["--model", str(tiny[0]), "--points", "rtn:fineq5", "--out", str(out)])


def test_milp_is_exact_at_the_tiny_scale_of_proxy_sensitivities():
    """Fisher sensitivities are ~1e-7: below HiGHS's absolute tolerances unless the objective is
    rescaled (the unscaled program stopped at the greedy trap's answer and called it optimal)."""
    for s in (1e-9, 1e-12, 1e9):
        p = Problem([[0, 6], [0, 3]], [[6 * s, 0], [4 * s, 0]], budget=6)
        assert solve_milp(p).choice == (1, 0)
    for seed in range(6):
        base = _random_problem(seed, n=5, k=3)
        p = Problem(base.cost, [[v * 1e-9 for v in row] for row in base.loss], base.budget)
        assert solve_milp(p).choice == solve_milp(base).choice == _brute_force(base)
