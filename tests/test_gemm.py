"""Tests for floatlab.gemm: precision-recovery GEMM methods, splits, accumulator, analysis, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from floatlab.gemm import METHODS, Accumulator, blocked_matmul, matmul, method_cost
from floatlab.gemm.analysis import relative_errors, run_analysis
from floatlab.gemm.split import (
    merge_scaled,
    ozaki_merge,
    ozaki_rho,
    ozaki_split,
    split_bf16,
    split_scaled,
)


@pytest.fixture(scope="module")
def normal_operands() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(384, 512, generator=gen), torch.randn(512, 256, generator=gen)


@pytest.fixture(scope="module")
def errors(normal_operands) -> dict[str, float]:
    a, b = normal_operands
    return {m: relative_errors(matmul(a, b, m), a, b)["max_rel"] for m in METHODS}


# --- accuracy on N(0, 1) inputs ------------------------------------------------------------


def test_fp32_reference_error_is_fp32_level(errors):
    # sanity of the yardstick: the float32 product is accurate to a few units of 2**-24
    assert 1e-9 < errors["fp32"] < 2e-6


def test_sgemm_cube_recovers_fp32_accuracy(errors):
    assert errors["sgemm_cube"] <= 4 * errors["fp32"]
    assert errors["fp16"] >= 100 * errors["sgemm_cube"]


def test_bf16x3_within_40x_fp32(errors):
    assert errors["bf16x3"] <= 40 * errors["fp32"]
    # and it does recover precision over plain bf16
    assert errors["bf16"] >= 100 * errors["bf16x3"]


def test_bf16x6_and_ootomo_within_4x_fp32(errors):
    assert errors["bf16x6"] <= 4 * errors["fp32"]
    assert errors["ootomo"] <= 4 * errors["fp32"]


def test_ozaki_with_enough_slices_matches_fp32(normal_operands, errors):
    a, b = normal_operands
    assert errors["ozaki"] <= 2 * errors["fp32"]  # default slices
    err6 = relative_errors(matmul(a, b, "ozaki", slices=6), a, b)["max_rel"]
    assert err6 <= 2 * errors["fp32"]
    # too few slices cannot reach FP32 accuracy (1 slice = 7 bits for K = 512)
    err1 = relative_errors(matmul(a, b, "ozaki", slices=1), a, b)["max_rel"]
    assert err1 > 100 * errors["fp32"]


def test_ozaki_handles_range_beyond_fp16():
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(64, 128, generator=gen) * 1e6
    b = torch.randn(128, 32, generator=gen) * 1e-3
    fp32 = relative_errors(matmul(a, b, "fp32"), a, b)["max_rel"]
    err = relative_errors(matmul(a, b, "ozaki"), a, b)
    assert err["finite"] and err["max_rel"] <= 2 * fp32


def test_ootomo_outside_accumulation_beats_rtz_inside(normal_operands):
    """Under a round-toward-zero accumulator, summing chunks outside in FP32 RN is more accurate."""
    a, b = normal_operands[0][:64], normal_operands[1][:, :64]  # K = 512: 32 chunks
    acc = "fp32:rtz:16"
    fp32_rn = relative_errors(matmul(a, b, "fp32"), a, b)["max_rel"]
    cube_rtz = relative_errors(matmul(a, b, "sgemm_cube", accumulator=acc), a, b)["max_rel"]
    ootomo_rtz = relative_errors(matmul(a, b, "ootomo", accumulator=acc), a, b)["max_rel"]
    assert ootomo_rtz < 0.5 * cube_rtz
    assert ootomo_rtz <= 2 * fp32_rn


# --- failures are reported, not hidden ------------------------------------------------------


def test_beyond_fp16_is_reported_broken():
    rows = run_analysis([(32, 64, 16)], ["beyond_fp16"], ["fp32", "fp16", "sgemm_cube", "ootomo", "bf16x3", "ozaki"])
    by = {r["method"]: r for r in rows}
    for m in ("fp16", "sgemm_cube", "ootomo"):
        assert by[m]["broken"], m
        assert not by[m]["finite"] and by[m]["reason"] == "non-finite output"
        assert math.isinf(by[m]["max_rel"])
    for m in ("fp32", "bf16x3", "ozaki"):
        assert not by[m]["broken"], (m, by[m])


def test_tiny_inputs_break_sgemm_cube_but_not_bf16x6():
    rows = run_analysis([(64, 128, 32)], ["tiny"], ["sgemm_cube", "bf16x6", "fp16"])
    by = {r["method"]: r for r in rows}
    assert by["sgemm_cube"]["finite"] and by["sgemm_cube"]["broken"]
    assert by["sgemm_cube"]["vs_fp32"] > 100
    assert by["fp16"]["broken"]
    assert not by["bf16x6"]["broken"]


# --- emulated accumulator -----------------------------------------------------------------


def test_rtz_accumulator_worse_than_rne_on_long_k():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(8, 4096, generator=gen)  # positive terms: truncation errors all have the same sign
    b = torch.rand(4096, 8, generator=gen)
    ref = a.double() @ b.double()
    c_rne = blocked_matmul(a, b, Accumulator("fp32", "rne", 16))
    c_rtz = blocked_matmul(a, b, Accumulator("fp32", "rtz", 16))
    err_rne = ((c_rne.double() - ref).abs() / ref).mean()
    err_rtz = ((c_rtz.double() - ref).abs() / ref).mean()
    assert err_rtz > 5 * err_rne
    assert bool((c_rtz.double() <= ref).all())  # truncation only ever loses magnitude here


def test_accumulator_rounds_into_its_format():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(16, 96, generator=gen), torch.randn(96, 8, generator=gen)
    c = blocked_matmul(a, b, Accumulator("bf16", "rne", 32))
    assert torch.equal(c, c.bfloat16().float())
    assert not torch.equal(c, matmul(a, b))  # a bf16 accumulator must lose precision


def test_accumulator_exact_on_integers_and_parse():
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(-64, 65, (12, 100), generator=gen).float()
    b = torch.randint(-64, 65, (100, 7), generator=gen).float()
    exact = (a.double() @ b.double()).float()
    for spec in ("fp32:rtz:16", "fp32:rne:7"):
        assert torch.equal(blocked_matmul(a, b, Accumulator.parse(spec)), exact)
    assert Accumulator.parse("fp32:rtz") == Accumulator("fp32", "rtz", 16)
    assert Accumulator.parse("none") is None
    with pytest.raises(ValueError):
        Accumulator.parse("fp32:towards_zero")
    with pytest.raises(ValueError):
        Accumulator.parse("fp32:rtz:0")


# --- splitting ------------------------------------------------------------------------------


def test_split_scaled_reconstruction_bound():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(4096, generator=gen) * torch.exp2(torch.randint(-10, 11, (4096,), generator=gen).float())
    hi, lo = split_scaled(a, s=11)
    assert hi.dtype == lo.dtype == torch.float16
    assert torch.equal(hi, a.half())
    resid = (a.double() - hi.double()).abs()
    err = (a.double() - merge_scaled(hi, lo, 11)).abs()
    # where lo is a normal fp16 number its rounding error is at most 2**-11 of the residual,
    # and the split keeps 22 bits: |error| <= 2**-11 * 2**-11 * 2 * |a|
    normal = lo.double().abs() >= 2.0**-14
    assert float(normal.float().mean()) > 0.9
    assert bool((err <= resid * 2.0**-11)[normal].all())
    assert bool((err <= a.double().abs() * 2.0**-21)[normal].all())
    # where lo underflows (tiny a) the absolute error is bounded by half an fp16 subnormal step
    assert bool((err <= 2.0**-25 * 2.0**-11)[~normal].all())
    assert float(err.max()) > 0  # 22 bits cannot hold every 24-bit float32


def test_split_scaled_overflows_beyond_fp16():
    hi, lo = split_scaled(torch.tensor([1e5, 65504.0]), s=11)
    assert math.isinf(float(hi[0])) and not math.isfinite(float(lo[0]))
    assert float(hi[1]) == 65504.0 and float(lo[1]) == 0.0


def test_split_bf16_three_pieces_exact():
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(10000, generator=gen) * torch.exp2(torch.randint(-60, 61, (10000,), generator=gen).float())
    pieces = split_bf16(a, 3)
    assert all(p.dtype == torch.bfloat16 for p in pieces)
    total = sum(p.double() for p in pieces)
    assert torch.equal(total, a.double())
    two = sum(p.double() for p in split_bf16(a, 2))
    assert not torch.equal(two, a.double())


def test_ozaki_split_is_error_free():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(32, 200, generator=gen) * torch.exp2(torch.randint(-4, 5, (32, 200), generator=gen).float())
    rho = ozaki_rho(200)
    assert rho == 8  # (24 - ceil(log2 200)) // 2
    t, e = ozaki_split(x, 3, rho, dim=1)
    assert t.dtype == torch.float16 and e.shape == (32, 1)
    assert torch.equal(t.double(), t.double().round())
    assert float(t[0].abs().max()) <= 2**rho and float(t[1:].abs().max()) <= 2 ** (rho - 1)
    resid = (x.double() - ozaki_merge(t, e, rho)).abs()
    assert bool((resid <= torch.exp2((e - rho * 3 - 1).double())).all())
    assert float(resid.max()) > 0  # 21 bits below the row max do not hold 8 binades of range
    t8, e8 = ozaki_split(x, 8, rho, dim=1)  # 56 bits: covers 24 bits + 8 binades of spread
    assert torch.equal(ozaki_merge(t8, e8, rho), x.double())
    # slice products are exact in FP32 accumulation
    tb, _ = ozaki_split(torch.randn(200, 16, generator=gen), 2, rho, dim=0)
    prod32 = t[0].float() @ tb[1].float()
    assert torch.equal(prod32.double(), t[0].double() @ tb[1].double())


# --- API and errors -------------------------------------------------------------------------


def test_methods_registry_and_cost():
    assert set(METHODS) == {"fp32", "fp16", "bf16", "sgemm_cube", "ootomo", "bf16x3", "bf16x6", "ozaki"}
    assert METHODS["sgemm_cube"].cost == 3 and METHODS["bf16x6"].cost == 6
    assert method_cost("ozaki", slices=4) == 10 and method_cost("ozaki", slices=6) == 21
    assert method_cost("ozaki", k=4096) == 15  # rho = 6 -> 5 slices for 26 bits


def test_bad_inputs():
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    with pytest.raises(TypeError, match="float32"):
        matmul(a.double(), b)
    with pytest.raises(TypeError, match="float32"):
        matmul(a, b.half())
    with pytest.raises(TypeError):
        matmul(a.numpy(), b)
    with pytest.raises(ValueError, match="2-D"):
        matmul(a[None], b)
    with pytest.raises(ValueError, match="inner dimensions"):
        matmul(a, torch.randn(4, 3))
    with pytest.raises(ValueError, match="did you mean 'ozaki'"):
        matmul(a, b, "ozaky")
    with pytest.raises(ValueError, match="sgemm_cube"):
        matmul(a, b, "fp16", s=11)
    with pytest.raises(ValueError, match="slices"):
        matmul(a, b, "ozaki", slices=0)
    with pytest.raises(ValueError):
        matmul(a, b, "fp32", accumulator="fp32:bogus")


def test_output_shape_and_dtype_all_methods():
    a, b = torch.randn(3, 17), torch.randn(17, 5)
    for m in METHODS:
        c = matmul(a, b, m)
        assert c.shape == (3, 5) and c.dtype == torch.float32, m


# --- CLI ------------------------------------------------------------------------------------


def test_cli_writes_outputs(tmp_path):
    from typer.testing import CliRunner

    from floatlab.cli.gemm import app

    result = CliRunner().invoke(
        app,
        ["--sizes", "32x48x16", "--dists", "normal,beyond_fp16", "--methods", "fp32,sgemm_cube,ozaki:3",
         "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "gemm.json").read_text())
    assert len(rows) == 6
    broken = {(r["dist"], r["method"]) for r in rows if r["broken"]}
    assert broken == {("beyond_fp16", "sgemm_cube")}
    assert "BROKEN" in (tmp_path / "gemm.md").read_text()
    assert (tmp_path / "gemm.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["--methods", "sgemm_cub"])
    assert bad.exit_code != 0 and "sgemm_cube" in bad.output


def test_cli_registers_on_a_main_app():
    import typer
    from typer.testing import CliRunner

    from floatlab.cli.gemm import register

    main = typer.Typer()

    @main.callback()
    def _cb() -> None:
        """group mode"""

    register(main)
    result = CliRunner().invoke(main, ["gemm", "--sizes", "16", "--dists", "normal", "--methods", "fp32,bf16x6"])
    assert result.exit_code == 0, result.output
    assert "bf16x6" in result.output and "0 of 2 runs flagged broken" in result.output


# --- found as a new user (issue 13): bad parameters fail before any work, in one line ----------


@pytest.mark.parametrize("spec, what", [("ozaki:0", "slices"), ("ozaki:-2", "slices"), ("ozaki:x", "slices"),
                                        ("sgemm_cube:41", "s"), ("sgemm_cube:-1", "s")])
def test_cli_method_parameter_out_of_range_is_one_error_line(spec, what):
    """`floatlab gemm --methods ozaki:0` ran the analysis and died in matmul with a traceback."""
    from typer.testing import CliRunner

    from floatlab.cli import app

    r = CliRunner().invoke(app, ["gemm", "--sizes", "8", "--dists", "normal", "--methods", spec])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(lines) == 1 and lines[0].startswith("error: --methods"), r.output
    assert f"{what} must be an integer" in lines[0] and "gemm:" not in r.output  # no run started


def test_method_spec_parameters_at_the_ends_of_their_ranges():
    from floatlab.gemm.analysis import parse_method_spec

    assert parse_method_spec("ozaki:1") == ("ozaki", {"slices": 1})
    assert parse_method_spec("sgemm_cube:0") == ("sgemm_cube", {"s": 0})
    assert parse_method_spec("sgemm_cube:40") == ("sgemm_cube", {"s": 40})
    with pytest.raises(ValueError, match="take a parameter"):
        parse_method_spec("fp32:3")
    a, b = torch.randn(4, 8), torch.randn(8, 3)   # the accepted ends run in matmul too
    matmul(a, b, "ozaki", slices=1)
    matmul(a, b, "sgemm_cube", s=40)


def test_accumulator_format_is_checked_when_the_accumulator_is_made():
    """Accumulator("fp9") was accepted until its first rounding; Accumulator("nvfp4") ran and
    rounded each running sum block by block (a meaningless accumulator) without a word."""
    with pytest.raises(ValueError, match="Did you mean"):
        Accumulator("fp9")
    for name in ("nvfp4", "mxfp4", "hif4"):
        with pytest.raises(ValueError, match="is a block format"):
            Accumulator(name)
        with pytest.raises(ValueError, match="is a block format"):
            Accumulator.parse(f"{name}:rtz:16")
    assert Accumulator("E4M3").fmt == "E4M3"          # format names stay case-insensitive
    from typer.testing import CliRunner

    from floatlab.cli import app

    r = CliRunner().invoke(app, ["gemm", "--sizes", "8", "--dists", "normal", "--methods", "fp32",
                                 "--accumulator", "nvfp4"])
    assert r.exit_code == 2 and r.output.startswith("error: --accumulator") and "block format" in r.output
