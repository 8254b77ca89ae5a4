"""Weight codecs: how a weight matrix becomes stored bits, one notion for floatlab formats,
block formats, low-bit integer grids with zero points, binary and ternary weights and
salient-channel masks (see :mod:`floatlab.codecs.base`).

>>> import torch
>>> from floatlab.codecs import get_codec
>>> codec = get_codec("int3_asym_g128")
>>> w = torch.randn(8, 256)
>>> qt = codec.encode(w)                          # a QTensor whose format is the codec
>>> bool(torch.equal(qt.dequantize(), codec.quantize(w)))
True
>>> codec.bits_per_weight((8, 256))               # 3 + (16 + 3) / 128
3.1484375
"""

from floatlab.codecs.affine import AffineInt
from floatlab.codecs.base import SCALE_DTYPES, CodecError, ColumnGrid, WeightCodec
from floatlab.codecs.binary import Binary, Ternary
from floatlab.codecs.cluster import ClusterCodec, fineq
from floatlab.codecs.format import FormatCodec
from floatlab.codecs.masked import SELECT_RULES, Masked
from floatlab.codecs.names import ALIASES, EXAMPLES, codec_from_dict, get_codec, is_codec_name
from floatlab.formats.serialize import register_codec_loader

register_codec_loader(codec_from_dict)

__all__ = ["WeightCodec", "ColumnGrid", "CodecError", "AffineInt", "Binary", "Ternary", "Masked", "FormatCodec",
           "ClusterCodec", "fineq",
           "get_codec", "codec_from_dict", "is_codec_name", "SCALE_DTYPES", "SELECT_RULES", "ALIASES", "EXAMPLES"]
