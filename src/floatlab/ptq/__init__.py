"""Post-training quantization of real models: RTN, GPTQ, AWQ/SmoothQuant scaling and Hadamard
rotation, for any floatlab format (the format enters at :func:`fake_quant` only).

>>> from floatlab.models import load_model                          # doctest: +SKIP
>>> from floatlab.ptq import PTQConfig, quantize_model
>>> lm = load_model("minilm")                                        # doctest: +SKIP
>>> quantize_model(lm.model, PTQConfig(weight="hif4", act="hif4"))   # doctest: +SKIP
"""

from floatlab.ptq.apply import quantize_model
from floatlab.ptq.config import GPTQOptions, PTQConfig
from floatlab.ptq.modules import QuantLinear
from floatlab.ptq.quantizer import FrozenGrid, QuantSpec, fake_quant
from floatlab.ptq.weights import QWeight, rtn_weight

__all__ = ["quantize_model", "PTQConfig", "GPTQOptions", "QuantSpec", "fake_quant", "FrozenGrid",
           "QuantLinear", "QWeight", "rtn_weight"]
