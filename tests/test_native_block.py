"""The native block kernel (kernels/native_block.py) equals the plain path bit for bit.

Every block format it takes (mxfp4, nvfp4, hif4 and the other MX formats, nvfp4's 2-D tiles) x
every element mode the block path has (rne, rna, rnz, rtz, rup, rdn, rto, sr exact and with
sr_bits, sr_half; the stochastic ones with a generator: the plain path's own draws) x with and
without ``out=`` (in place included), on blocks built to probe it: element grid points and
their midpoints scaled over the whole float32 range (ties), subnormals, zeros and -0, all-zero
blocks, NaN/Inf (poisoned blocks), huge values up to float32's max, random bit patterns; shapes
that pad partial blocks, other axes, strided inputs and outputs. Without a generator the
stochastic modes hash (seed, index) as the compiled kernel does: the same bits as the eager
kernel, across threads. Other dtypes are refused by ``native`` and served by ``auto``;
FLOATLAB_NATIVE=0 and a failed build fall back with the same bits.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import floatlab
from floatlab.formats.block import block_format
from floatlab.kernels import block as fast_block
from floatlab.kernels import dispatch, native, native_block
from floatlab.rounding import RoundingMode as M
from test_fast import assert_same_bits

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")

NATIVE_FORMATS = ["mxfp4", "nvfp4", "hif4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2",
                  "mxfp6_e2m3", "mxint8", "nvfp4_2d"]
MODES = [(M.RNE, None), (M.RNA, None), (M.RNZ, None), (M.RTZ, None), (M.RUP, None),
         (M.RDN, None), (M.RTO, None), (M.SR, None), (M.SR, 3), (M.SR, 20), (M.SR_HALF, None)]
F32_MAX = torch.finfo(torch.float32).max


def _gen(mode):
    return torch.Generator().manual_seed(7) if mode in (M.SR, M.SR_HALF) else None


def stress_blocks(nb: int, block: int, seed: int) -> torch.Tensor:
    """(nb, block) float32 values (nb >= 10), each row one block of its own kind."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-150, 121, (nb, 1), generator=g).float()
    k = torch.randint(0, 65, (nb, block), generator=g).float() / 8     # grid points, midpoints
    x = k * torch.exp2(s)
    noisy = torch.rand(nb, 1, generator=g) < 0.3
    x = torch.where(noisy, torch.randn(nb, block, generator=g) * torch.exp2(s / 2), x)
    wide = torch.rand(nb, 1, generator=g) < 0.15                      # many binades in a block
    x = torch.where(wide, torch.randn(nb, block, generator=g)
                    * torch.exp2(torch.randint(-149, 100, (nb, block), generator=g).float()), x)
    bits = torch.randint(0, 2 ** 32, (nb, block), generator=g, dtype=torch.int64)
    patterns = (bits - (bits >> 31 << 32)).to(torch.int32).view(torch.float32)
    x = torch.where(torch.rand(nb, 1, generator=g) < 0.1, patterns, x)
    x = torch.where(torch.rand(nb, block, generator=g) < 0.5, -x, x)
    x[0] = 0.0                                                        # all-zero block
    x[1] = -0.0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, -1] = -float("inf")
    x[5] = F32_MAX * torch.linspace(-1, 1, block)                     # huge, and 0 in the middle
    x[6] = 1e-45 * torch.arange(block)                                # subnormal block
    x[7, ::2] = 3.0e38
    x[7, 1::2] = -1e-40                                               # huge beside subnormal
    x[8] = 1.0                                                        # FORMATS.md worked example
    x[9, :4] = -0.0
    return x.contiguous()


@pytest.mark.parametrize("name", NATIVE_FORMATS)
def test_native_plans_exist(name):
    fmt = floatlab.get_format(name)
    for mode, bits in MODES:
        bp = fast_block.block_plan(fmt, mode, torch.float32, bits, _gen(mode))
        assert native_block.plan(bp) is not None, (name, mode, bits)


