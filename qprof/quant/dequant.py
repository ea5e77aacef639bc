"""CPU reference dequantization: GGUF block bytes -> float32, whole tensors at once, for every qprof type.

Every type is unpacked into integer codes q (blocks, sub-blocks, values), a per-sub-block step
`ds` and an optional per-sub-block offset, and then decoded as `ds * q (+ offset)` in float32,
the same operations in the same order as ggml's dequantize_row_* (so the result is bit-exact
with `gguf.quants.dequantize`, which the tests use as the oracle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qprof.errors import MalformedModelError, QprofError
from qprof.quant.traits import QuantTraits, traits

if TYPE_CHECKING:
    import torch

    from qprof.model.gguf_file import TensorInfo

# Byte offsets, inside one block, of the float16 scale fields (d, and m / dmin where present).
# Quantizers check these for overflow; tests use them to build valid random blocks.
FP16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}

_SHIFT_NIBBLE = np.array([0, 4], dtype=np.uint8)
_SHIFT_CRUMB = np.array([0, 2, 4, 6], dtype=np.uint8)
_SHIFT_BIT = np.arange(8, dtype=np.uint8)

# A decoded tensor: codes (nb, n_sub, sub_len), step (nb, n_sub, 1), offset (nb, n_sub, 1) or None.
Decoded = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def fp16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 at `offset` of every block, as float32 of shape (nb, 1)."""
    return np.ascontiguousarray(blocks[:, offset : offset + 2]).view(np.float16).astype(np.float32)


def split_bits(b: np.ndarray, shifts: np.ndarray, mask: int) -> np.ndarray:
    """Fields of each byte: out[..., k, :] = (b[..., :] >> shifts[k]) & mask (new axis before the last)."""
    return (b[..., None, :] >> shifts[:, None]) & np.uint8(mask)


def unpack_k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins per block (ggml get_scale_min_k4)."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


def unpack_q3_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K: 12 bytes -> sixteen signed 6-bit scales (stored +32) per block, as int16."""
    low4 = split_bits(s[:, 0:8], _SHIFT_NIBBLE, 0xF).reshape(-1, 16)  # j<8 low nibbles, j>=8 high
    high2 = split_bits(s[:, 8:12], _SHIFT_CRUMB, 0x3).reshape(-1, 16)  # j -> byte j%4, bits 2*(j//4)
    return (low4 | (high2 << 4)).astype(np.int16) - 32


def _sub(a: np.ndarray) -> np.ndarray:
    """Per-sub-block factor (nb, n_sub) -> broadcastable (nb, n_sub, 1)."""
    return a[:, :, None]


def _legacy_nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 codes: value j is the low nibble of byte j, value j+16 its high nibble."""
    return split_bits(qs, _SHIFT_NIBBLE, 0xF).reshape(-1, 32)


def _legacy_high_bits(qh: np.ndarray) -> np.ndarray:
    """4 bytes (little-endian uint32) -> bit j for value j, shifted to bit 4."""
    return split_bits(qh, _SHIFT_BIT, 1).transpose(0, 2, 1).reshape(-1, 32) << 4


def _decode_q4_0(b: np.ndarray) -> Decoded:
    q = _legacy_nibbles(b[:, 2:18]).astype(np.int8) - 8
    return q[:, None, :], fp16_field(b, 0)[:, :, None], None


def _decode_q4_1(b: np.ndarray) -> Decoded:
    q = _legacy_nibbles(b[:, 4:20])
    return q[:, None, :], fp16_field(b, 0)[:, :, None], fp16_field(b, 2)[:, :, None]


def _decode_q5_0(b: np.ndarray) -> Decoded:
    q = (_legacy_nibbles(b[:, 6:22]) | _legacy_high_bits(b[:, 2:6])).astype(np.int8) - 16
    return q[:, None, :], fp16_field(b, 0)[:, :, None], None


def _decode_q5_1(b: np.ndarray) -> Decoded:
    q = _legacy_nibbles(b[:, 8:24]) | _legacy_high_bits(b[:, 4:8])
    return q[:, None, :], fp16_field(b, 0)[:, :, None], fp16_field(b, 2)[:, :, None]


def _decode_q8_0(b: np.ndarray) -> Decoded:
    q = np.ascontiguousarray(b[:, 2:34]).view(np.int8)
    return q[:, None, :], fp16_field(b, 0)[:, :, None], None


def _crumbs_256(qs: np.ndarray) -> np.ndarray:
    """64 bytes -> 256 2-bit codes: 128-value half h, shift k, byte l -> value 128h + 32k + l."""
    return split_bits(qs.reshape(-1, 2, 32), _SHIFT_CRUMB, 0x3).reshape(-1, 256)


