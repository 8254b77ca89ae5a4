"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch

import floatlab


def test_integer_tensor_is_rejected():
    with pytest.raises(TypeError, match="dtype torch.int64"):
        floatlab.quantize(torch.arange(4), "e4m3")


def test_non_tensor_is_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        floatlab.quantize([1.0, 2.0], "e4m3")


def test_unknown_format_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown format 'fp8_e4m3x'.*Did you mean: .*fp8_e4m3"):
        floatlab.quantize(torch.ones(2), "fp8_e4m3x")
    with pytest.raises(ValueError, match="hif8"):
        floatlab.get_format("hifp8")


def test_unknown_rounding_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown rounding mode 'rme'.*rne"):
        floatlab.quantize(torch.ones(2), "e4m3", rounding="rme")


@pytest.mark.parametrize("bits", [0, 53, -1, 2.5, True])
def test_sr_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="sr_bits must be an integer in 1..52"):
        floatlab.quantize(torch.ones(2), "e4m3", rounding="sr", sr_bits=bits)


def test_sr_bits_without_sr():
    with pytest.raises(ValueError, match="sr_bits applies to rounding='sr' only"):
        floatlab.quantize(torch.ones(2), "e4m3", sr_bits=8)


def test_hybrid_is_hif8_only():
    with pytest.raises(ValueError, match="not valid for format 'e4m3'"):
        floatlab.quantize(torch.ones(2), "e4m3", rounding="hybrid")


def test_bad_generator():
    with pytest.raises(TypeError, match="torch.Generator"):
        floatlab.quantize(torch.ones(2), "e4m3", rounding="sr", generator=123)


def test_decode_needs_format_and_integer_codes():
    with pytest.raises(TypeError, match="fmt is required"):
        floatlab.decode(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        floatlab.decode(torch.tensor([1.0]), "e4m3")
    with pytest.raises(ValueError, match="codes out of range for 'e2m1'"):
        floatlab.decode(torch.tensor([16]), "e2m1")


def test_encode_nan_into_a_format_without_nan():
    with pytest.raises(ValueError, match="'e2m1' has no NaN code"):
        floatlab.encode(torch.tensor([float("nan")]), "e2m1")


def test_invalid_spelled_formats():
    with pytest.raises(ValueError, match="IEEE-style format needs mbits >= 1"):
        floatlab.get_format("e5m0")
    with pytest.raises(ValueError, match="2..16 bits"):
        floatlab.get_format("int17")


def test_scalar_format_rejects_block_options():
    with pytest.raises(TypeError, match="scalar format"):
        floatlab.quantize(torch.ones(4), "e4m3", axis=0)


@pytest.mark.parametrize("bad", ["no", "False", 0.0, [], "yes"])
def test_boolean_options_refuse_non_booleans(bad):
    """A string is truthy: saturate="no" used to saturate silently (and pad="no" pad). Found in
    the new-user trial of issue 13."""
    x = torch.tensor([1000.0, 1.0])
    for call in (lambda: floatlab.quantize(x, "e4m3", saturate=bad),
                 lambda: floatlab.encode(x, "e4m3", saturate=bad),
                 lambda: floatlab.quantize(torch.randn(4, 40), "mxfp4", pad=bad),
                 lambda: floatlab.encode(torch.randn(4, 40), "mxfp4", pad=bad),
                 lambda: floatlab.emulate("fp16", saturate=bad).__enter__()):
        with pytest.raises(TypeError, match=r"(saturate|pad) must be True or False"):
            call()


def test_boolean_options_accept_bools_and_numpy_bools():
    import numpy as np

    x = torch.tensor([1000.0, 1.0])
    assert floatlab.quantize(x, "e4m3", saturate=np.bool_(True))[0] == 448
    assert torch.isnan(floatlab.quantize(x, "e4m3", saturate=False)[0])
    assert floatlab.quantize(x, "e4m3", saturate=None).isnan()[0]
    assert floatlab.quantize(torch.randn(4, 40), "mxfp4", pad=True).shape == (4, 40)


def test_save_into_a_missing_folder_names_the_target(tmp_path):
    """Every atomic write (safetensors, JSON, text) into a missing folder names the file asked
    for, not the temporary file beside it (found in the issue 13 new-user trial)."""
    from floatlab.atomic import write_json

    target = tmp_path / "nodir" / "w.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        floatlab.save(target, {"a": torch.ones(2)})
    assert err.value.filename == str(target) and ".tmp" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="nodir/r.json"):
        write_json(tmp_path / "nodir" / "r.json", {"a": 1})
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("content", [b"", b"hello", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":"])
def test_load_of_an_empty_or_foreign_file_says_so(tmp_path, content):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"w.safetensors is not a readable .safetensors file"):
        floatlab.load(bad)


