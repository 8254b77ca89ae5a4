"""floatlab: a laboratory for low-precision number formats in deep learning.

>>> import torch, floatlab
>>> x = torch.randn(4, 64)
>>> y = floatlab.quantize(x, "e4m3")                  # fake-quantize, same dtype and shape
>>> q = floatlab.encode(x, "hif8")                    # packed codes in a QTensor
>>> bool((floatlab.decode(q) == floatlab.quantize(x, "hif8")).all())
True
"""

from floatlab.formats import (BlockFormat, ScaleRule, block_format, FInfo, FloatFormat, HiF8Format, IntFormat, NanStyle, finfo,
                              get_format, list_formats, register_format)
from floatlab.ops.api import decode, encode, quantize
from floatlab.emulation import emulate
from floatlab.rounding import RoundingMode
from floatlab.tensor.io import load, save
from floatlab.tensor.qtensor import QTensor
from floatlab import codecs  # noqa: E402  (registers how saved weight codecs are read back)

__version__ = "0.1.0"

__all__ = ["emulate", "save", "load", "BlockFormat", "ScaleRule", "block_format", "quantize", "encode", "decode", "QTensor", "RoundingMode", "get_format",
           "list_formats", "register_format", "finfo", "FInfo", "FloatFormat", "IntFormat",
           "HiF8Format", "NanStyle", "__version__"]