def _decode_q2_k(b: np.ndarray) -> Decoded:
    sc = b[:, 0:16]
    q = _crumbs_256(b[:, 16:80]).reshape(-1, 16, 16)
    step = fp16_field(b, 80) * (sc & 0xF).astype(np.float32)
    offset = -(fp16_field(b, 82) * (sc >> 4).astype(np.float32))
    return q, _sub(step), _sub(offset)


def _decode_q3_k(b: np.ndarray) -> Decoded:
    low = _crumbs_256(b[:, 32:96]).astype(np.int8)
    # hmask bit k of byte m is the high bit of value 32k + m; a clear bit means "minus 4".
    high = split_bits(b[:, 0:32], _SHIFT_BIT, 1).reshape(-1, 256).astype(np.int8)
    q = (low - ((1 - high) << 2)).reshape(-1, 16, 16)
    step = fp16_field(b, 108) * unpack_q3_scales(b[:, 96:108]).astype(np.float32)
    return q, _sub(step), None


def _k4_step_offset(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc, mn = unpack_k4_scales(b[:, 4:16])
    step = fp16_field(b, 0) * sc.astype(np.float32)
    offset = -(fp16_field(b, 2) * mn.astype(np.float32))
    return _sub(step), _sub(offset)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 codes in 8 sub-blocks of 32: chunk c low nibbles -> sub 2c, high -> 2c+1."""
    return split_bits(qs.reshape(-1, 4, 32), _SHIFT_NIBBLE, 0xF).reshape(-1, 8, 32)


def _decode_q4_k(b: np.ndarray) -> Decoded:
    step, offset = _k4_step_offset(b)
    return _k_nibbles(b[:, 16:144]), step, offset


def _decode_q5_k(b: np.ndarray) -> Decoded:
    step, offset = _k4_step_offset(b)
    high = split_bits(b[:, 16:48], _SHIFT_BIT, 1)  # bit s of qh[l] -> sub-block s, position l
    return _k_nibbles(b[:, 48:176]) | (high << 4), step, offset


def _decode_q6_k(b: np.ndarray) -> Decoded:
    # Half h (128 values): ql bytes 64h..64h+63 hold value 32(2n+a)+l in nibble n of byte 32a+l,
    # qh bytes 32h..32h+31 hold its top two bits at shift 2k for value 32k+l.
    low = split_bits(b[:, 0:128].reshape(-1, 2, 2, 32), _SHIFT_NIBBLE, 0xF)  # (nb, h, a, n, l)
    low = low.transpose(0, 1, 3, 2, 4).reshape(-1, 256)
    high = split_bits(b[:, 128:192].reshape(-1, 2, 32), _SHIFT_CRUMB, 0x3).reshape(-1, 256)
    q = ((low | (high << 4)).astype(np.int8) - 32).reshape(-1, 16, 16)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    return q, _sub(fp16_field(b, 208) * sc), None


_DECODERS = {
    "Q4_0": _decode_q4_0,
    "Q4_1": _decode_q4_1,
    "Q5_0": _decode_q5_0,
    "Q5_1": _decode_q5_1,
    "Q8_0": _decode_q8_0,
    "Q2_K": _decode_q2_k,
    "Q3_K": _decode_q3_k,
    "Q4_K": _decode_q4_k,
    "Q5_K": _decode_q5_k,
    "Q6_K": _decode_q6_k,
}


def _decode_float(raw: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "F32":
        return raw.view(np.float32).copy()
    if qtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    # BF16 is the top half of a float32.
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _check_size(raw: np.ndarray, t: QuantTraits, shape: tuple[int, ...]) -> None:
    if not shape or any(int(s) < 0 for s in shape):
        raise QprofError(f"cannot dequantize {t.name}: bad shape {tuple(shape)}")
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    want = n_rows * t.row_bytes(int(shape[-1]))
    if raw.size != want:
        raise MalformedModelError(
            f"{t.name} tensor of shape {tuple(shape)} needs {want} bytes, got {raw.size}"
        )


def dequantize(raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode the uint8 bytes of a tensor of type `qtype` into float32 of `shape` (torch order)."""
    t = traits(qtype)
    shape = tuple(int(s) for s in shape)
    raw = np.ascontiguousarray(raw)
    if raw.dtype != np.uint8:
        raise QprofError(f"dequantize needs uint8 bytes, got {raw.dtype}")
    _check_size(raw, t, shape)
    raw = raw.reshape(-1)
    if t.family == "float":
        return _decode_float(raw, t.name).reshape(shape)
    q, step, offset = _DECODERS[t.name](raw.reshape(-1, t.block_bytes))
    out = step * q.astype(np.float32)
    if offset is not None:
        out += offset
    return out.reshape(shape)


def dequantize_torch(tensor_info: TensorInfo) -> torch.Tensor:
    """A TensorInfo's values as a torch float32 CPU tensor of its (torch-order) shape."""
    import torch

    values = dequantize(tensor_info.raw, tensor_info.qtype, tuple(tensor_info.shape))
    return torch.from_numpy(values)
