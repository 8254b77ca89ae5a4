"""GPTQ's fast column rounding for asymmetric integer codecs gives the bits of the codec's own
frozen-grid rounding (ties, clamping at both ends, -0, zero rows)."""

from __future__ import annotations

import pytest
import torch

from floatlab.codecs.names import get_codec
from floatlab.ptq.gptq import _affine_column


@pytest.mark.parametrize("name", ["int2_asym", "int3_asym", "int4_asym", "int2_asym_g32", "int4_asym_g32"])
def test_fast_column_equals_the_grid(name):
    codec = get_codec(name)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 32, generator=g)
    W[3] = 0.0                                        # a zero row
    W[5] = W[5].abs()                                 # one-signed rows
    W[6] = -W[6].abs()
    grid = codec.frozen_grid(codec.fit(W, None, None))
    fast = _affine_column(codec, grid)
    assert fast is not None
    s = grid.params["scale"][:, 0]
    z = grid.params["zero"][:, 0]
    for j in range(W.shape[1]):
        cols = [W[:, j], W[:, j] * 3.0, -W[:, j], (torch.round(W[:, j] / s) + 0.5) * s,  # ties
                torch.full_like(W[:, j], -0.0), (torch.arange(48.0) - z) * s]
        for col in cols:
            c_ref, v_ref = grid.round(col, j)
            c, v = fast(col)
            assert torch.equal(c.to(torch.int64), c_ref.to(torch.int64))
            assert torch.equal(v.view(torch.int32), v_ref.to(torch.float32).view(torch.int32))
