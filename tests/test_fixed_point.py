"""Fixed-point Q formats (``q<i>.<f>``, ``uq<i>.<f>``): exhaustive against an integer reference.

Every 8-bit Q format (q0.7 .. q7.0 signed, uq0.8 .. uq8.0 unsigned), every rounding mode and the
saturating overflow: the reference scales the input by 2^f exactly (Fractions), rounds to an
integer with the mode's textbook rule on Python ints, and clamps to the format's integer range.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import floatlab

SIGNED = [f"q{i}.{7 - i}" for i in range(8)]
UNSIGNED = [f"uq{i}.{8 - i}" for i in range(9)]
ALL8 = SIGNED + UNSIGNED
DETERMINISTIC = ["rne", "rna", "rnz", "rtz", "rup", "rdn", "rto"]


def _spec(name):
    signed = not name.startswith("u")
    i, f = (int(t) for t in name.lstrip("u").lstrip("q").split("."))
    bits = i + f + signed
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return signed, f, lo, hi


def ref_int(x: float, name: str, mode: str, u=None, rint=None, sr_bits=None, coin=None) -> int | None:
    """The integer k of the rounded value k * 2^-f (None for NaN)."""
    signed, f, lo, hi = _spec(name)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return hi if x > 0 else lo
    X = Fraction(x) * 2 ** f
    mag = abs(X)
    fl = math.floor(mag)
    d = mag - fl
    neg = X < 0
    if d == 0:
        up = False
    else:
        up = {"rtz": lambda: False, "rna": lambda: d >= Fraction(1, 2), "rnz": lambda: d > Fraction(1, 2),
              "rne": lambda: d > Fraction(1, 2) or (d == Fraction(1, 2) and fl % 2 == 1),
              "rup": lambda: not neg, "rdn": lambda: neg, "rto": lambda: fl % 2 == 0,
              "sr": lambda: (Fraction(u) < d) if sr_bits is None
              else (math.floor(d * 2 ** sr_bits) + rint >= 2 ** sr_bits),
              "sr_half": lambda: coin == 1}[mode]()
    k = (fl + up) * (-1 if neg else 1)
    return max(lo, min(hi, k))


def _inputs(name: str) -> torch.Tensor:
    """Every grid point of the format (and past both ends), every midpoint and quarter point, the
    float64 neighbours of the midpoints, random values, zeros, infinities, huge values, NaN."""
    signed, f, lo, hi = _spec(name)
    k = torch.arange(lo - 3, hi + 4, dtype=torch.float64)
    step = 2.0 ** -f
    grid = k * step
    mids = (k + 0.5) * step
    pts = [grid, mids, (k + 0.25) * step, (k + 0.75) * step,
           torch.nextafter(mids, torch.full_like(mids, math.inf)),
           torch.nextafter(mids, torch.full_like(mids, -math.inf)),
           torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (hi + 2) * step,
           torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e300, -1e300, 5e-324, -5e-324, math.nan],
                        dtype=torch.float64)]
    return torch.cat(pts)


def expected(name, mode, x, **draws) -> torch.Tensor:
    """The reference values (float64; NaN where the input is NaN)."""
    signed, f, lo, hi = _spec(name)
    out = []
    for i, xv in enumerate(x.tolist()):
        kw = {k: (v[i] if v is not None else None) for k, v in draws.items()}
        k = ref_int(xv, name, mode, **kw)
        out.append(math.nan if k is None else k * 2.0 ** -f)
    return torch.tensor(out, dtype=torch.float64)


def _check(name, mode, x, got, **draws):
    _same(got, expected(name, mode, x, **draws), x, name, mode)


def _same(got, want, x, name, mode):
    ok = (got.double() == want) | (got.double().isnan() & want.isnan())
    assert bool(ok.all()), (name, mode, x[~ok][:4].tolist(), got[~ok][:4].tolist(), want[~ok][:4].tolist())


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("name", ALL8)
def test_quantize_every_8bit_q_format_every_mode(name, mode):
    x = _inputs(name)
    for dtype in (torch.float64, torch.float32):
        xs = x.to(dtype)
        want = expected(name, mode, xs.double())
        for backend in ("plain", None):
            _same(floatlab.quantize(xs, name, mode, backend=backend), want, xs, name, mode)
    assert torch.equal(floatlab.quantize(x, name, mode, saturate=True).nan_to_num(7.0),
                       floatlab.quantize(x, name, mode).nan_to_num(7.0))   # always saturating


@pytest.mark.parametrize("sr_bits", [None, 3])
@pytest.mark.parametrize("name", ["q3.4", "uq4.4", "q0.7", "uq8.0"])
def test_stochastic_modes_with_the_same_draws(name, sr_bits):
    x = _inputs(name)
    x = x[torch.isfinite(x)]
    got = floatlab.quantize(x, name, "sr", sr_bits=sr_bits, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    if sr_bits is None:
        u = torch.rand(x.shape, dtype=torch.float64, generator=g).tolist()
        _check(name, "sr", x, got, u=u, rint=None, sr_bits=None)
    else:
        r = torch.randint(0, 2 ** sr_bits, x.shape, generator=g).tolist()
        _check(name, "sr", x, got, u=None, rint=r, sr_bits=[sr_bits] * len(r))
    half = floatlab.quantize(x, name, "sr_half", generator=torch.Generator().manual_seed(6))
    coin = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(6)).tolist()
    _check(name, "sr_half", x, half, coin=coin)


@pytest.mark.parametrize("name", ALL8)
def test_codes_decode_and_packed_storage(name, tmp_path):
    signed, f, lo, hi = _spec(name)
    codes = torch.arange(256)
    want = torch.tensor([(c - 256 if signed and c >= 128 else c) * 2.0 ** -f for c in range(256)])
    assert torch.equal(floatlab.decode(codes, name, torch.float64), want.double())
    x = _inputs(name)
    x = x[torch.isfinite(x)]
    q = floatlab.encode(x, name, "rne")
    k = torch.tensor([ref_int(v, name, "rne") for v in x.tolist()])
    assert torch.equal(q.codes, k & 0xFF)
    assert q.nbytes == x.numel() and q.bits_per_value == 8
    assert torch.equal(floatlab.decode(q, dtype=torch.float64), floatlab.quantize(x, name, "rne"))
    floatlab.save(tmp_path / "q.safetensors", {"q": q})
    assert torch.equal(floatlab.load(tmp_path / "q.safetensors")["q"].codes, q.codes)


@pytest.mark.parametrize("name,bits", [("q2.4", 7), ("uq1.2", 3), ("q5.10", 16), ("uq6.6", 12)])
def test_other_widths_pack_and_round_trip(name, bits):
    fmt = floatlab.get_format(name)
    assert fmt.bits == bits and fmt.frac_bits == int(name.split(".")[1])
    x = _inputs(name)
    x = x[torch.isfinite(x)][:500]
    _check(name, "rne", x, floatlab.quantize(x, name).double())
    q = floatlab.encode(x, name)
    assert q.nbytes == math.ceil(x.numel() * bits / 8) if bits < 8 else True
    assert torch.equal(floatlab.decode(q, dtype=torch.float64), floatlab.quantize(x, name))


def test_names_and_errors():
    assert floatlab.get_format("Q3.4") == floatlab.get_format("q3.4")
    assert floatlab.finfo("q3.4").max == 8 - 2 ** -4 and floatlab.finfo("q3.4").lowest == -8
    assert floatlab.finfo("uq4.4").max == 16 - 2 ** -4 and floatlab.finfo("uq4.4").lowest == 0
    with pytest.raises(ValueError, match="2..16"):
        floatlab.get_format("q9.9")
    with pytest.raises(ValueError, match="2..16"):
        floatlab.get_format("uq0.1")
    with pytest.raises(ValueError, match="unknown format"):
        floatlab.get_format("q3")
    with pytest.raises(ValueError, match="no NaN code"):
        floatlab.encode(torch.tensor([float("nan")]), "q3.4")
    with floatlab.emulate("q3.4", rounding="rtz"):          # fixed-point arithmetic, saturating
        y = torch.tensor([1.3]) * torch.tensor([7.0]) + torch.tensor([0.01])
    assert y.item() == 7.9375
