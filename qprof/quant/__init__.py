"""CPU reference quantization: the traits table, dequantize/quantize for every type, and recipes."""

from qprof.quant.dequant import dequantize, dequantize_torch
from qprof.quant.quantize import quantize
from qprof.quant.recipe import RECIPES, Recipe, get_recipe
from qprof.quant.traits import ALL_TYPES, FLOAT_TYPES, QUANTIZED_TYPES, QuantTraits, traits

__all__ = [
    "ALL_TYPES",
    "FLOAT_TYPES",
    "QUANTIZED_TYPES",
    "RECIPES",
    "QuantTraits",
    "Recipe",
    "dequantize",
    "dequantize_torch",
    "get_recipe",
    "quantize",
    "traits",
]
