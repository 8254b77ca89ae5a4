"""Stochastic rounding: unbiased, reproducible, never moves a representable value, sr_bits."""

from __future__ import annotations

import pytest
import torch

import floatlab

N = 100_000


@pytest.mark.parametrize("name,x", [("e4m3", 1.03), ("e5m2", -3.3), ("bf16", 1.0 + 2 ** -10),
                                    ("int4", 2.3), ("hif8", 300.0), ("e2m1", 0.3), ("fp16", 1e-6)])
def test_sr_is_unbiased_within_4_sigma(name, x):
    g = torch.Generator().manual_seed(1)
    xs = torch.full((N,), x, dtype=torch.float64)
    y = floatlab.quantize(xs, name, rounding="sr", generator=g)
    lo, hi = y.min().item(), y.max().item()
    assert lo < x < hi, "the value must land on both neighbours"
    assert set(y.unique().tolist()) == {lo, hi}
    p = (x - lo) / (hi - lo)
    sigma = (hi - lo) * (p * (1 - p) / N) ** 0.5
    assert abs(y.mean().item() - x) < 4 * sigma


def test_sr_half_picks_each_neighbour_half_the_time():
    g = torch.Generator().manual_seed(2)
    y = floatlab.quantize(torch.full((N,), 1.01), "e4m3", rounding="sr_half", generator=g)
    frac_up = (y == 1.125).double().mean().item()
    assert abs(frac_up - 0.5) < 4 * (0.25 / N) ** 0.5


@pytest.mark.parametrize("mode", ["sr", "sr_half"])
def test_reproducible_by_seed_and_different_across_seeds(mode):
    x = torch.randn(10_000)
    a = floatlab.quantize(x, "e4m3", rounding=mode, generator=torch.Generator().manual_seed(5))
    b = floatlab.quantize(x, "e4m3", rounding=mode, generator=torch.Generator().manual_seed(5))
    c = floatlab.quantize(x, "e4m3", rounding=mode, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m1", "hif8", "int8", "bf16"])
@pytest.mark.parametrize("mode", ["sr", "sr_half", "hybrid"])
def test_representable_values_are_never_moved(name, mode):
    if mode == "hybrid" and name != "hif8":
        pytest.skip("hybrid is hif8-only")
    fmt = floatlab.get_format(name)
    if fmt.bits <= 8:
        v = floatlab.decode(torch.arange(2 ** fmt.bits), name)
    else:
        v = floatlab.quantize(torch.randn(50_000) * 100, name)
    v = v[torch.isfinite(v)].repeat(20)
    y = floatlab.quantize(v, name, rounding=mode, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y, v)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sr_bits_limit_the_probability_resolution(k):
    """With k random bits the round-up probability is floor(frac * 2^k) / 2^k."""
    g = torch.Generator().manual_seed(4)
    # 1 + 0.3 ulp of e4m3 (ulp 0.125 at 1.0): frac = 0.3
    xs = torch.full((N,), 1.0 + 0.3 * 0.125, dtype=torch.float64)
    y = floatlab.quantize(xs, "e4m3", rounding="sr", sr_bits=k, generator=g)
    p_expected = int(0.3 * 2 ** k) / 2 ** k
    p = (y == 1.125).double().mean().item()
    assert abs(p - p_expected) < 4 * max((p_expected * (1 - p_expected) / N) ** 0.5, 1e-4)
    if k == 1:
        assert p == 0.0  # 0.3 truncated to one bit is 0: never rounds up


def test_sr_bits_default_uses_exact_probability():
    g = torch.Generator().manual_seed(4)
    xs = torch.full((N,), 1.0 + 0.3 * 0.125, dtype=torch.float64)
    p = (floatlab.quantize(xs, "e4m3", rounding="sr", generator=g) == 1.125).double().mean().item()
    assert abs(p - 0.3) < 4 * (0.21 / N) ** 0.5