@pytest.mark.parametrize("make,valid", [
    (lambda: floatlab.block_format("e2m1", "e8m0", 32, rule="round"), "floor, ceil, even, rceil"),
    (lambda: floatlab.FloatFormat(4, 3, nan="x"), "ieee, fn, fnuz, none"),
    (lambda: __import__("floatlab.nn.recipe", fromlist=["x"]).Scaling("curent"), "none, current, delayed"),
    (lambda: __import__("floatlab.nn.recipe", fromlist=["x"]).BlockAxis("rows"), "contraction, outer"),
], ids=["ScaleRule", "NanStyle", "Scaling", "BlockAxis"])
def test_bad_option_values_list_the_valid_ones(make, valid):
    """'round' is not a valid ScaleRule said neither what is valid nor what was meant."""
    with pytest.raises(ValueError, match="is not a valid") as err:
        make()
    assert f"(choose from {valid}" in str(err.value)


def test_bad_option_value_suggests_the_close_one():
    with pytest.raises(ValueError, match=r"'FLOOR' is not a valid ScaleRule; did you mean 'floor'\?"):
        floatlab.block_format("e2m1", "e8m0", 32, rule="FLOOR")


def test_deterministic_modes_leave_the_generator_alone():
    # one generator may be passed through a sweep over modes: deterministic modes neither draw
    # from it nor change their result (documented in floatlab.quantize)
    import floatlab
    x = torch.randn(4096)
    for fn, unpack in ((floatlab.quantize, lambda r: r), (floatlab.encode, lambda r: r.codes)):
        for fmt, rounding in [("e4m3", "rne"), ("e4m3", None), ("mxfp4", None), ("int8", "rtz")]:
            g = torch.Generator().manual_seed(0)
            state = g.get_state()
            assert torch.equal(unpack(fn(x, fmt, rounding, generator=g)), unpack(fn(x, fmt, rounding)))
            assert torch.equal(g.get_state(), state), (fmt, rounding)
        g = torch.Generator().manual_seed(0)
        state = g.get_state()
        fn(x, "e4m3", "sr", generator=g)            # the stochastic modes draw from it
        assert not torch.equal(g.get_state(), state)


def test_decode_with_another_format_names_the_fix():
    q = floatlab.encode(torch.randn(64), "nvfp4")
    with pytest.raises(ValueError, match=r"holds 'nvfp4', not 'mxfp4': leave fmt out .* pass 'nvfp4'"):
        floatlab.decode(q, "mxfp4")


@pytest.mark.parametrize("written,replaced", [("e4m3", "e2m1"), ("e2m1", "e4m3"), ("fp16", "e4m3"),
                                              ("int4", "e3m2"), ("mxfp4", "mxfp6_e3m2"), ("hif8", "bf16")])
def test_a_qtensor_whose_format_was_replaced_refuses_to_decode(written, replaced):
    """Codes read with another width than they were written with would decode to other values:
    the packed data's size and dtype no longer match, and decoding says so instead."""
    import dataclasses
    q = floatlab.encode(torch.randn(4, 64), written)
    bad = dataclasses.replace(q, format=floatlab.get_format(replaced))
    with pytest.raises(ValueError, match="was not written for this format"):
        bad.dequantize()
    with pytest.raises(ValueError, match="was not written for this format"):
        bad.codes


# ---- issue 15/18 new-user pass: messages that pointed the wrong way or lacked the place ----------
def test_rounding_suggestions_name_the_mode_each_alias_stands_for():
    with pytest.raises(ValueError) as e:
        floatlab.quantize(torch.ones(2), "e4m3", rounding="nearest")
    msg = str(e.value)
    assert "nearest_even (= rne)" in msg and "Valid modes: rne, rna" in msg


def test_emulate_dtype_advice_names_a_dtype_that_holds_the_format():
    from floatlab.emulation import EmulationError
    with pytest.raises(EmulationError) as e, floatlab.emulate("fp64"):
        torch.ones(2) + torch.ones(2)
    assert "on float64 tensors" in str(e.value) and "float32 (or" not in str(e.value)
    with pytest.raises(EmulationError, match=r"on float32 \(or float64\) tensors"), floatlab.emulate("bf16"):
        torch.ones(2, dtype=torch.float16) + 1


def test_accumulator_spec_errors_say_they_come_from_the_accumulator():
    with pytest.raises(ValueError, match=r"accumulator spec 'fp32:xx:16': accumulator rounding: unknown rounding mode 'xx'"):
        floatlab.emulate("fp16", accumulator="fp32:xx:16")
    with pytest.raises(ValueError, match="'hybrid' is not available for an accumulator; choose one of rne"):
        floatlab.emulate("fp16", accumulator="fp32:hybrid")
    from floatlab.gemm import Accumulator
    assert Accumulator.parse("fp32:nearest_even:8").rounding == "rne"     # aliases work as in quantize


