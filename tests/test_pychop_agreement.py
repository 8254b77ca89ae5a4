"""floatlab's rounded arithmetic against pychop's op-by-op emulation (Carson & Chen's Pychop 0.6.2).

pychop rounds a program op by op with ``pychop.math_func`` (round the inputs, compute in float64,
round the result); floatlab runs the unmodified torch program under
``floatlab.emulate(fmt, rounding, round_inputs=True)``, the same model. Shared formats: fp16 (pychop
``Chop(5, 10)``) and bf16 (``Chop(8, 7)``); shared modes: rne, rup, rdn, rtz, rnz, rna, rto (pychop
rmode 1, 2, 3, 4, 7, 8, 9).

Where the two differ, the exact rational rounding (``exact_round``) decides; every difference
found is one of pychop's own rounding bugs (its ``Chop`` alone already disagrees with the exact
rounding there), listed in docs/numerics.md.
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import floatlab

pychop = pytest.importorskip("pychop")
os.environ["chop_backend"] = "numpy"
from pychop import Chop  # noqa: E402
from pychop import math_func as md  # noqa: E402

_spec = importlib.util.spec_from_file_location("_exact", Path(__file__).with_name("test_emulation.py"))
_exact = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_exact)
exact_round = _exact.exact_round

FORMATS = {"fp16": (5, 10), "bf16": (8, 7)}
RMODE = {"rne": 1, "rup": 2, "rdn": 3, "rtz": 4, "rnz": 7, "rna": 8, "rto": 9}


def chop(fmt, mode):
    e, m = FORMATS[fmt]
    return Chop(e, m, rmode=RMODE[mode])


def _values(fmt):
    spec = floatlab.get_format(fmt)
    v = spec.decode(torch.arange(2 ** spec.bits))
    v = v[torch.isfinite(v)].unique().numpy()
    mids = (v[:-1] + v[1:]) / 2
    rng = np.random.default_rng(0)
    pick = lambda a: a[rng.permutation(a.size)[:6000]]  # noqa: E731  (a sample keeps the test fast)
    return {
        "normal": rng.standard_normal(6000),
        "wide": rng.standard_normal(6000) * 2.0 ** rng.integers(-30, 15, 6000),
        "exact": pick(v),
        "ties": pick(mids),
        "near ties": pick(np.concatenate([np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])),
    }


@pytest.mark.parametrize("mode", list(RMODE))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_rounding_agrees_except_where_pychop_is_wrong(fmt, mode):
    ch = chop(fmt, mode)
    top = floatlab.get_format(fmt).max_value
    for kind, x in _values(fmt).items():
        x = x[np.abs(x) <= top]                    # in range (overflow: the next test)
        p = np.asarray(ch(x))
        f = floatlab.quantize(torch.from_numpy(x), fmt, mode).numpy()
        differ = np.nonzero(p != f)[0]
        for i in differ[:300]:
            want = exact_round(Fraction(float(x[i])), fmt, mode)
            assert f[i] == want, f"floatlab wrong on {x[i]!r} ({fmt} {mode}, {kind})"
            assert p[i] != want
        if mode in ("rne", "rup", "rdn", "rtz") and kind in ("normal", "exact", "ties"):
            assert differ.size == 0, (fmt, mode, kind)


def test_pychop_overflow_bug_and_floatlab_overflow():
    x = np.array([65519.0, 65520.0, 70000.0, 131071.0, 140000.0])
    p = np.asarray(chop("fp16", "rne")(x))
    f = floatlab.quantize(torch.from_numpy(x), "fp16").numpy()
    assert f.tolist() == [65504.0, np.inf, np.inf, np.inf, np.inf]          # IEEE fp16
    assert p[2] == 0.0 and p[3] == 0.0                                       # pychop: 0 in [2^16, 2^17)
    assert p[1] == 65536.0                                                   # pychop: not an fp16 value


# ---- small programs, op by op ---------------------------------------------------------------------
def _data(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal(1000), "y": rng.standard_normal(1000),
            "logits": 4 * rng.standard_normal((32, 64)),
            "inp": rng.standard_normal((16, 64)),
            "W": [rng.standard_normal((128, 64)) / 8, rng.standard_normal((128, 128)) / 11,
                  rng.standard_normal((10, 128)) / 11],
            "b": [rng.standard_normal(128) / 10, rng.standard_normal(128) / 10, rng.standard_normal(10) / 10]}


def pychop_programs(ch, d):
    dot = md.dot(d["x"], d["y"], ch)
    z = md.subtract(d["logits"], np.max(d["logits"], axis=-1, keepdims=True), ch)
    e = md.exp(z, ch)
    soft = md.divide(e, md.sum(e, ch, axis=-1)[:, None], ch)
    h = d["inp"]
    for i, (w, b) in enumerate(zip(d["W"], d["b"])):
        h = md.add(md.matmul(h, w.T, ch), b, ch)
        if i < 2:
            h = np.maximum(h, 0.0)
    return dot, soft, h


def floatlab_programs(fmt, mode, d):
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else [torch.from_numpy(a) for a in v])
         for k, v in d.items()}
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10)).double()
    with torch.no_grad():
        for lin, w, b in zip(mlp[::2], t["W"], t["b"]):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    with floatlab.emulate(fmt, mode, round_inputs=True):
        dot = torch.dot(t["x"], t["y"])
        soft = torch.softmax(t["logits"], -1)
        h = t["inp"]
        for i, (w, b) in enumerate(zip(t["W"], t["b"])):
            h = h @ w.T + b                       # matmul rounded, then the bias add
            if i < 2:
                h = torch.relu(h)
    # an unmodified nn.Module: F.linear's addmm through an accumulator that keeps float64 (the
    # matmul rounded once into fmt), then the bias added with one more rounding
    with floatlab.emulate(fmt, mode, round_inputs=True, accumulator="fp64:rne:100000"), torch.no_grad():
        out = mlp(t["inp"])
    return dot.numpy(), soft.numpy(), h.numpy(), out.numpy()


@pytest.mark.parametrize("mode", ["rne", "rup", "rdn", "rtz"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_programs_agree_bit_for_bit(fmt, mode):
    d = _data()
    p_dot, p_soft, p_mlp = pychop_programs(chop(fmt, mode), d)
    f_dot, f_soft, f_mlp, f_module = floatlab_programs(fmt, mode, d)
    assert float(p_dot) == float(f_dot)
    assert np.array_equal(p_soft, f_soft)
    assert np.array_equal(p_mlp, f_mlp)
    assert np.array_equal(f_module, f_mlp)


@pytest.mark.parametrize("mode", ["rna", "rnz", "rto"])
def test_programs_where_pychop_ties_and_odd_rounding_differ(mode):
    """rna/rnz: pychop picks the tie's side from the magnitude's sign (negative ties go the wrong
    way) and treats anything within 1e-6 units of a tie as a tie; rto: pychop moves exactly
    representable values with an even significand. Each differing output of the first rounded
    op is checked against the exact rounding."""
    d = _data()
    ch = chop("fp16", mode)
    x = np.concatenate([d["x"], d["y"]])
    xr_p = np.asarray(ch(x))
    xr_f = floatlab.quantize(torch.from_numpy(x), "fp16", mode).numpy()
    for i in np.nonzero(xr_p != xr_f)[0]:
        assert xr_f[i] == exact_round(Fraction(float(x[i])), "fp16", mode) != xr_p[i]
    # a program whose every intermediate is exactly representable: rto must not move anything
    a = torch.tensor([0.5, 1.0, 1.5, 3.0], dtype=torch.float64)
    with floatlab.emulate("fp16", mode, round_inputs=True):
        s = a * 2 + a
    assert s.tolist() == [1.5, 3.0, 4.5, 9.0]
    p = md.add(md.multiply(a.numpy(), 2.0, ch), a.numpy(), ch)
    if mode == "rto":
        assert p.tolist() != [1.5, 3.0, 4.5, 9.0]     # pychop's rto moves exact even values
