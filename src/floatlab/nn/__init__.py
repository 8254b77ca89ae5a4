"""Training with emulated low-precision GEMMs.

>>> import torch, floatlab.nn as fnn
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
>>> model = fnn.quantize_model(model, "mxfp8")      # swaps nn.Linear for QLinear (nn.Conv2d for QConv2d)
>>> model(torch.randn(4, 64)).shape
torch.Size([4, 8])
>>> print(model.floatlab_quantization)              # what was quantized, what was kept and why
recipe 'mxfp8' quantized 2 of 2 layer(s) with GEMM weights (100% of their weights)
"""

from floatlab.nn.functional import ConvGeometry, QuantState, qconv, qgemm, qlinear, qmatmul
from floatlab.nn.hadamard import hadamard_matrix, random_hadamard, rht
from floatlab.nn.lowbit import BinaryWeight, TernaryWeight, binarize, ternarize
from floatlab.nn.modules import QConv1d, QConv2d, QLinear
from floatlab.nn.optim import LowPrecisionOptimizer
from floatlab.nn.patch import QuantizationReport, quantization_report, quantize_model, quantized_layers
from floatlab.nn.recipe import (BlockAxis, Gemm, GemmSpec, LinearSpec, Recipe, Rule, Scaling,
                                TensorSpec)
from floatlab.nn.recipes import RECIPES, get_recipe, list_recipes

__all__ = ["BlockAxis", "Gemm", "GemmSpec", "LinearSpec", "Recipe", "Rule", "Scaling", "TensorSpec",
           "QuantState", "qgemm", "qlinear", "qmatmul", "qconv", "ConvGeometry", "QLinear",
           "QConv1d", "QConv2d", "BinaryWeight", "TernaryWeight", "binarize", "ternarize",
           "quantize_model",
           "quantized_layers", "QuantizationReport", "quantization_report", "hadamard_matrix",
           "random_hadamard", "rht", "RECIPES", "get_recipe", "list_recipes", "LowPrecisionOptimizer"]