def _shapes(fmt):
    n = fmt.block_numel
    if len(fmt.block) == 2:
        return [(48, 64), (2, 37, 45)]                                 # whole tiles; padded
    return [(24, 4 * n), (7, 3, 2 * n + 5)]                            # rows; padded 3-D


def _shaped_inputs(fmt):
    """Stress blocks cut to each of :func:`_shapes`'s shapes."""
    for si, shape in enumerate(_shapes(fmt)):
        numel = math.prod(shape)
        base = stress_blocks(-(-numel // fmt.block_numel), fmt.block_numel, si)
        yield base.reshape(-1)[:numel].reshape(shape)


@pytest.mark.parametrize("name", NATIVE_FORMATS)
def test_every_mode_with_and_without_out_equals_plain(name):
    for x in _shaped_inputs(floatlab.get_format(name)):
        shape = tuple(x.shape)
        for mode, bits in MODES:
            what = f"{name} {shape} {mode.value} sr_bits={bits}"
            kw = dict(rounding=mode, sr_bits=bits)
            want = floatlab.quantize(x, name, generator=_gen(mode), backend="plain", **kw)
            got = floatlab.quantize(x, name, generator=_gen(mode), backend="native", **kw)
            assert_same_bits(got, want, what)
            dst = torch.full_like(x, 5.0)
            res = floatlab.quantize(x, name, generator=_gen(mode), backend="native", out=dst, **kw)
            assert res is dst
            assert_same_bits(dst, want, what + " out=")
            y = x.clone()
            assert floatlab.quantize(y, name, generator=_gen(mode), out=y, backend="native", **kw) is y
            assert_same_bits(y, want, what + " out=x")


def test_ties_and_thresholds_of_hif4():
    """test_native's blocks land exactly on HiF4's 4 and 2 thresholds and E6M2 ties."""
    from test_native import _stress_blocks
    x = _stress_blocks(3000, 2).view(-1, 256)
    for mode in (M.RNA, M.RNE, M.RTZ, M.RUP):
        assert_same_bits(floatlab.quantize(x, "hif4", rounding=mode, backend="native"),
                         floatlab.quantize(x, "hif4", rounding=mode, backend="plain"), mode.value)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "hif4", "mxint8", "nvfp4_2d"])
@pytest.mark.parametrize("bits", [None, 5, 32])
def test_hash_draws_equal_the_eager_kernel(name, bits):
    """Without a generator: the compiled kernel's hash of (seed, index in the blocks), the same
    bits as the eager kernel for the same torch.manual_seed, on 2 threads (slices start
    mid-tensor)."""
    fmt = floatlab.get_format(name)
    x = stress_blocks(5000, fmt.block_numel, 3).reshape(-1, 4 * fmt.block_numel)[:, : 4 * fmt.block_numel - 3]
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for mode in (M.SR, M.SR_HALF):
            if mode is M.SR_HALF and bits is not None:
                continue
            torch.manual_seed(11)
            want = floatlab.quantize(x, name, rounding=mode, sr_bits=bits, backend="eager")
            torch.manual_seed(11)
            got = floatlab.quantize(x, name, rounding=mode, sr_bits=bits, backend="native")
            assert_same_bits(got, want, f"{name} {mode.value} {bits}")
    finally:
        torch.set_num_threads(old)


def test_threads_and_large_tensors_equal_plain():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("mxfp4", "nvfp4", "hif4"):
            x = stress_blocks(9216, 64, 5).reshape(-1, 2048)
            want = floatlab.quantize(x, name, backend="plain")
            dst = torch.empty_like(x)
            assert_same_bits(floatlab.quantize(x, name, out=dst), want, f"{name} out=")
            assert_same_bits(floatlab.quantize(x, name), want, name)
            x3 = x[:, :2047 - 15]                          # tensor amax over a partial unit
            assert_same_bits(floatlab.quantize(x3, name), floatlab.quantize(x3, name, backend="plain"),
                             f"{name} partial")
    finally:
        torch.set_num_threads(old)


