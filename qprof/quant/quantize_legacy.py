"""Legacy 32-value block quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), vectorized over all blocks.

These follow ggml's quantize_row_q*_ref exactly (truncating casts, round-half-away for Q8_0,
float32 arithmetic), so their bytes equal `gguf.quants.quantize`'s, which the tests check.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def fp16_bytes(v: np.ndarray) -> np.ndarray:
    """Per-block float32 values (nb,) -> their float16 bytes (nb, 2); numpy rounds to nearest even like ggml."""
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 (ggml: `id = d ? 1.0f/d : 0.0f`)."""
    return np.divide(F32(1), d, out=np.zeros_like(d), where=d != 0)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(nb, 32) codes < 16 -> 16 bytes: value j in the low nibble of byte j, value j+16 in its high nibble."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def pack_high_bits(q: np.ndarray) -> np.ndarray:
    """(nb, 32) 5-bit codes -> 4 bytes holding bit 4 of value j at bit j (little-endian uint32)."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def abs_max_signed(x: np.ndarray) -> np.ndarray:
    """Per block, the value of largest magnitude with its sign (the first one on ties, as ggml)."""
    idx = np.abs(x).argmax(axis=1)
    return x[np.arange(len(x)), idx]


def _symmetric_codes(x: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0: d = max/-half; codes trunc(x/d + half + 0.5) capped at 2*half-1."""
    d = abs_max_signed(x) / F32(-half)
    inv = reciprocal_or_zero(d)
    q = np.trunc(x * inv[:, None] + F32(half + 0.5))
    return d, np.minimum(q, 2 * half - 1).astype(np.uint8)


def _affine_codes(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1: d = (max-min)/nmax, m = min; codes trunc((x-min)/d + 0.5) capped at nmax."""
    lo = x.min(axis=1)
    d = (x.max(axis=1) - lo) / F32(nmax)
    inv = reciprocal_or_zero(d)
    q = np.trunc((x - lo[:, None]) * inv[:, None] + F32(0.5))
    return d, lo, np.minimum(q, nmax).astype(np.uint8)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _symmetric_codes(x, 8)
    return np.concatenate([fp16_bytes(d), pack_nibbles(q)], axis=1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _affine_codes(x, 15)
    return np.concatenate([fp16_bytes(d), fp16_bytes(m), pack_nibbles(q)], axis=1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _symmetric_codes(x, 16)
    return np.concatenate([fp16_bytes(d), pack_high_bits(q), pack_nibbles(q & 0xF)], axis=1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _affine_codes(x, 31)
    return np.concatenate([fp16_bytes(d), fp16_bytes(m), pack_high_bits(q), pack_nibbles(q & 0xF)], axis=1)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C roundf: nearest integer, halves away from zero (np.rint would round them to even)."""
    a = np.abs(v)
    r = np.floor(a)
    r += (a - r) >= F32(0.5)  # a - floor(a) is exact in float32, so no double rounding
    return np.copysign(r, v)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1) / F32(127)
    q = round_half_away(x * reciprocal_or_zero(d)[:, None])
    return np.concatenate([fp16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)


LEGACY_QUANTIZERS = {
    "Q4_0": quantize_q4_0,
    "Q4_1": quantize_q4_1,
    "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1,
    "Q8_0": quantize_q8_0,
}
