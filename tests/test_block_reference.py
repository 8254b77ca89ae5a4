"""NVFP4 and HiF4 fast paths against the slow scalar references (floatlab.reference.block),
bit for bit: values, element codes, and scale bytes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import floatlab
from floatlab.reference.block import hif4_pack_elements, hif4_reference, nvfp4_reference

N_HIF4 = int(os.environ.get("FLOATLAB_HIF4_BLOCKS", "1500"))
N_NVFP4 = int(os.environ.get("FLOATLAB_NVFP4_BLOCKS", "3000"))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def stress_blocks(n: int, size: int, seed: int) -> np.ndarray:
    """float32 blocks: Gaussian at scales 2^-60..2^40, heavy tails, bf16/e2m1-grid ties,
    all-zero, -0.0, tiny blocks next to huge ones, NaN and Inf."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size)) * np.exp2(rng.integers(-60, 40, (n, 1)))
    k = n // 8
    x[:k] = rng.standard_t(2, (k, size))                                      # heavy tails
    grid = rng.integers(-64, 64, (k, size)) / 16.0 + 1 / 32.0                 # exact binary ties
    x[k:2 * k] = grid * np.exp2(rng.integers(-5, 5, (k, 1)))
    x[2 * k: 2 * k + 4] = 0.0
    x[2 * k + 4, :5] = -0.0
    x[2 * k + 5, 3] = np.nan
    x[2 * k + 6, 7] = np.inf
    x[2 * k + 7, 1] = -np.inf
    x[3 * k: 3 * k + 8] *= 2.0 ** -30                                         # tiny next to big
    with np.errstate(over="ignore"):
        return x.astype(np.float32)


@pytest.mark.parametrize("rounding", ["rna", "rne"])
def test_hif4_matches_reference(rounding, n=None):
    n = n or N_HIF4
    x = stress_blocks(n, 64, seed=11 if rounding == "rna" else 12)
    q = floatlab.encode(torch.from_numpy(x), "hif4", rounding=rounding)
    values = q.dequantize(torch.float64).numpy()
    codes = q.blocked_codes().numpy()
    scales = q.scales["scale"].numpy()
    for i in range(n):
        ref = hif4_reference(x[i].tolist(), elem_rounding=rounding)
        assert bytes(scales[i].tolist()) == ref["scale_bytes"], (i, scales[i], ref["scale_bytes"].hex())
        assert codes[i].tolist() == ref["elem_codes"], i
        assert all(_same(a, b) for a, b in zip(values[i].tolist(), ref["values"])), i
        assert bytes(q.data[32 * i: 32 * (i + 1)].tolist()) == hif4_pack_elements(ref["elem_codes"])


def test_hif4_worked_example_from_formats_md():
    """A block with max 1.0 maps 1.0 to 0.9375: S1 = 0.15625 (E6M2 0xB5), r = 6.40625,
    E1_8 = E1_16 = 1 for the group and subgroup holding 1.0, element code 6."""
    x = torch.full((64,), 0.01)
    x[0] = 1.0
    q = floatlab.encode(x, "hif4")
    s = q.scales["scale"][0].tolist()
    assert s[0] == 0xB5 and (s[1] >> 7) & 1 == 1 and (s[2] >> 7) & 1 == 1
    assert q.blocked_codes()[0, 0].item() == 6
    assert floatlab.quantize(x, "hif4")[0].item() == 0.9375


def test_hif4_double_rounding_of_the_level1_scale():
    x = torch.zeros(64)
    x[0] = 1.979452133178711
    assert floatlab.encode(x, "hif4").scales["scale"][0, 0].item() == 0xB8


def test_hif4_nan_poisons_the_block():
    x = torch.randn(2, 64)
    x[1, 10] = float("nan")
    y = floatlab.quantize(x, "hif4")
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()
    assert floatlab.encode(x, "hif4").scales["scale"][1, 0].item() == 0xFF


def test_hif4_scale_bits_are_msb_first():
    x = torch.full((64,), 0.01)
    x[63] = 1.0  # the last group (7) and the last subgroup (15) hold the max
    s = floatlab.encode(x, "hif4").scales["scale"][0].tolist()
    assert s[1] & 1 == 1 and s[3] & 1 == 1 and (s[1] >> 7) & 1 == 0


@pytest.mark.parametrize("name,four_six,rounding", [("nvfp4", False, "rne"), ("nvfp4_46", True, "rne"),
                                                    ("nvfp4", False, "rna")])
def test_nvfp4_matches_reference(name, four_six, rounding, n=None):
    n = n or N_NVFP4
    per_tensor = 50
    x = stress_blocks(n, 16, seed=21 + four_six)
    for t0 in range(0, n, per_tensor):
        xt = x[t0:t0 + per_tensor]
        finite_amax = float(np.abs(np.where(np.isfinite(xt), xt, 0)).max())
        q = floatlab.encode(torch.from_numpy(xt), name, rounding=rounding)
        ref = nvfp4_reference(xt.reshape(-1).tolist(), four_over_six=four_six,
                              tensor_amax=finite_amax, elem_rounding=rounding)
        if finite_amax > 1e-30:
            assert q.scales["tensor_scale"].item() == ref["tensor_scale"]
        values = q.dequantize(torch.float64).reshape(-1).tolist()
        bad_blocks = ~np.isfinite(xt).all(axis=1)
        ours_scale = q.scales["scale"].tolist()
        ours_codes = q.blocked_codes().reshape(-1).tolist()
        for b in range(len(xt)):
            sl = slice(16 * b, 16 * (b + 1))
            assert all(_same(u, v) for u, v in zip(values[sl], ref["values"][sl])), (t0, b)
            if not bad_blocks[b]:
                assert ours_scale[b] == ref["scale_codes"][b], (t0, b)
                assert ours_codes[sl] == ref["elem_codes"][sl], (t0, b)


def test_nvfp4_nan_poisons_only_its_block():
    x = torch.randn(4, 16)
    x[2, 3] = float("inf")
    y = floatlab.quantize(x, "nvfp4")
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3]]).all()


@pytest.mark.slow
def test_hif4_matches_reference_1e5_blocks():
    test_hif4_matches_reference("rna", n=100_000)


@pytest.mark.slow
def test_nvfp4_matches_reference_1e5_blocks():
    test_nvfp4_matches_reference("nvfp4", False, "rne", n=100_000)
    test_nvfp4_matches_reference("nvfp4_46", True, "rne", n=100_000)
