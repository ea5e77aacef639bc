"""CPU reference quantization: float32 rows -> GGUF block bytes for every qprof type."""

from __future__ import annotations

import numpy as np

from qprof.errors import QprofError, UnsupportedError
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.quantize_kquants import KQUANT_QUANTIZERS
from qprof.quant.quantize_legacy import LEGACY_QUANTIZERS
from qprof.quant.traits import QuantTraits, traits

_QUANTIZERS = {**LEGACY_QUANTIZERS, **KQUANT_QUANTIZERS}
# No quantized type can store a magnitude of 2^31 (Q6_K, the widest, tops out near 2.7e8), and
# beyond it the float32 fits would overflow into NaN; refuse such input before fitting.
MAX_QUANTIZABLE = 2.0**31
# Values per vectorized pass: bounds temporaries (~20 float32 arrays of this size) near the caches.
CHUNK_VALUES = 1 << 17


def _bf16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bytes with round-to-nearest-even on the dropped half (ggml's conversion)."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).view(np.uint8)


def _quantize_float(x: np.ndarray, t: QuantTraits) -> np.ndarray:
    if t.name == "F32":
        out = x.view(np.uint8)
    elif t.name == "F16":
        if np.abs(x).max(initial=0) > np.finfo(np.float16).max:
            raise QprofError("values exceed the F16 range (65504); keep this tensor in F32 or BF16")
        out = x.astype(np.float16).view(np.uint8)
    else:
        out = _bf16_bytes(x)
    return out.reshape(x.shape[0], -1)


def _check_input(x: np.ndarray, t: QuantTraits) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise QprofError(f"quantize needs a 2-D (rows, cols) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise QprofError(f"quantize needs numeric input, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] % t.block_values:
        raise UnsupportedError(
            f"{t.name} needs rows that are a multiple of {t.block_values} values, got rows of {x.shape[1]}"
        )
    if not np.isfinite(x).all():
        raise QprofError(f"cannot quantize to {t.name}: input has NaN or infinite values")
    if t.family != "float" and x.size and np.abs(x).max() >= MAX_QUANTIZABLE:
        raise _too_large(t)
    return x


def _too_large(t: QuantTraits) -> QprofError:
    return QprofError(f"cannot quantize to {t.name}: values too large for its float16 block scales; keep F32")


def _check_scales(out: np.ndarray, t: QuantTraits) -> None:
    """A float16 scale that overflowed would decode to inf/NaN: refuse instead of writing it."""
    for off in FP16_FIELDS[t.name]:
        scale = np.ascontiguousarray(out[:, off : off + 2]).view(np.float16)
        if not np.isfinite(scale).all():
            raise _too_large(t)


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize float rows x (rows, cols) to type `qtype`; returns uint8 bytes (rows, row_bytes).

    Raises UnsupportedError when cols is not a multiple of the type's block size and
    QprofError on NaN/inf input or values whose block scales would overflow float16.
    """
    t = traits(qtype)
    x = _check_input(x, t)
    rows, cols = x.shape
    if t.family == "float":
        return _quantize_float(x, t)
    fn = _QUANTIZERS[t.name]
    blocks = x.reshape(-1, t.block_values)
    out = np.empty((len(blocks), t.block_bytes), dtype=np.uint8)
    step = max(1, CHUNK_VALUES // t.block_values)
    # Overflow can only come from values too large for a float16 scale; _check_scales reports it.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(blocks), step):
            out[start : start + step] = fn(blocks[start : start + step])
    _check_scales(out, t)
    return out.reshape(rows, t.row_bytes(cols))