def test_nvfp4_tensor_scale_edges():
    """An all-zero tensor (s_enc = 1), a tiny one (s_enc saturates at float32's max), NaN/Inf
    blocks beside finite ones (the tensor amax takes their finite values)."""
    cases = [torch.zeros(4, 32), torch.full((4, 32), 1e-37), torch.full((4, 32), -3e-40)]
    x = stress_blocks(64, 16, 9).reshape(-1, 64)
    x[0, 0], x[1, 5] = float("nan"), 1e30
    cases.append(x)
    for i, x in enumerate(cases):
        for name in ("nvfp4", "nvfp4_2d"):
            assert_same_bits(floatlab.quantize(x, name, backend="native"),
                             floatlab.quantize(x, name, backend="plain"), f"{name} case {i}")


def test_axes_strides_and_empty_tensors():
    x = stress_blocks(40, 64, 6).reshape(64, 40)
    for name in ("mxfp4", "nvfp4", "hif4"):
        want0 = floatlab.quantize(x, name, axis=0, backend="plain")
        assert_same_bits(floatlab.quantize(x, name, axis=0, backend="native"), want0, f"{name} axis 0")
        want = floatlab.quantize(x.t(), name, backend="plain")
        assert_same_bits(floatlab.quantize(x.t(), name, backend="native"), want, f"{name} strided x")
        dst = torch.empty(64, 40).t()                                 # non-contiguous out
        assert floatlab.quantize(x.t(), name, backend="native", out=dst) is dst
        assert_same_bits(dst, want, f"{name} strided out")
        for shape in [(0, 64), (3, 0)]:
            t = torch.ones(shape)
            assert floatlab.quantize(t, name, backend="native").shape == shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_refused_by_native_and_served_by_auto(dtype):
    x = stress_blocks(40, 64, 4).reshape(-1, 128).to(dtype)
    for name in ("mxfp4", "nvfp4", "hif4"):
        with pytest.raises(dispatch.FastPathUnsupported, match="native block kernel"):
            floatlab.quantize(x, name, backend="native")
        for mode in (M.RNE, M.RNA, M.RUP):
            dst = torch.empty_like(x)
            floatlab.quantize(x, name, rounding=mode, out=dst)
            assert_same_bits(dst, floatlab.quantize(x, name, rounding=mode, backend="plain"),
                             f"{name} {dtype} {mode.value}")


def test_unsupported_cases_are_refused_and_auto_still_serves_them():
    x = stress_blocks(32, 32, 8).reshape(-1, 64)
    ceil = block_format("e2m1", "e8m0", 32, "ceil")
    for fmt in ("nvfp4_46", ceil, block_format("e2m1", "e4m3", 32)):   # 4/6; CEIL; AMAX by 32
        with pytest.raises(dispatch.FastPathUnsupported):
            floatlab.quantize(x, fmt, backend="native")
        assert_same_bits(floatlab.quantize(x, fmt), floatlab.quantize(x, fmt, backend="plain"),
                         str(fmt))


def test_auto_runs_the_native_kernel(monkeypatch):
    calls = []
    real = native_block.quantize_into
    monkeypatch.setattr(native_block, "quantize_into", lambda *a: calls.append(1) or real(*a))
    x = stress_blocks(16, 64, 6)
    dst = torch.empty_like(x)
    for name in ("mxfp4", "nvfp4", "hif4"):
        floatlab.quantize(x, name, out=dst)
    floatlab.quantize(x, "mxfp4", "sr")
    assert len(calls) == 4


