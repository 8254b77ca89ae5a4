"""Block formats by name: ``<element>/<scale>/<block>[x<cols>][/<rule>][/ts][/<rounding>]``.

The spelling is a BlockFormat's default name, so name -> format -> name round-trips; the
spellings of MXFP4, NVFP4 (1D, 2D tiles, Four Over Six) and HiF4 give those formats' numerics
(codes, scales and values equal bit for bit); a bad spelling names the part at fault.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import floatlab
from floatlab.formats.block import BlockFormat, ScaleRule, block_format
from floatlab.formats.registry import get_format


def _grid():
    elems = ("e2m1", "e3m2", "e2m3", "e4m3", "e5m2", "e1m2")
    scales = {"e8m0": ("floor", "ceil", "even", "rceil"), "ue4m3": ("amax", "four_over_six"),
              "ue5m3": ("amax", "four_over_six"), "e4m3": ("amax",)}
    for e, (s, rules), block, rnd in itertools.product(elems, scales.items(), ("16", "32", "64", "16x16"),
                                                        ("", "/rna", "/sr")):
        for rule in rules:
            for ts in ("", "/ts") if rule in ("amax", "four_over_six") else ("",):
                if rule == "four_over_six" and e != "e2m1":
                    continue
                yield f"{e}/{s}/{block}/{rule}{ts}{rnd}"
    yield "e1m2/ue6m2/64/hif4/rna"
    yield "e1m2/ue6m2/64/hif4"


def test_round_trip_name_format_name():
    names = list(_grid())
    assert len(names) > 300
    for name in names:
        fmt = get_format(name)
        assert isinstance(fmt, BlockFormat) and fmt.name == name
        again = dataclasses.replace(fmt, name="")          # the default name is the spelling
        assert again.name == name and get_format(again.name) == again
        assert get_format(name.upper()) == fmt              # names are case-insensitive


def test_default_rule_and_parts():
    f = get_format("e2m1/ue5m3/32")
    assert (f.rule, f.tensor_scale, f.block, f.element_rounding.value) == (ScaleRule.AMAX, False, (32,), "rne")
    assert f.scale == get_format("ue5m3") and f.element == get_format("e2m1")
    assert get_format("e2m1/e8m0/32").rule is ScaleRule.FLOOR      # power-of-two scale: OCP's floor
    t = get_format("e2m1/ue4m3/16/ts")                             # default rule + tensor scale
    assert (t.rule, t.tensor_scale, t.name) == (ScaleRule.AMAX, True, "e2m1/ue4m3/16/amax/ts")
    assert get_format("e2m1/e4m3/16x16/ts").block == (16, 16)
    assert get_format("e2m1/ue5m3/32").bits_per_value == 4 + 8 / 32
    # HiF4 stores 4 bytes of scale metadata per block whatever constructs it
    assert block_format("e1m2", "ue6m2", 64, "hif4").bits_per_value == 4 + 32 / 64


@pytest.mark.parametrize("builtin, spelled", [
    ("mxfp4", "e2m1/e8m0/32/floor"), ("mxfp4", "e2m1/e8m0/32"), ("mxfp8_e4m3", "e4m3/e8m0/32"),
    ("mxfp6_e2m3", "e2m3/e8m0/32"), ("nvfp4", "e2m1/e4m3/16/amax/ts"), ("nvfp4", "e2m1/e4m3/16/ts"),
    ("nvfp4_2d", "e2m1/e4m3/16x16/ts"), ("nvfp4_46", "e2m1/e4m3/16/four_over_six/ts"),
    ("hif4", "e1m2/ue6m2/64/hif4/rna")])
def test_spelled_equals_builtin_numerics(builtin, spelled):
    b, s = get_format(builtin), get_format(spelled)
    assert dataclasses.replace(b, name="") == dataclasses.replace(s, name="")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 128, generator=g) * torch.logspace(-6, 6, 128)   # blocks of very different ranges
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-30, 3e30, -7.5])
    x[1, 64:] = 0.0
    qb, qs = floatlab.quantize(x, b), floatlab.quantize(x, s)
    assert torch.equal(qb.view(torch.int32), qs.view(torch.int32))     # bit for bit, signed zeros too
    eb, es = floatlab.encode(x, b), floatlab.encode(x, s)
    assert torch.equal(eb.codes, es.codes)
    assert torch.equal(floatlab.decode(eb).view(torch.int32), floatlab.decode(es).view(torch.int32))


def test_element_rounding_suffix_changes_the_ties():
    # one block with amax 6: scale 1 under OCP's floor rule; 2.5 is a tie between E2M1's 2 and 3
    x = torch.zeros(32)
    x[0], x[1] = 6.0, 2.5
    assert floatlab.quantize(x, "e2m1/e8m0/32")[1] == 2.0           # ties to even
    assert floatlab.quantize(x, "e2m1/e8m0/32/rna")[1] == 3.0       # ties away
    assert floatlab.quantize(x, "mxfp4", rounding="rna")[1] == 3.0  # the same as asking per call


@pytest.mark.parametrize("bad, words", [
    ("e2m1/e8m0", "is spelled <element>/<scale>/<block>"),
    ("e2m1/e8m0/x16", "is spelled"),
    ("e2m1/e8m0/0", "at least 1"),
    ("e2m1/e8m0/16x0", "at least 1"),
    ("e2m1/e8m0/32/foo", "'foo' is neither a scale rule"),
    ("e2m1/e8m0/32/rna/floor", "'floor' is out of place"),
    ("e2m1/e4m3/16/ts/ts", "'ts' is out of place or repeated"),
    ("e2m1/e8m0/32/hybrid", "'hybrid' is neither"),
    ("e2m1/e8m0/32/ts", "works with the scale rules amax and four_over_six, not 'floor'"),
    ("e2m1/e8m0/32/rceil/ts", "not 'rceil'"),
    ("e2m1/e4m3/32/floor", "has mantissa bits"),
    ("mxfp4/e8m0/32", "the element format must be a scalar format"),
    ("e2m1/nvfp4/16", "the scale format must be a scalar format"),
    ("e2m9x/e8m0/32", "the element format: unknown format 'e2m9x'"),
    ("e2m1/e8m0/48/hif4", "blocks of 64"),
    ("e1m2/e8m0/64/hif4", "level-1 scale is E6M2"),
])
def test_bad_spellings_name_the_problem(bad, words):
    with pytest.raises(ValueError) as err:
        get_format(bad)
    assert words in str(err.value) and bad in str(err.value)


def test_tensor_scale_refused_where_a_rule_ignores_it():
    e, s = get_format("e2m1"), get_format("e8m0")
    for rule in (ScaleRule.FLOOR, ScaleRule.CEIL, ScaleRule.EVEN, ScaleRule.RCEIL):
        with pytest.raises(ValueError, match="would be ignored"):
            BlockFormat(e, s, 32, rule, tensor_scale=True)
    with pytest.raises(ValueError, match="would be ignored"):
        block_format("e1m2", "ue6m2", 64, "hif4", tensor_scale=True)
