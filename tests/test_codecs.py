"""Weight codecs: exact bits, bit-exact encode/decode and save/load, the straight-through
gradients, the frozen column grid, the salient-channel mask, and clear errors."""

import math

import pytest
import torch

import floatlab
from floatlab.codecs import AffineInt, Binary, CodecError, FormatCodec, Masked, Ternary, codec_from_dict, get_codec

NAMES = ["int2_asym", "int3_asym_g32", "int4_asym_g48", "int8_asym", "binary", "binary_mean", "binary_mean_cf",
         "binary_g32", "binary_mean_g48", "ternary", "ternary_g32", "ptq161", "binary_mean_salient20wmag",
         "binary_salient10rand_int3_asym_g16", "ternary_salient25", "int2_asym_g32_salient5"]


def _weight(seed=0, shape=(12, 200)):
    """Rows of very different magnitudes, Student-t outliers, exact zeros and a zero row."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        w = torch.distributions.StudentT(3.0).sample(shape) * torch.logspace(-4, 2, shape[0])[:, None]
    w.view(-1)[::37] = 0
    w[3] = 0
    return w


def _stats(cols, seed=1):
    return {"act_max": torch.rand(cols, generator=torch.Generator().manual_seed(seed)) * 10}


def _codec(name):
    return get_codec(name)


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_encode_is_quantize_and_save_load_is_exact(name, tmp_path):
    codec = _codec(name)
    w = _weight()
    p = codec.fit(w, _stats(w.shape[1]), torch.Generator().manual_seed(2))
    q = codec.quantize(w, p)
    qt = codec.encode(w, p)
    assert qt.format == codec and qt.shape == tuple(w.shape) and qt.is_codec
    assert torch.equal(qt.dequantize(), q)
    assert torch.isfinite(q).all()
    # the codes list what was stored, and the values come back from them alone
    assert torch.equal(codec.values_of(qt.codes, codec.unpack(qt)[1]), q)
    floatlab.save(tmp_path / "w.safetensors", {"w": qt, "plain": w})
    back = floatlab.load(tmp_path / "w.safetensors")
    assert back["w"].format == codec and torch.equal(back["plain"], w)
    assert torch.equal(back["w"].data, qt.data) and back["w"].meta == qt.meta
    assert back["w"].scales.keys() == qt.scales.keys()
    for k, v in qt.scales.items():
        assert back["w"].scales[k].dtype == v.dtype and torch.equal(back["w"].scales[k], v), k
    assert torch.equal(back["w"].dequantize(), q)
    assert codec_from_dict(codec.to_dict()) == codec and get_codec(codec.name) == codec


@pytest.mark.parametrize("name", NAMES)
def test_bits_count_every_stored_tensor(name):
    """bits() equals the packed storage up to the byte padding of each packed stream."""
    codec = _codec(name)
    w = _weight(3, (10, 96))
    qt = codec.encode(w, stats=_stats(96), generator=torch.Generator().manual_seed(0))
    streams = 1 + sum(1 for t in qt.scales.values() if t.dtype == torch.uint8) + isinstance(codec, Masked)
    assert 0 <= qt.nbytes * 8 - codec.bits(w.shape) < 8 * streams
    assert qt.bits_per_value == codec.bits(w.shape) / w.numel()


def test_bits_of_hand_computed_cases():
    # int3, groups of 128 on (4, 256): 3-bit codes, per (row, group) an fp16 scale and a 3-bit zero
    assert get_codec("int3_asym_g128").bits((4, 256)) == 4 * 256 * 3 + 4 * 2 * (16 + 3) == 3224
    assert get_codec("int3_asym_g128").bits_per_weight((4, 256)) == 3.1484375
    # padding: 200 columns in groups of 64 -> 4 groups per row, codes only for real columns
    assert get_codec("int2_asym_g64").bits((2, 200)) == 2 * 200 * 2 + 2 * 4 * 18
    # binary around the mean with a column factor on (3, 10): signs, fp16 scale + mean per row, fp16 per column
    assert get_codec("binary_mean_cf").bits((3, 10)) == 30 + 3 * 32 + 10 * 16 == 286
    assert get_codec("ternary").bits((3, 10)) == 60 + 3 * 16
    # PTQ1.61 on (4, 10): 2 salient columns (20%): mask bitmap 10 bits; binary part (4, 8):
    # 32 signs + 4 x (scale + mean) fp16 + 8 column factors fp16; 4-bit part (4, 2): 8 codes x 4 bits
    # + 4 x (fp16 scale + 4-bit zero)
    assert get_codec("ptq161").bits((4, 10)) == 10 + (32 + 4 * 32 + 8 * 16) + (8 * 4 + 4 * 20) == 410
    # floatlab formats: MXFP4 4.25; NVFP4 4.5 plus its float32 tensor scale; int4 per row: float32 scales
    assert FormatCodec("mxfp4").bits((2, 64)) == 4 * (32 * 4 + 8) == 2 * 64 * 4.25
    assert FormatCodec("nvfp4").bits((2, 64)) == 8 * (16 * 4 + 8) + 32
    assert FormatCodec("mxfp4").bits((2, 40)) == 2 * 2 * (32 * 4 + 8)          # padded blocks are stored
    assert FormatCodec("int4").bits((3, 16)) == 48 * 4 + 3 * 32
    assert FormatCodec("bf16").bits((3, 16)) == 48 * 16


def test_affine_matches_the_omniquant_formula():
    """q = clamp(round(w/s) + z, 0, 2^b - 1), s = (max - min) / (2^b - 1) rounded to fp16, z = round(-min/s)."""
    w = _weight(4, (6, 64))
    codec = AffineInt(3, 32)
    wg = w.reshape(6, 2, 32)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    s = ((hi - lo) / 7).half().float()
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo / s).clamp(0, 7)
    q = torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, 7)
    expect = ((q - z[..., None]) * s[..., None]).reshape(6, 64)
    assert torch.equal(codec.quantize(w), expect)


def test_binary_and_ternary_match_their_definitions():
    w = _weight(5, (5, 40))
    m = w.mean(1, keepdim=True).half().float()
    s = (w - m).abs().mean(1, keepdim=True).half().float()
    b = torch.where(w - m >= 0, 1.0, -1.0)
    assert torch.equal(Binary(mean=True).quantize(w), b * s + m)
    a = w.abs()
    delta = 0.7 * a.mean(1, keepdim=True)
    t = torch.sign(w) * (a > delta)
    scale = ((a * (a > delta)).sum(1, keepdim=True) / (a > delta).sum(1, keepdim=True).clamp(min=1)).half().float()
    assert torch.equal(Ternary().quantize(w), t * scale)


def test_straight_through_gradients_and_scale_gradient():
    """d w_q / d w: identity (ste), zero where the clamp acts (clipped); d w_q / d s: autograd of
    (q - z) s with round's derivative taken as 1 (LSQ's scale gradient)."""
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    codec = AffineInt(2)
    p = codec.fit(w)
    s = (p["scale"] * 0.5).requires_grad_(True)       # a clipped range: some values fall outside
    x = w.clone().requires_grad_(True)
    y = codec.quantize(x, {"scale": s, "zero": p["zero"]}, grad="clipped")
    g = torch.randn_like(y)
    y.backward(g)
    r = torch.round(w / s.detach()) + p["zero"]
    inside = (r >= 0) & (r <= 3)
    assert 0 < int(inside.sum()) < inside.numel()
    assert torch.equal(x.grad == 0, ~inside | (g == 0))          # (1/s) * s: equal up to rounding
    assert torch.allclose(x.grad, torch.where(inside, g, torch.zeros_like(g)), rtol=1e-6, atol=0)
    q = r.clamp(0, 3)
    ds = torch.where(inside, (q - p["zero"]) - w / s.detach(), q - p["zero"])
    assert torch.allclose(s.grad, (g * ds).sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    x2 = w.clone().requires_grad_(True)
    codec.quantize(x2, p, grad="ste").backward(g)
    assert torch.allclose(x2.grad, g, rtol=1e-6, atol=0)
    x3 = w.clone().requires_grad_(True)
    assert not codec.quantize(x3, p, grad="none").requires_grad


@pytest.mark.parametrize("name", ["int3_asym", "binary_mean_cf", "ternary", "ptq161", "binary_salient10rand"])
def test_column_grid_reproduces_the_codec(name):
    codec = _codec(name)
    w = _weight(6, (8, 50))
    p = codec.fit(w, _stats(50), torch.Generator().manual_seed(0))
    grid = codec.frozen_grid(p)
    cols = [grid.round(w[:, j], j) for j in range(50)]
    assert torch.equal(torch.stack([c for c, _ in cols], 1), codec.codes_of(w, p))
    assert torch.equal(torch.stack([v for _, v in cols], 1), codec.quantize(w, p))


def test_mask_picks_the_channels_with_the_largest_activation():
    w = _weight(7, (6, 30))
    act = torch.ones(30)
    chosen = [2, 11, 17, 29, 5, 23]                    # 20% of 30 = 6 channels
    act[chosen] = torch.tensor([9.0, 8.0, 7.0, 6.5, 5.0, 4.0])
    codec = get_codec("binary_mean_salient20")
    mask = codec.fit(w, {"act_max": act})["mask"]
    assert sorted(torch.nonzero(mask).reshape(-1).tolist()) == sorted(chosen)
    qt = codec.encode(w, stats={"act_max": act})
    assert torch.equal(codec.unpack(qt)[1]["mask"], mask)
    # salient columns are stored in 4 bits: far closer than the binary ones
    err = (qt.dequantize() - w).abs()
    assert err[:, mask].mean() < err[:, ~mask].mean() / 3
    wmag = get_codec("binary_mean_salient20wmag").fit(w)["mask"]
    assert torch.equal(wmag, torch.zeros(30, dtype=torch.bool).index_fill(0, w.abs().mean(0).topk(6).indices, True))


def test_random_mask_is_seeded():
    w = _weight(8, (4, 50))
    codec = get_codec("binary_salient20rand")
    a = codec.fit(w, generator=torch.Generator().manual_seed(3))["mask"]
    b = codec.fit(w, generator=torch.Generator().manual_seed(3))["mask"]
    c = codec.fit(w, generator=torch.Generator().manual_seed(4))["mask"]
    assert torch.equal(a, b) and not torch.equal(a, c) and int(a.sum()) == 10


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, 1.5, -0.2, float("nan")])
def test_salient_fraction_outside_0_1_is_refused(bad):
    with pytest.raises(CodecError, match=r"salient fraction must be in \(0, 1\)"):
        Masked(Binary(), fraction=bad)


@pytest.mark.parametrize("name", ["binary_salient0", "binary_salient100", "binary_salient150"])
def test_salient_share_in_a_name_outside_0_100_is_refused(name):
    from floatlab.ptq.quantizer import QuantSpec
    with pytest.raises(ValueError, match="strictly between 0 and 100"):
        QuantSpec(name)


def test_a_group_that_does_not_divide_is_refused_with_padding_off():
    with pytest.raises(CodecError, match=r"group 48 does not divide in_features 100 and padding is off"):
        AffineInt(3, 48, pad=False).encode(torch.randn(4, 100))
    assert AffineInt(3, 48).bits((4, 100)) == 4 * 100 * 3 + 4 * 3 * 19       # padding on: 3 groups


def test_act_max_mask_without_statistics_is_a_clear_error():
    with pytest.raises(CodecError, match="needs calibration statistics"):
        get_codec("ptq161").encode(torch.randn(4, 20))


def test_bad_weights_and_names():
    with pytest.raises(CodecError, match="non-finite"):
        AffineInt(4).encode(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(CodecError, match="2D weights"):
        Binary().encode(torch.randn(3, 4, 5))
    with pytest.raises(CodecError, match="2..8 bits"):
        get_codec("int9_asym")
    assert get_codec("int4") is None and get_codec("mxfp4") is None
    with pytest.raises(CodecError, match="not a codec name"):
        get_codec("bogus_salient20")
    with pytest.raises(CodecError, match="unknown codec kind"):
        codec_from_dict({"codec": "nope"})
    with pytest.raises(CodecError, match="malformed"):
        codec_from_dict({"codec": "affine", "nbits": 3, "evil": 1})


def test_quantspec_accepts_codec_names_for_weights_only():
    from floatlab.ptq.quantizer import QuantSpec, fake_quant
    spec = QuantSpec("int3_asym_g32")
    assert spec.is_codec and not spec.is_block and spec.codec == AffineInt(3, 32)
    w = _weight(9, (4, 64))
    assert torch.equal(fake_quant(w, spec, "weight"), AffineInt(3, 32).quantize(w))
    with pytest.raises(ValueError, match="weight codec; activations take floatlab formats"):
        fake_quant(w, spec, "act")
    with pytest.raises(ValueError, match="group_size does not apply"):
        QuantSpec("int3_asym", group_size=32)
    with pytest.raises(ValueError, match="Weight codecs: int"):
        QuantSpec("int3_asymm")
    assert QuantSpec("int4").codec == FormatCodec("int4")


@pytest.mark.parametrize("fmt", ["int4", "e4m3", "hif8", "bf16", "mxfp4", "nvfp4", "hif4"])
def test_format_codec_is_the_ptq_convention(fmt):
    from floatlab.ptq.quantizer import QuantSpec, fake_quant
    from floatlab.ptq.weights import rtn_weight
    w = _weight(10, (8, 128))
    codec = FormatCodec(fmt)
    qt = codec.encode(w)
    assert torch.equal(qt.dequantize(), fake_quant(w, QuantSpec(fmt), "weight"))
    assert torch.equal(qt.dequantize(), rtn_weight(w, QuantSpec(fmt)).dequantize())
    assert math.isclose(qt.bits_per_value, codec.bits(w.shape) / w.numel())
