"""Property tests (hypothesis): idempotence, neighbours, bracketing, odd symmetry."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings, strategies as st

import floatlab
from floatlab.reference.scalar import _neighbours
from fractions import Fraction

FORMATS = ["e4m3", "e5m2", "e3m2", "e2m1", "e1m2", "hif8", "int8", "int4", "fp16", "bf16",
           "e4m3fnuz", "e8m0", "ue4m3", "tf32"]
DETERMINISTIC = ["rne", "rna", "rnz", "rtz", "rup", "rdn", "rto"]
SYMMETRIC = ["rne", "rna", "rnz", "rtz", "rto"]
floats = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)


def q(x, fmt, mode):
    return floatlab.quantize(torch.tensor([x], dtype=torch.float64), fmt, rounding=mode,
                             saturate=True).item()


@settings(max_examples=300, deadline=None)
@given(x=floats, fmt=st.sampled_from(FORMATS), mode=st.sampled_from(DETERMINISTIC + ["sr"]))
def test_idempotent(x, fmt, mode):
    y = q(x, fmt, mode)
    if math.isnan(y):
        return
    assert q(y, fmt, mode) == y


@settings(max_examples=300, deadline=None)
@given(x=floats, fmt=st.sampled_from(FORMATS), mode=st.sampled_from(DETERMINISTIC + ["sr", "sr_half"]))
def test_result_is_x_or_one_of_its_two_neighbours(x, fmt, mode):
    spec = floatlab.get_format(fmt)
    y = q(x, fmt, mode)
    if math.isnan(y) or abs(x) > min(spec.max_value, spec.max_negative or spec.max_value):
        return
    if not spec.signed and x < 0:
        return
    try:
        lo, hi = _neighbours(spec, Fraction(x))
    except OverflowError:
        return
    if y == 0 or (not spec.has_zero and y == spec.smallest_positive):
        assert lo <= 0 <= hi or lo == hi == 0 or not spec.has_zero
    else:
        assert Fraction(y) in (lo, hi)


@settings(max_examples=300, deadline=None)
@given(x=floats, fmt=st.sampled_from(FORMATS))
def test_directed_modes_bracket_x(x, fmt):
    spec = floatlab.get_format(fmt)
    if not spec.signed and x < 0:
        return
    dn, up = q(x, fmt, "rdn"), q(x, fmt, "rup")
    if abs(x) <= min(spec.max_value, spec.max_negative or spec.max_value):
        if spec.has_zero or x > spec.smallest_positive:
            assert dn <= x <= up
        t = q(x, fmt, "rtz")
        if math.isnan(t):  # only 0 in a format without zero (E8M0) has no value to go to
            assert x == 0 and not spec.has_zero
            return
        assert abs(t) <= abs(x) or (not spec.has_zero and t == spec.smallest_positive)


@settings(max_examples=300, deadline=None)
@given(x=floats, fmt=st.sampled_from([f for f in FORMATS if floatlab.get_format(f).signed
                                      and not f.startswith("int")]),
       mode=st.sampled_from(SYMMETRIC))
def test_symmetric_modes_are_odd_symmetric(x, fmt, mode):
    a, b = q(x, fmt, mode), q(-x, fmt, mode)
    assert (math.isnan(a) and math.isnan(b)) or a == -b


@settings(max_examples=200, deadline=None)
@given(x=floats, fmt=st.sampled_from(FORMATS))
def test_up_and_down_are_mirror_images(x, fmt):
    if not floatlab.get_format(fmt).signed or fmt.startswith("int"):
        return
    assert q(x, fmt, "rup") == -q(-x, fmt, "rdn")