def test_non_finite_right_hand_side_names_its_position():
    from floatlab.linalg import lu_factor, lu_solve, randsvd, refine
    A = randsvd(8, 10.0, generator=torch.Generator().manual_seed(0))
    b = torch.ones(8, dtype=torch.float64)
    b[5] = float("inf")
    with pytest.raises(ValueError, match=r"b has 1 non-finite entry \(first at entry 5: inf\)"):
        refine(A, b, "fp16")
    B = torch.ones(8, 2, dtype=torch.float64)
    B[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"first at row 3, column 1: nan"):
        lu_solve(lu_factor(A, "fp16"), B)


def test_refine_takes_the_scaling_the_cli_defaults_to():
    from floatlab.linalg import randsvd, refine
    from floatlab.linalg.refine import default_scaling, factorize
    A = randsvd(12, 1e3, generator=torch.Generator().manual_seed(1))
    assert factorize(A, "fp16", scaling="auto").meta["theta"] is not None     # squeezed: fp16 lacks range
    assert factorize(A, "fp32", scaling="auto").meta["theta"] is None and default_scaling("fp32") is None
    r = refine(A, A @ torch.ones(12, dtype=torch.float64), "fp16", scaling="auto")
    assert r.status == "converged"
    with pytest.raises(ValueError, match="scaling must be None, 'none', 'squeeze' or 'auto'"):
        refine(A, torch.ones(12, dtype=torch.float64), "fp16", scaling="yes")


@pytest.mark.parametrize("text", ["abc", "1e1..x", "1,two"])
def test_kappa_list_errors_give_the_syntax(text):
    from floatlab.linalg.study import parse_kappas
    with pytest.raises(ValueError, match=r"cannot read condition numbers .*'LOW\.\.HIGH'.*comma list"):
        parse_kappas(text)


def test_fault_errors_say_what_is_stored_and_want_flat_indices():
    from floatlab.faults import bit_table, flip_bits, flip_random, inject
    q = floatlab.encode(torch.randn(4, 32), "mxfp8_e4m3")
    with pytest.raises(ValueError, match=r"stores 1056 bits in target 'all' \(codes 1024 \+ scale 32\)"):
        flip_random(q, 2000)
    with pytest.raises(ValueError, match=r"index must be flat indices .* got shape \(1, 2\)"):
        flip_bits(q, 0, index=[[1, 2]])
    assert flip_bits(q, 0, index=3).shape == q.shape                 # one flat index is fine
    assert torch.equal(flip_bits(q, 0, index=[]).data, q.data)      # none: nothing flips
    with pytest.raises(ValueError, match="give bits .* or n/rate"):
        inject(torch.ones(3), "e4m3")
    with pytest.raises(ValueError, match="at least one bit_sensitivity"):
        bit_table([])


def test_gmres_refuses_what_it_cannot_solve():
    from floatlab.linalg.gmres import gmres
    with pytest.raises(ValueError, match="b must be a 1-D tensor"):
        gmres(lambda v: v, torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="tol must be positive"):
        gmres(lambda v: v, torch.ones(3, dtype=torch.float64), tol=0.0)


def test_flip_bits_reads_a_boolean_index_as_a_mask_and_refuses_repeats():
    """A bool tensor was read as the indices 0 and 1: the wrong elements flipped, silently."""
    from floatlab.faults import flip_bits, flip_random
    q = floatlab.encode(torch.tensor([1.0, 2.0, 3.0, 4.0]), "e4m3")
    out = floatlab.decode(flip_bits(q, 7, index=torch.tensor([False, False, True, False])))
    assert out.tolist() == [1.0, 2.0, -3.0, 4.0]
    for kwargs, words in (({"index": [0, 0]}, "index repeats an element"),
                          ({"index": [True, False]}, "mask over the 4 units"),
                          ({"index": [0.5]}, "integer flat indices")):
        with pytest.raises(ValueError, match=words):
            flip_bits(q, 7, **kwargs)
    with pytest.raises(ValueError, match="bits repeats a position"):
        flip_bits(q, [1, 1])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        flip_random(q, 3, generator=0)
    from floatlab.faults import bit_sensitivity
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        bit_sensitivity("e4m3", data="normal", generator=0)


@pytest.mark.parametrize("text,words", [("inf", "must be finite"), ("1e400", "must be finite"),
                                        ("", "no condition numbers"), ("2..5", "holds no power of ten")])
def test_kappas_refused_before_any_run(text, words):
    from floatlab.linalg.study import parse_kappas
    with pytest.raises(ValueError, match=words):
        parse_kappas(text)


def test_kappa_labels_are_the_values_given():
    """A comma list's 50 was labelled 1e2 (round(log10)) in the table."""
    from floatlab.linalg.study import kappa_label, parse_kappas
    assert [kappa_label(k) for k in parse_kappas("10,50,1e3,2.5e4")] == ["1e1", "50", "1e3", "25000"]
    assert parse_kappas("5..50") == [10.0]
    assert parse_kappas("1e3,1e1,10,0.1e2") == [10.0, 1000.0]         # sorted, each once