def test_disabled_by_env_falls_back_with_the_same_bits(monkeypatch):
    x = stress_blocks(64, 64, 8).reshape(-1, 128)
    want = {n: floatlab.quantize(x, n, backend="native") for n in ("mxfp4", "nvfp4", "hif4")}
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert not native_block.available()
    for name, w in want.items():
        with pytest.raises(dispatch.FastPathUnsupported):
            floatlab.quantize(x, name, backend="native")
        dst = torch.empty_like(x)
        assert_same_bits(floatlab.quantize(x, name, out=dst), w, f"{name} auto without native")


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOATLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(native_block, "_state", {})
    monkeypatch.setattr(native, "compiler", lambda: "/bin/false")
    x = stress_blocks(32, 64, 9)
    want = floatlab.quantize(x, "mxfp4", backend="plain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = floatlab.quantize(x, "mxfp4")
        b = floatlab.quantize(x, "mxfp4")
    assert sum("native block kernel could not be built" in str(w.message) for w in caught) == 1
    assert_same_bits(a, want, "first")
    assert_same_bits(b, want, "second")
    assert not list(tmp_path.rglob("*.so"))


# ---- encode: codes and scale codes from the same pass (native_block.encode_into) -------------
ENCODED = ["mxfp4", "nvfp4", "hif4", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8", "nvfp4_2d",
           "mxfp6_e3m2", "mxfp6_e2m3"]
INPUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def encodes(monkeypatch):
    """Counts the native block encode calls (so a silent fallback cannot pass for it)."""
    seen = []
    real = native_block.encode_into
    monkeypatch.setattr(native_block, "encode_into", lambda *a, **k: seen.append(1) or real(*a, **k))
    return seen


def _encode_both(x, name, mode=M.RNE, bits=None, **kw):
    kw.update(rounding=mode, sr_bits=bits)
    got = floatlab.encode(x, name, generator=_gen(mode), **kw)
    want = floatlab.encode(x, name, generator=_gen(mode), backend="plain", **kw)
    return got, want


def _finite_for(name, x):
    """HiF4 blocks holding NaN/Inf take the plain pipeline: give HiF4 finite inputs."""
    return torch.nan_to_num(x) if name == "hif4" else x


@pytest.mark.parametrize("name", ENCODED)
def test_encode_every_mode_dtype_and_shape_equals_plain(name, encodes):
    from test_codes import same_qtensor
    for base in _shaped_inputs(floatlab.get_format(name)):
        shape = tuple(base.shape)
        for dtype in INPUT_DTYPES:
            x = _finite_for(name, base.to(dtype))
            for mode, bits in MODES:
                what = f"{name} {shape} {dtype} {mode.value} sr_bits={bits}"
                before = len(encodes)
                got, want = _encode_both(x, name, mode, bits)
                same_qtensor(got, want, what)
                assert len(encodes) == before + 1, f"{what}: the native kernel did not run"


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "hif4", "nvfp4_2d"])
def test_encode_axes_padding_strides_and_empty(name, encodes):
    from test_codes import same_qtensor
    x = _finite_for(name, stress_blocks(40, 64, 6).reshape(64, 40))
    cases = [dict(x=x, axis=0), dict(x=x.t()), dict(x=x[:, :37], pad=True),
             dict(x=x.reshape(4, 16, 40), axis=1)]
    if name == "nvfp4_2d":
        cases = [dict(x=x), dict(x=x[:37, :29], pad=True), dict(x=x.t())]
    for i, kw in enumerate(cases):
        t = kw.pop("x")
        for mode in (M.RNE, M.SR):
            got, want = _encode_both(t, name, mode, **kw)
            same_qtensor(got, want, f"{name} case {i} {mode.value}")
    assert len(encodes) == 2 * len(cases)
    for shape in [(0, 64), (3, 0)]:
        t = torch.ones(shape)
        got, want = _encode_both(t, name)
        assert got.shape == want.shape == shape
        assert torch.equal(floatlab.decode(got), floatlab.decode(want))


