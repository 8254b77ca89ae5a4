"""The hardware cost model (floatlab.hw): its anchors, the bits each format moves, its shape."""

import math

import pytest
from typer.testing import CliRunner

from floatlab.cli import app
from floatlab.hw import AREA, ENERGY, HOROWITZ_45NM, bits_moved, cost_table, mac_cost


def test_reproduces_the_int8_vs_fp32_multiply_ratio_it_was_fitted_to():
    h = HOROWITZ_45NM
    model = ENERGY.int_mul(8, 8) / ENERGY.fp_mul(24, 8)
    assert model == pytest.approx(h["int8_mul"][0] / h["fp32_mul"][0], rel=1e-12)
    assert model == pytest.approx(0.2 / 3.7, rel=1e-12)
    # and the other exact anchors: fp16 multiply, energy and area
    assert ENERGY.fp_mul(11, 5) == pytest.approx(1.1, rel=1e-12)
    assert AREA.fp_mul(24, 8) == pytest.approx(7700, rel=1e-12)
    assert AREA.int_mul(8, 8) == pytest.approx(282, rel=1e-12)


def test_predictions_off_the_fitted_points_stay_near_the_published_ones():
    """int32 multiply was not fitted (the p^2 law from int8 predicts it); adds are a least-squares
    line; fp adders (energy) solved exactly."""
    assert ENERGY.int_mul(32, 32) == pytest.approx(3.1, rel=0.05)
    assert ENERGY.int_add(32) == pytest.approx(0.1, rel=0.05)
    assert ENERGY.fp_add(24, 8) == pytest.approx(0.9, rel=1e-9)
    assert ENERGY.fp_add(11, 5) == pytest.approx(0.4, rel=1e-9)
    assert AREA.fp_add(24, 8) == pytest.approx(4184, rel=0.1)


def test_bits_moved_rank_mxfp4_nvfp4_hif4_mxfp8():
    assert bits_moved("mxfp4") < bits_moved("nvfp4") == bits_moved("hif4") < bits_moved("mxfp8_e4m3")
    assert (bits_moved("mxfp4"), bits_moved("nvfp4"), bits_moved("mxfp8_e4m3")) == (4.25, 4.5, 8.25)
    assert bits_moved("int4") == 4 and bits_moved("binary") == 1 and bits_moved("ternary") == 2


def test_energy_is_relative_to_int8_and_ordered_by_width():
    e = {r.format: r for r in cost_table()}
    assert e["int8"].energy == 1.0 and e["int8"].area == 1.0
    assert e["binary"].energy < e["int2"].energy < e["int4"].energy < e["int8"].energy
    assert e["mxfp4"].energy < e["mxfp6_e2m3"].energy < e["mxfp8_e4m3"].energy
    assert e["bf16"].energy < e["fp16"].energy < e["fp32"].energy    # p 8 < 11 < 24
    # a block format's shared scale work is amortized: per block, divided by the block
    r = e["mxfp4"]
    assert 0 < r.energy_parts.per_block < r.energy_parts.multiply + r.energy_parts.accumulate
    for row in e.values():
        assert math.isfinite(row.energy) and row.energy > 0 and row.area > 0


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="Did you mean.*binary, ternary"):
        mac_cost("mxfp3")
    with pytest.raises(ValueError, match="reduction"):
        mac_cost("int8", reduction=1)


def test_formats_cost_table_in_the_cli():
    runner = CliRunner()
    r = runner.invoke(app, ["formats", "--cost"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "relative numbers only" in r.output and "Horowitz" in r.output
    for name in ("nvfp4", "hif4", "mxfp4", "int8", "binary", "e4m3"):
        assert f"| {name} " in r.output
    r = runner.invoke(app, ["formats", "nvfp5", "--cost"])
    assert r.exit_code == 2 and "nvfp5" in r.output
    r = runner.invoke(app, ["formats", "--cost", "--quality"])
    assert r.exit_code == 2 and "--cost" in r.output


def test_hw_imports_only_the_formats():
    from tests.test_architecture import import_graph
    assert import_graph()["hw"] <= {"formats"}
