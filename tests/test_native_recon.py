"""The native kernels of the reconstruction methods' weight steps (floatlab.kernels.native_recon):
forwards bit for bit against the torch expressions, backwards against float64 autograd, on
shapes with and without vector tails, independent of the thread count."""

from __future__ import annotations

import pytest
import torch

from floatlab.kernels import native_recon as nr

pytestmark = pytest.mark.skipif(not nr.available(), reason="no C++ compiler: the native kernel cannot be built")

SHAPES = [(3, 8), (5, 13), (64, 70), (130, 203), (200, 576)]


def _bits(t):
    return t.contiguous().view(torch.int32)


def _threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def test_pack_bits_puts_element_j_in_bit_j_mod_8_of_byte_j_div_8():
    b = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0], [0] * 10 + [1]], dtype=torch.bool)
    got = nr.pack_bits(b)
    assert got.dtype == torch.uint8 and got.shape == (2, 2)
    assert got.tolist() == [[0b1001, 0b11], [0, 0b100]]


def _rank1_case(rows, cols, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(rows, 1, generator=g) * 0.1
    r1 = torch.rand(rows, 1, generator=g) + 0.5
    r2 = torch.rand(cols, generator=g) + 0.5
    c = torch.randn(rows, 1, generator=g) * 0.05
    signs = torch.where(torch.randn(rows, cols, generator=g) >= 0, 1.0, -1.0)
    mask = (torch.rand(cols, generator=g) < 0.3) if masked else None
    wide = torch.randn(rows, cols, generator=g) * mask if masked else None
    grad = torch.randn(rows, cols, generator=g)
    return s, r1, r2, c, signs, mask, wide, grad


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rank1_binary_forward_is_the_torch_expression_bit_for_bit(shape, masked):
    s, r1, r2, c, signs, mask, wide, _ = _rank1_case(*shape, masked)
    ref = r1 * (s * signs + c) * r2
    if masked:
        ref = torch.where(mask, wide, ref)
    mb = nr.pack_bits(mask[None]) if masked else None
    got = nr.rank1_binary_forward(s, r1, r2, c, nr.pack_bits(signs > 0), mb, wide)
    assert torch.equal(_bits(got), _bits(ref))


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rank1_binary_backward_is_autograd_in_float64(shape, masked):
    s, r1, r2, c, signs, mask, wide, grad = _rank1_case(*shape, masked, seed=1)
    S, R1, R2 = (t.double().requires_grad_() for t in (s, r1, r2))
    out = R1 * (S * signs.double() + c.double()) * R2          # float64 autograd
    if masked:
        out = torch.where(mask, wide.double(), out)
    out.backward(grad.double())
    mb = nr.pack_bits(mask[None]) if masked else None
    got = nr.rank1_binary_backward(s, r1, r2, c, nr.pack_bits(signs > 0), mb, grad)
    for a, ref in zip(got, (S.grad, R1.grad, R2.grad)):
        assert a.dtype == torch.float32 and a.shape == ref.shape
        scale = float(ref.abs().max()) + 1e-30
        assert float((a.double() - ref).abs().max()) <= 1e-5 * scale
    if masked:       # nothing flows through the masked columns
        assert torch.equal(got[2][mask], torch.zeros(int(mask.sum())))


def _affine_case(rows, groups, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, groups, g, generator=gen) ** 3 * 0.02
    s = torch.rand(rows, groups, 1, generator=gen) * 0.01 + 1e-3
    z = torch.randint(0, 4, (rows, groups, 1), generator=gen).float()
    grad = torch.randn(rows, groups, g, generator=gen)
    return w, s, z, grad


@pytest.mark.parametrize("shape", [(3, 1, 8), (5, 2, 13), (17, 3, 64), (40, 1, 70), (300, 9, 64)], ids=str)
def test_affine_fake_quant_forward_is_the_torch_expression_bit_for_bit(shape):
    w, s, z, _ = _affine_case(*shape)
    w[0, 0, :3] = torch.tensor([float("nan"), 1e30, -1e30])       # NaN passes, huge values saturate
    qmax = 3.0
    ref = (torch.clamp(torch.round(w / s).clamp(-32768, 32767) + z, 0, qmax) - z) * s
    got = nr.affine_fq_forward(w, s, z, qmax)
    assert torch.equal(_bits(got), _bits(ref))
    # ties go to even, as torch.round: w / s = k + 0.5 exactly
    s1 = torch.ones(1, 1, 1)
    halves = torch.tensor([[[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5]]])
    got = nr.affine_fq_forward(halves, s1, torch.full((1, 1, 1), 8.0), 16.0)
    assert got.flatten().tolist() == [-2.0, -2.0, 0.0, 0.0, 2.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("shape", [(3, 1, 8), (5, 2, 13), (17, 3, 64), (40, 1, 70), (300, 9, 64)], ids=str)
def test_affine_fake_quant_backward_is_autograd_in_float64(shape):
    w, s, z, grad = _affine_case(*shape, seed=2)
    qmax = 3.0
    # the clipped straight-through gradient: qz + s * d(w / s)/ds inside the clamp, qz outside
    x = torch.round(w / s).clamp(-32768, 32767) + z
    inside = (x >= 0) & (x <= qmax)
    qz = (x.clamp(0, qmax) - z).double()
    ref = (grad.double() * (qz - torch.where(inside, w.double() / s.double(), 0.0))).sum(-1, keepdim=True)
    got = nr.affine_fq_backward(w, s, z, qmax, grad)
    assert got.shape == s.shape and got.dtype == torch.float32
    assert float((got.double() - ref).abs().max()) <= 1e-6 * float(ref.abs().max())


def test_gradients_do_not_depend_on_the_thread_count():
    s, r1, r2, c, signs, mask, wide, grad = _rank1_case(1000, 300, True, seed=4)
    args = (s, r1, r2, c, nr.pack_bits(signs > 0), nr.pack_bits(mask[None]), grad)
    one = _threads(1, lambda: nr.rank1_binary_backward(*args))
    two = _threads(2, lambda: nr.rank1_binary_backward(*args))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    w, sa, z, ga = _affine_case(2000, 4, 64, seed=5)
    one = _threads(1, lambda: nr.affine_fq_backward(w, sa, z, 3.0, ga))
    two = _threads(2, lambda: nr.affine_fq_backward(w, sa, z, 3.0, ga))
    assert torch.equal(one, two)


def test_non_contiguous_or_non_cpu_arguments_are_refused():
    w, s, z, _ = _affine_case(4, 2, 8)
    with pytest.raises(ValueError, match="contiguous CPU tensor"):
        nr.affine_fq_forward(w.transpose(0, 1), s, z, 3.0)
    assert not nr.usable(w.transpose(0, 1))
    assert not nr.usable(w.double())
    assert nr.usable(w, s, None)


def test_without_the_kernel_the_methods_take_their_torch_steps(monkeypatch):
    from floatlab.ptq.lwc import AffineFakeQuant
    monkeypatch.setenv("FLOATLAB_NATIVE", "0")
    assert not nr.usable(torch.zeros(1))
    w, s, z, grad = _affine_case(5, 2, 13)
    S = s.clone().requires_grad_()
    out = AffineFakeQuant.apply(w, S, z, 3.0)
    out.backward(grad)
    assert S.grad is not None and torch.isfinite(S.grad).all()
