"""The native HiFloat4 scale pass (kernels/native.py) equals the torch kernel and the plain path.

Inputs are built to hit the pass's decisions head-on: small multiples of powers of two make the
float32 products ``Mb * r`` and ``Mc * r`` land exactly on the thresholds 4 and 2, and the
E6M2 rounding of ``sf`` exactly on its ties; subnormals, zeros, values beyond the scale's clamp
and non-finite values cover the edges. The build is exercised for real (a C++ compiler is part
of what torch.compile needs on CPU); the fallback when the build fails is tested too.
"""

from __future__ import annotations

import pytest
import torch

import floatlab
from floatlab.kernels import block as fast_block
from floatlab.kernels import native
from floatlab.rounding import RoundingMode as M
from test_fast import assert_same_bits

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")


def _stress_blocks(nb: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 33, (nb, 64), generator=g).float()            # 0..32: exact products
    e = torch.randint(-150, 110, (nb, 1), generator=g).float()          # subnormal .. huge blocks
    x = k * torch.exp2(e + torch.randint(-3, 1, (nb, 64), generator=g).float())
    x = torch.where(torch.rand(nb, 64, generator=g) < 0.5, -x, x)
    noisy = torch.rand(nb, 1, generator=g) < 0.3                        # and some full-precision blocks
    x = torch.where(noisy, torch.randn(nb, 64, generator=g) * torch.exp2(e / 4), x)
    x[0] = 0.0
    x[1] = 1.0                                                            # FORMATS.md worked example
    x[2, 5] = float("nan")
    x[3, 63] = -float("inf")
    x[4, :4] = float("inf")                                               # a whole subgroup
    x[5] = 3.0e38                                                         # sf clamps at 1.5 * 2^15
    x[6] = torch.finfo(torch.float32).tiny / 8                            # subnormal block
    return x


def _torch_scales(xb: torch.Tensor):
    plan = fast_block.block_plan(floatlab.get_format("hif4"), M.RNA, torch.float32, None, None)
    bad, r, s1, shift = fast_block.hif4_scales(xb, plan)
    return bad, r, s1, fast_block.hif4_spread(shift)


@pytest.mark.parametrize("nb,seed", [(700, 0), (9000, 1)])     # one thread; several threads
def test_native_scales_equal_the_torch_kernel(nb, seed):
    xb = _stress_blocks(nb, seed)
    got = native.hif4_scales(xb)
    assert got is not None, "the native library did not build"
    want = _torch_scales(xb)
    assert torch.equal(got[0], want[0])
    ok = ~want[0].view(-1)          # poisoned blocks become NaN; their scales are never used
    assert ok.sum() > nb * 0.9
    for name, a, b in zip(("r", "s1", "shift"), got[1:], want[1:]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a[ok], b[ok]), f"{name}: {int((a[ok] != b[ok]).sum())} differ"


def test_thresholds_are_hit_exactly():
    """The stress input does reach the equality cases (else the test above proves little)."""
    xb = _stress_blocks(700, 0)
    bad, r, _, _ = _torch_scales(xb)
    a = (xb.abs().view(-1, 16, 4).amax(dim=2) * r)[~bad.view(-1)]
    assert int((a == 4).sum()) > 20 and int((a == 2).sum()) > 20


@pytest.mark.parametrize("mode", ["rna", "rne", "rtz", "sr"])
def test_quantize_through_native_equals_plain(mode):
    xb = _stress_blocks(3000, 2).view(-1, 256)
    gens = [torch.Generator().manual_seed(5) if mode == "sr" else None for _ in range(2)]
    fast_y = floatlab.quantize(xb, "hif4", rounding=mode, generator=gens[0], backend="compiled")
    plain_y = floatlab.quantize(xb, "hif4", rounding=mode, generator=gens[1], backend="plain")
    assert_same_bits(fast_y, plain_y, f"hif4 {mode} through the native scales")


def test_disabled_or_failed_build_falls_back(monkeypatch, tmp_path):
    xb = _stress_blocks(64, 3)
    want = floatlab.quantize(xb, "hif4", backend="plain")
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert native.hif4_scales(xb) is None
    assert_same_bits(floatlab.quantize(xb, "hif4", backend="compiled"), want, "FLOATLAB_NATIVE=0")
    monkeypatch.setenv("FLOATLAB_NATIVE", "1")
    monkeypatch.setenv("FLOATLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")                 # a "compiler" that always fails
    monkeypatch.setattr(native, "_state", {})
    with pytest.warns(RuntimeWarning, match="native kernels could not be built"):
        assert native.hif4_scales(xb) is None
    assert native.hif4_scales(xb) is None              # one warning, then quietly the fallback
    assert_same_bits(floatlab.quantize(xb, "hif4", backend="compiled"), want, "failed build")
    assert not list(tmp_path.rglob("*.so"))


def test_only_contiguous_float32_cpu_blocks_qualify():
    xb = _stress_blocks(16, 4)
    assert native.hif4_scales(xb.double()) is None
    assert native.hif4_scales(xb.t().contiguous().t()) is None
    assert native.hif4_scales(xb[:, :32]) is None
    assert native.hif4_scales(xb) is not None


@pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler")
def test_built_library_gets_the_umask_mode(monkeypatch, tmp_path):
    """The cached .so is readable and executable by everyone the umask allows (0755 under 022),
    as a compiler's own output: not mkstemp's 0600 owner-only mode."""
    import os

    monkeypatch.setenv("FLOATLAB_NATIVE", "1")
    monkeypatch.setenv("FLOATLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    old = os.umask(0o022)
    try:
        assert native.library() is not None
    finally:
        os.umask(old)
    built = list(tmp_path.rglob("*.so"))
    assert len(built) == 1 and oct(built[0].stat().st_mode & 0o777) == oct(0o755)
    assert [p.name for p in built[0].parent.iterdir()] == [built[0].name]     # no temporary left
