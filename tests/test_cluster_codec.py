"""The FineQ-style cluster codec (floatlab.codecs.cluster): layouts, packed records, exact bits."""

import pytest
import torch

import floatlab
from floatlab.codecs import ClusterCodec, CodecError, codec_from_dict, fineq, get_codec

NAMES = ["fineq", "fineq_g96", "cluster_222-330", "cluster_2222-3310-1033", "cluster_1-3"]


def _weight(seed=0, shape=(6, 193)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[:, 5] *= 8                                   # an outlier column
    return w


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_packed_storage_is_exact(name, tmp_path):
    codec = get_codec(name)
    w = _weight()
    p = codec.fit(w)
    q = codec.quantize(w, p)
    qt = codec.encode(w, p)
    assert qt.format == codec and qt.shape == tuple(w.shape)
    codes, back = codec.unpack(qt)
    assert torch.equal(codes, codec.codes_of(w, p))
    assert torch.equal(back["layout"], p["layout"]) and torch.equal(back["scale"], p["scale"])
    assert torch.equal(qt.dequantize(), q)
    floatlab.save(tmp_path / "w.safetensors", {"w": qt})
    loaded = floatlab.load(tmp_path / "w.safetensors")["w"]
    assert loaded.format == codec and torch.equal(loaded.data, qt.data) and torch.equal(loaded.dequantize(), q)
    assert codec_from_dict(codec.to_dict()) == codec and get_codec(codec.name) == codec
    # the packed stream holds exactly bits() of records plus the scales' bytes (up to 7 pad bits)
    rec = qt.data.numel() * 8
    assert 0 <= rec - (codec.bits(w.shape) - qt.scales["scale"].numel() * 16) < 8


def test_bits_match_a_hand_count():
    # fineq: 3 weights per cluster, 2-bit index + 6 data bits = 8 bits per cluster, fp16 scale per row
    assert fineq().bits((4, 9)) == 4 * 3 * 8 + 4 * 16
    assert fineq().bits((4, 10)) == 4 * 4 * 8 + 4 * 16          # the cut last cluster is a whole record
    assert fineq(96).bits((2, 192)) == 2 * 64 * 8 + 2 * 2 * 16
    # cluster_222-330: 1-bit index + 6 data bits = 7 bits per 3 weights: 2.333... per weight
    c = get_codec("cluster_222-330")
    assert c.index_bits == 1 and c.record_bits == 7
    assert c.bits((2, 7)) == 2 * 3 * 7 + 2 * 16
    assert c.bits_per_weight((1, 3 * 1000)) == pytest.approx(7 / 3 + 16 / 3000)
    # layouts with different data sums are padded to the widest: (2,2,2,2)=8, (3,3,1,0)=7, (1,0,3,3)=7
    c = get_codec("cluster_2222-3310-1033")
    assert (c.index_bits, c.data_bits, c.record_bits) == (2, 8, 10)


def test_one_cluster_by_hand():
    """Row [0.1, -0.2, 1.0]: scale 1, step 1/4. 2-bit levels +-1/8, +-3/8; 3-bit +-1/8 .. +-7/8.
    Squared errors: (2,2,2) 0.396875, (3,3,0) 1.00625, (3,0,3) 0.05625, (0,3,3) 0.03125: layout 3."""
    codec = fineq()
    w = torch.tensor([[0.1, -0.2, 1.0]])
    p = codec.fit(w)
    assert p["layout"].tolist() == [[3]] and p["scale"].tolist() == [[1.0]]
    assert codec.quantize(w, p).tolist() == [[0.0, -0.125, 0.875]]
    assert codec.codes_of(w, p).tolist() == [[0, 3, 7]]
    # record, LSB first: index 3 -> 1,1; position 1 code 3 -> 1,1,0; position 2 code 7 -> 1,1,1
    assert codec.encode(w, p).data.tolist() == [0b11101111]


def test_outliers_get_the_wide_layouts():
    codec = fineq()
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(3)).clamp(-3, 3)
    w[:, 5] = 10.0                                 # beyond the 2-bit reach (5): it needs 3 bits
    p = codec.fit(w)
    lay = p["layout"]
    assert set(lay[:, 5 // 3].tolist()) <= {2, 3}                # (3,0,3) or (0,3,3): position 2 wide
    # the rule is the least squared error: a (3,3,0)-like layout also wins where a weight is nearer 0
    # than to the grid's smallest level (the mid-rise grid has no zero), so it is checked, not assumed
    v = codec.quantize(w, p).reshape(16, 32, 3)
    for k in range(4):
        alt = dict(p, layout=torch.full_like(lay, k))
        assert (((v - w.reshape(16, 32, 3)) ** 2).sum(-1)
                <= ((codec.quantize(w, alt).reshape(16, 32, 3) - w.reshape(16, 32, 3)) ** 2).sum(-1)).all()


def test_beats_plain_2_bit_and_is_close_to_3_bit():
    w = _weight(1, (64, 384))

    def rel(name):
        c = get_codec(name)
        return float(((c.quantize(w) - w) ** 2).sum() / (w ** 2).sum())
    assert rel("fineq") < rel("int2_asym") / 2


@pytest.mark.parametrize("name", ["fineq", "fineq_g96", "cluster_222-330"])
def test_column_grid_reproduces_the_codec(name):
    codec = get_codec(name)
    w = _weight(6, (8, 192))
    p = codec.fit(w)
    grid = codec.frozen_grid(p)
    cols = [grid.round(w[:, j], j) for j in range(192)]
    assert torch.equal(torch.stack([c for c, _ in cols], 1), codec.codes_of(w, p))
    assert torch.equal(torch.stack([v for _, v in cols], 1), codec.quantize(w, p))


def test_gradients_pass_straight_through_and_reach_the_scale():
    codec = fineq()
    w = _weight(2, (4, 30)).requires_grad_(True)
    p = codec.fit(w)
    p["scale"] = p["scale"].clone().requires_grad_(True)
    codec.quantize(w, p).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w)) and p["scale"].grad is not None
    assert not codec.quantize(w, p, grad="none").requires_grad


