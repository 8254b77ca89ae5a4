"""MX formats equal an independent composition: the OCP scale computed with numpy, then the
element cast by ml_dtypes (or numpy's round-half-even for MXINT8), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import floatlab
from conftest import ml_dtypes

ELEM = {"mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 448.0, 8), "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 57344.0, 15),
        "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 28.0, 4), "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 7.5, 2),
        "mxfp4": (ml_dtypes.float4_e2m1fn, 6.0, 2), "mxint8": (None, 127 / 64, 0)}


def oracle_mx(x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, e8m0 scale codes) for float32 x of shape (nblocks, 32)."""
    dt, emax_val, emax = ELEM[name]
    x64 = x.astype(np.float64)
    finite = np.isfinite(x64)
    bad = ~finite.all(axis=1)
    amax = np.where(finite, np.abs(x64), 0).max(axis=1)
    e = np.where(amax > 0, np.frexp(np.where(amax > 0, amax, 1))[1] - 1, -1000) - emax  # exact floor(log2)
    e = np.clip(e, -127, 127)
    X = np.ldexp(1.0, e.astype(np.int64))[:, None]
    P = np.clip(np.where(finite, x64, 0) / X, -emax_val, emax_val)
    if dt is None:
        q = np.round(P * 64) / 64
    else:
        q = P.astype(np.float32).astype(dt).astype(np.float64)
    vals = q * X
    vals[bad] = np.nan
    codes = np.where(bad, 255, e + 127).astype(np.int64)
    return vals, codes


def mx_stress(n_blocks: int, seed: int, emax_val: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = n_blocks // 6
    parts = [
        rng.standard_normal((k, 32)) * np.exp2(rng.integers(-20, 20, (k, 1))),           # typical
        np.exp2(rng.uniform(-149, 127, (k, 32))) * rng.choice([-1, 1], (k, 32)),         # wide spread
        rng.standard_normal((k, 32)) * 2.0 ** -130,                                      # tiny: scale clamps at 2^-127
        rng.standard_normal((k, 32)) * 2.0 ** 120,                                       # huge scales
    ]
    # exact ties: element midpoints (values from the element grid) times a power-of-two scale
    grid = rng.integers(0, 64, (k, 32)) / 8.0 * emax_val / 8
    ties = (grid + emax_val / 64) * np.exp2(rng.integers(-10, 10, (k, 1)))
    ties[:, 0] = emax_val * np.exp2(np.floor(np.log2(np.abs(ties).max(1))) - np.floor(np.log2(emax_val)))  # fix block max
    parts.append(ties)
    special = rng.standard_normal((k, 32))
    special[0::4] = 0.0                                                                     # zero blocks
    special[1::4, 5] = np.nan                                                               # NaN blocks
    special[2::4, 7] = np.inf                                                               # Inf blocks
    special[3::4, 3] = -np.inf
    parts.append(special)
    with np.errstate(over="ignore"):
        return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("name", list(ELEM))
def test_mx_matches_independent_composition(name):
    x = mx_stress(32_000, seed=len(name), emax_val=ELEM[name][1])   # > 10^6 values
    assert x.size >= 1_000_000
    xt = torch.from_numpy(x)
    q = floatlab.encode(xt, name)
    ours = q.dequantize(torch.float64).numpy()
    want, scale_codes = oracle_mx(x, name)
    assert np.array_equal(q.scales["scale"].numpy().astype(np.int64), scale_codes)
    assert np.array_equal(np.isnan(ours), np.isnan(want))
    ok = ~np.isnan(want)
    mism = ok & (ours != want)
    assert not mism.any(), f"{mism.sum()} mismatches: x={x[mism][:4]} ours={ours[mism][:4]} want={want[mism][:4]}"
    assert torch.equal(floatlab.quantize(xt, name).double().nan_to_num(7.0),
                       torch.from_numpy(want).float().double().nan_to_num(7.0))


def test_mx_floor_rule_clips_the_block_max():
    # FORMATS.md 3: FLOOR scaling clips when the mantissa of amax exceeds 1.5 for E2M1
    x = torch.zeros(32)
    x[0] = 1.75 * 4  # 7.0 = 1.75 * 2^2: X = 2^(2-2) = 1, 7 clamps to 6
    assert floatlab.quantize(x, "mxfp4")[0].item() == 6.0


@pytest.mark.parametrize("rule,expected_scale_exp", [("floor", 0), ("ceil", 1), ("even", 1), ("rceil", 1)])
def test_mx_scale_rules(rule, expected_scale_exp):
    fmt = floatlab.block_format(elem="e2m1", scale="e8m0", block=32, rule=rule)
    x = torch.zeros(32)
    x[0] = 7.0  # amax = 1.75 * 2^2
    q = floatlab.encode(x, fmt)
    assert q.scales["scale"][0].item() - 127 == expected_scale_exp
    if rule == "rceil":  # amax/6 = 1.1667 -> up to 2: never clips
        assert floatlab.quantize(x, fmt)[0].item() == 8.0


def test_rceil_never_clips_and_uses_the_smallest_power():
    fmt = floatlab.block_format(elem="e2m1", scale="e8m0", rule="rceil")
    x = torch.randn(64, 32) * 10
    y = floatlab.quantize(x, fmt)
    amax = x.abs().amax(1)
    assert (y.abs().amax(1) >= amax * 0.75).all()   # max maps into the top binade, no clamp below
    q = floatlab.encode(x, fmt)
    X = torch.exp2(q.scales["scale"].double() - 127)
    assert ((6 * X >= amax.double()) & (3 * X < amax.double())).all()


def test_axis_and_padding():
    x = torch.randn(40, 3)
    y = floatlab.quantize(x, "mxfp4", axis=0)
    ref = floatlab.quantize(torch.nn.functional.pad(x.t(), (0, 24)), "mxfp4")[:, :40].t()
    assert torch.equal(y, ref)
    with pytest.raises(ValueError, match="not a multiple of the block size 32 and padding is disabled"):
        floatlab.quantize(x, "mxfp4", axis=0, pad=False)
    with pytest.raises(ValueError, match="block axis 2 is out of range"):
        floatlab.quantize(x, "mxfp4", axis=2)
    with pytest.raises(TypeError, match="dtype torch.int32"):
        floatlab.quantize(torch.ones(32, dtype=torch.int32), "mxfp4")


def test_stochastic_elements_are_reproducible():
    x = torch.randn(16, 64)
    a = floatlab.quantize(x, "mxfp4", rounding="sr", generator=torch.Generator().manual_seed(0))
    b = floatlab.quantize(x, "mxfp4", rounding="sr", generator=torch.Generator().manual_seed(0))
    c = floatlab.quantize(x, "mxfp4")
    assert torch.equal(a, b) and not torch.equal(a, c)
