"""GPTQ's fast column loop (table rounder, reused Cholesky factor) gives the bits of the plain one.

The reference below is the column loop as it was before the speed-up (a full
``floatlab.quantize`` call per column, the factorization redone on every call), kept verbatim
so that any change of arithmetic order in :mod:`floatlab.ptq.gptq` shows up as a difference.
"""

from __future__ import annotations

import gc
import math

import pytest
import torch

import floatlab
from floatlab.ptq import gptq
from floatlab.ptq.config import GPTQOptions
from floatlab.ptq.gptq import _TableRounder, _assemble, _group_of, gptq_weight
from floatlab.ptq.quantizer import FrozenGrid, QuantSpec, absmax_scale


def _ref_round(grid, col, j):
    spec = grid.spec
    if spec.is_block:
        c = grid.grid.elements(col[:, None], slice(j, j + 1))
        return c[:, 0], grid.grid.decode(c, slice(j, j + 1))[:, 0]
    if spec.scaled:
        s = grid.scale.reshape(-1)
        v = floatlab.quantize(col.to(torch.float32) / s, spec.fmt, spec.rounding, saturate=True)
        return v, v * s
    q = grid.round(col, j)
    return q, q


@torch.no_grad()
def reference_gptq(w, H, spec, opts=GPTQOptions()):
    """floatlab's GPTQ column loop before the speed-up (scalar and block formats)."""
    W = w.detach().to(torch.float32).clone()
    rows, cols = W.shape
    H = H.to(torch.float32).clone()
    group = _group_of(spec, opts)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = None
    if opts.act_order and group is None:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    damp = opts.damp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols)
    L = torch.linalg.cholesky(H.double())
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True).to(torch.float32)
    tensor_amax = w.detach().abs().amax().to(torch.float32) if spec.is_block else None
    row_grid = None
    if group is None:
        row_grid = FrozenGrid(W, spec, row_scale=absmax_scale(W, QuantSpec(spec.format, None, spec.scale_target), "weight")
                              if spec.scaled else None)
    Q = torch.zeros_like(W)
    values = torch.zeros_like(W)
    grids = []
    bs = opts.block_size if group is None else max(group, (opts.block_size // group) * group)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        grid = row_grid
        for i in range(i2 - i1):
            col = i1 + i
            if group is not None and col % group == 0:
                grid = FrozenGrid(W1[:, i:i + group], spec, tensor_amax=tensor_amax)
                grids.append(grid)
            j = col % group if group is not None else col
            wcol = W1[:, i]
            qv, q = _ref_round(grid, wcol, j)
            Q[:, col], values[:, col] = q, qv
            err = (wcol - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        inv = torch.argsort(perm)
        Q, values = Q[:, inv], values[:, inv]
    return _assemble(spec, w.shape, Q, values, grids, row_grid, group)


def _layer(rows=24, cols=96, seed=0, dead=(5,)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3, 7] = 0.4                                   # an outlier that sets a group's scale
    x = torch.randn(400, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    x[:, list(dead)] = 0                            # a dead input
    return w, 2 / x.shape[0] * x.T @ x


def _bits(t):
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def _assert_same(a, b):
    assert torch.equal(_bits(a.values), _bits(b.values))
    assert torch.equal(_bits(a.dequantize()), _bits(b.dequantize()))
    if a.row_scale is None:
        assert b.row_scale is None
    else:
        assert torch.equal(a.row_scale, b.row_scale)
    assert (a.scales is None) == (b.scales is None)
    for k in (a.scales or {}):
        assert torch.equal(a.scales[k], b.scales[k]), k


CASES = [("int4", None, True, None), ("int4", 32, False, None), ("int8", None, False, None),
         ("int2", 16, False, None), ("e4m3", None, True, None), ("e4m3", 32, False, "rna"), ("e5m2", 32, False, None),
         ("e2m1", None, False, "rnz"), ("e3m2", 32, False, None), ("e4m3fnuz", None, True, None),
         ("hif8", 32, False, None), ("hif8", None, True, "rne"), ("e4m3", 32, False, "rtz"),
         ("mxfp4", None, False, None), ("nvfp4", None, False, None), ("hif4", None, False, None),
         ("mxfp8_e4m3", None, False, None), ("mxfp6_e2m3", None, False, "rna"), ("nvfp4_46", None, False, None),
         ("mxint8", None, False, None), ("hif4", None, False, "rne"), ("bf16", None, True, None)]


@pytest.mark.parametrize("fmt,group,act_order,rounding", CASES)
def test_gptq_bit_for_bit_with_plain_column_loop(fmt, group, act_order, rounding):
    w, H = _layer()
    spec = QuantSpec(fmt, group_size=group, rounding=rounding)
    opts = GPTQOptions(act_order=act_order, block_size=64)
    ref = reference_gptq(w, H, spec, opts)
    gptq._factors.clear()
    _assert_same(gptq_weight(w, H, spec, opts), ref)            # factor computed
    _assert_same(gptq_weight(w, H, spec, opts), ref)            # factor reused


def test_gptq_table_rounder_used_for_common_formats():
    """The fast rounder covers the formats GPTQ is run on (else the speed-up silently goes)."""
    for fmt in ("int2", "int4", "int8", "e4m3", "e5m2", "e2m1", "e3m2", "e2m3", "hif8", "e4m3fnuz", "e1m2"):
        for mode in ("rne", "rna", "rnz"):
            assert _TableRounder.build(fmt, mode) is not None, (fmt, mode)
    assert _TableRounder.build("e4m3", "sr") is None         # stochastic modes call quantize
    assert _TableRounder.build("bf16", None) is None         # 16-bit formats are not scaled


@pytest.mark.parametrize("fmt", ["int2", "int4", "int8", "e4m3", "e5m2", "e2m1", "e3m2", "e2m3", "hif8",
                                 "e4m3fnuz", "e5m2fnuz", "e1m2", "e3m4"])
@pytest.mark.parametrize("mode", ["rne", "rna", "rnz"])
def test_gptq_table_rounder_equals_quantize(fmt, mode):
    """Every float32 around every value and midpoint of the format, and random values over its
    range, round to the bits of floatlab.quantize(saturate=True) (an independent probe from
    the one the rounder checks itself with; NaN is outside its domain: GPTQ checks its columns
    are finite)."""
    t = _TableRounder.build(fmt, mode)
    if t is None:
        pytest.skip(f"{fmt}/{mode}: not covered, GPTQ calls quantize")
    v = t.values
    mids = (v[:-1].double() + v[1:].double()) / 2
    pts = torch.cat([v.double(), mids]).float()
    near = [pts]
    x = pts
    for _ in range(3):                                # three float32 steps either side
        x = torch.nextafter(x, torch.tensor(math.inf))
        near.append(x)
    x = pts
    for _ in range(3):
        x = torch.nextafter(x, torch.tensor(-math.inf))
        near.append(x)
    g = torch.Generator().manual_seed(1)
    amax = float(v.abs().max())
    rand = torch.cat([torch.rand(8000, generator=g) * 2.5 * amax - 1.25 * amax,
                      torch.exp(torch.empty(8000).uniform_(-40, math.log(amax * 4), generator=g))])
    probe = torch.cat(near + [rand, torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-45, 3.4e38])])
    probe = torch.cat([probe, -probe])
    assert probe.numel() < 65536             # below the size that compiles a kernel (keeps the test fast)
    want = floatlab.quantize(probe, fmt, mode, saturate=True)
    got = t(probe)
    same = want.view(torch.int32) == got.view(torch.int32)
    assert bool(same.all()), (probe[~same][:5], want[~same][:5], got[~same][:5])


def test_gptq_factor_cache_reuse_invalidation_and_limit(monkeypatch):
    w, H = _layer(seed=3)
    spec = QuantSpec("int4", group_size=32)
    opts = GPTQOptions(act_order=False)
    gptq._factors.clear()
    f1 = gptq._factor(H, 0.01, False)
    assert gptq._factor(H, 0.01, False) is f1                  # same tensor, same options: reused
    assert gptq._factor(H.clone(), 0.01, False) is not f1       # another tensor: its own factor
    assert gptq._factor(H, 0.1, False) is not f1                # other damping
    fa = gptq._factor(H, 0.01, True)                            # act-order: permuted, kept beside
    assert fa.perm is not None and gptq._factor(H, 0.01, False) is f1 and gptq._factor(H, 0.01, True) is fa
    f2 = gptq._factor(H, 0.01, False)
    H.mul_(2)                                                  # changed in place: factored again
    f3 = gptq._factor(H, 0.01, False)
    assert f3 is not f2 and not torch.equal(f3.damp, f2.damp)
    _assert_same(gptq_weight(w, H, spec, opts), reference_gptq(w, H, spec, opts))
    n = len(gptq._factors)
    del H, f1, f2, f3, fa
    gc.collect()
    assert len(gptq._factors) < n                              # dropped with its Hessian
    monkeypatch.setattr(gptq, "FACTOR_CACHE_BYTES", 0)
    gptq._factors.clear()
    _, H2 = _layer(seed=4)
    gptq._factor(H2, 0.01, False)
    assert len(gptq._factors) == 0                             # over the limit: not kept


def test_gptq_not_positive_definite_not_cached():
    w = torch.randn(4, 8)
    H = torch.zeros(8, 8)
    H[0, 1] = H[1, 0] = 5.0
    H[0, 0] = H[1, 1] = 1.0                                    # indefinite
    gptq._factors.clear()
    for _ in range(2):                                         # the error again, not a cached factor
        with pytest.raises(ValueError, match="not positive definite"):
            gptq_weight(w, H, QuantSpec("int8"), GPTQOptions(damp=0.0))
    assert len(gptq._factors) == 0


TABLE_CASES = [c for c in CASES if _TableRounder.build(c[0], c[3]) is not None and not QuantSpec(c[0]).is_block]


@pytest.mark.parametrize("fmt,group,act_order,rounding", TABLE_CASES)
def test_gptq_native_column_loop_equals_python_loop(fmt, group, act_order, rounding, monkeypatch):
    """The native column loop (gptq_native) gives the Python loop's bits, on a block width that
    leaves a partial last block and on weights with exact zeros, ties and a dead input."""
    from floatlab.kernels import native
    from floatlab.ptq import gptq_native

    if native.compiler() is None or not gptq_native.available():
        pytest.skip("no C++ compiler: GPTQ runs its Python loop (tested above)")
    w, H = _layer()
    w = w.clone()
    w[0, :8] = 0.0
    w[1, :8] = -0.0
    spec = QuantSpec(fmt, group_size=group, rounding=rounding)
    opts = GPTQOptions(act_order=act_order, block_size=64 if group else 40)
    calls = []
    real = gptq_native.run_columns
    monkeypatch.setattr(gptq_native, "run_columns", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = gptq_weight(w, H, spec, opts)
    assert calls, "the native loop was not used"
    monkeypatch.setattr(gptq_native, "available", lambda: False)
    slow = gptq_weight(w, H, spec, opts)
    _assert_same(fast, slow)
    _assert_same(fast, reference_gptq(w, H, spec, opts))



def test_gptq_native_loop_falls_back_without_a_compiler_or_when_off(monkeypatch):
    """No compiler, a failing build, or FLOATLAB_NATIVE=0: available() is False and GPTQ takes its
    Python loop (the bits are tested equal above)."""
    from floatlab.kernels import native
    from floatlab.ptq import gptq_native

    monkeypatch.setattr(gptq_native, "_state", {})
    monkeypatch.setattr(native, "compiler", lambda: None)
    assert gptq_native.available() is False
    monkeypatch.setattr(gptq_native, "_state", {})
    monkeypatch.setattr(native, "compiler", lambda: "/nonexistent/c++")
    monkeypatch.setattr(native, "library_path", lambda *a, **k: (_ for _ in ()).throw(OSError("no such compiler")))
    with pytest.warns(RuntimeWarning, match="Python loop instead"):
        assert gptq_native.available() is False
    monkeypatch.setattr(gptq_native, "_state", {})
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert gptq_native.available() is False
    w, H = _layer()
    spec = QuantSpec("int4", group_size=32)
    _assert_same(gptq_weight(w, H, spec, GPTQOptions(block_size=64)), reference_gptq(w, H, spec, GPTQOptions(block_size=64)))