def test_encode_poisoned_blocks():
    """MX and AMAX code a block holding NaN/Inf natively (its finite values, the scale's NaN
    code); HiF4 leaves it to the plain pipeline, whose draws then start where they would have."""
    from test_codes import same_qtensor
    x = stress_blocks(96, 64, 2).reshape(-1, 128)          # rows 2-4 hold NaN and +-Inf
    x[20, 7] = float("nan")
    for name in ("mxfp4", "nvfp4", "nvfp4_2d", "mxint8", "mxfp8_e4m3", "mxfp6_e3m2"):
        for mode in (M.RNE, M.RTZ, M.SR):
            got, want = _encode_both(x, name, mode)
            same_qtensor(got, want, f"{name} {mode.value} poisoned")
    for mode in (M.RNA, M.SR, M.SR_HALF):
        got, want = _encode_both(x, "hif4", mode)
        same_qtensor(got, want, f"hif4 {mode.value} poisoned")
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        floatlab.encode(x, "hif4", mode, generator=g1)
        floatlab.encode(x, "hif4", mode, generator=g2, backend="plain")
        assert torch.equal(g1.get_state(), g2.get_state()), "the generator advanced differently"


def test_encode_threads_and_large_tensors(encodes):
    from test_codes import same_qtensor
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = stress_blocks(9216, 64, 5).reshape(-1, 2048)     # two slices per format
        for name in ("mxfp4", "nvfp4", "hif4", "mxfp8_e4m3", "mxfp6_e2m3"):
            t = _finite_for(name, x)
            for mode in (M.RNE, M.SR):
                got, want = _encode_both(t, name, mode)
                same_qtensor(got, want, f"{name} {mode.value} threads")
            got, want = _encode_both(t[:, : 2047 - 63], name, pad=True)
            same_qtensor(got, want, f"{name} padded threads")
    finally:
        torch.set_num_threads(old)
    assert len(encodes) == 15


def test_encode_code_maps_are_checked_against_the_plain_encoder():
    import dataclasses
    from floatlab.formats.hifloat4 import E6M2
    for name, magnitudes in (("e2m1", False), ("e4m3", False), ("e5m2", False), ("e1m2", True),
                             ("e4m3", True)):
        fmt = floatlab.get_format(name)
        cm = native_block._checked_map(fmt, magnitudes)
        assert cm is not None, name
        assert native_block._checked_map(fmt, magnitudes) == cm
        bad = dataclasses.replace(cm, off=cm.off + 1)
        v = fmt.decode(torch.arange(2 ** fmt.bits, dtype=torch.int64))
        v = v[torch.isfinite(v)]
        assert not torch.equal(native_block.map_codes(v, bad), native_block.map_codes(v, cm))
    assert native_block._checked_map(E6M2, True) is not None
    mxint8 = floatlab.get_format("mxint8").element
    cm = native_block._checked_map(mxint8, False)
    assert cm is not None and cm.twos
    assert native_block._checked_map(mxint8, True) is None     # HiF4's sign bit: not an integer's
    # a map that disagrees with the plain encoder anywhere is refused
    real = native_block._code_map_of
    try:
        native_block._code_map_of = lambda f, sign_bit: dataclasses.replace(real(f, sign_bit), sign_bit=0)
        assert native_block._checked_map(floatlab.get_format("e2m1"), False) is None
    finally:
        native_block._code_map_of = real


def test_encode_cases_left_to_other_paths(encodes):
    from test_codes import same_qtensor
    x = stress_blocks(32, 64, 3).reshape(-1, 128)
    torch.manual_seed(2)
    a = floatlab.encode(x, "mxfp4", "sr")                   # no generator: the plain draws
    torch.manual_seed(2)
    same_qtensor(a, floatlab.encode(x, "mxfp4", "sr", backend="plain"), "sr without generator")
    got, want = _encode_both(x, "nvfp4_46")                 # another scale rule
    same_qtensor(got, want, "nvfp4_46")
    got, want = _encode_both(x.double(), "nvfp4")
    same_qtensor(got, want, "float64")
    assert len(encodes) == 0


def test_encode_without_the_library_has_the_same_bits(monkeypatch, encodes):
    from test_codes import same_qtensor
    x = stress_blocks(64, 64, 8).reshape(-1, 128)
    want = {n: floatlab.encode(_finite_for(n, x), n) for n in ("mxfp4", "nvfp4", "hif4")}
    assert len(encodes) == 3
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    for name, w in want.items():
        same_qtensor(floatlab.encode(_finite_for(name, x), name), w, f"{name} without native")
    assert len(encodes) == 3