def test_ptq_takes_the_codec_by_name():
    from floatlab.ptq.config import PTQConfig
    from floatlab.ptq.quantizer import QuantSpec
    from floatlab.ptq.sweep import model_bits
    from floatlab.ptq.weights import rtn_weight

    lin = torch.nn.Linear(96, 8)
    spec = QuantSpec("fineq")
    qw = rtn_weight(lin.weight, spec, None, None)
    assert torch.equal(qw.dequantize(), fineq().quantize(lin.weight.detach()))
    assert model_bits({"l": lin}, PTQConfig(weight="fineq")) == (fineq().bits((8, 96)), 8 * 96)


def test_bad_configurations_name_the_problem():
    with pytest.raises(CodecError, match="multiple of the cluster size 3"):
        get_codec("fineq_g128")
    with pytest.raises(CodecError, match="each of the 3 positions"):
        ClusterCodec(3, ((2, 2, 2), (3, 3)))
    with pytest.raises(CodecError, match="same length"):
        get_codec("cluster_222-33")
    with pytest.raises(CodecError, match="index_bits must be an int from 2"):
        ClusterCodec(3, ((2, 2, 2), (3, 3, 0), (0, 3, 3)), index_bits=1)
    with pytest.raises(CodecError, match="padding is off"):
        ClusterCodec(pad=False).encode(torch.randn(2, 10))
    codec = get_codec("cluster_222-330-033")                       # 3 layouts, 2-bit index: code 3 is unused
    qt = codec.encode(torch.randn(1, 3))
    qt.data[0] |= 0b11
    with pytest.raises(CodecError, match="names no layout"):
        codec.decode(qt)


def test_gptq_rounds_on_the_cluster_grid():
    """GPTQ's codec path packs its result and checks it decodes to what it computed; the layouts
    are frozen at fit, so every stored value lies on its cluster's grid."""
    from floatlab.ptq.config import GPTQOptions
    from floatlab.ptq.gptq import gptq_weight
    from floatlab.ptq.quantizer import QuantSpec

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(256, 48, generator=g), torch.randn(8, 48, generator=g)
    for name in ("fineq", "fineq_g24"):
        codec = get_codec(name)
        qw = gptq_weight(w, x.T @ x / 256, QuantSpec(name), GPTQOptions(act_order=True))
        wq = qw.dequantize()
        codes, p = codec.unpack(qw.to_qtensor())
        assert torch.equal(codec.values_of(codes, p), wq)
        assert float(((wq - w) @ x.T).pow(2).mean()) < float(((codec.quantize(w) - w) @ x.T).pow(2).mean())
