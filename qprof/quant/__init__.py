"""CPU reference quantization: the traits table, dequantize/quantize for every type, and recipes."""

from qprof.quant.dequant import dequantize, dequantize_torch
from qprof.quant.traits import ALL_TYPES, FLOAT_TYPES, QUANTIZED_TYPES, QuantTraits, traits

__all__ = [
    "ALL_TYPES",
    "FLOAT_TYPES",
    "QUANTIZED_TYPES",
    "QuantTraits",
    "dequantize",
    "dequantize_torch",
    "traits",
]
