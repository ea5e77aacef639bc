"""Dequantization is bit-exact with gguf-py's on random valid blocks of every type and shape."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.model.gguf_file import TensorInfo
from qprof.quant.dequant import FP16_FIELDS, dequantize, dequantize_torch
from qprof.quant.traits import ALL_TYPES, QUANTIZED_TYPES, traits


def random_raw(qtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bytes for a tensor of `shape`, with every float16 scale a finite, moderate value."""
    rng = np.random.default_rng(seed)
    t = traits(qtype)
    n_rows = int(np.prod(shape[:-1]))
    n_cols = shape[-1]
    if t.name == "F32":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float32).view(np.uint8)
    if t.name == "F16":
        return rng.standard_normal((n_rows, n_cols)).astype(np.float16).view(np.uint8)
    raw = rng.integers(0, 256, (n_rows, t.row_bytes(n_cols)), dtype=np.uint8)
    if t.name in FP16_FIELDS:
        blocks = raw.reshape(-1, t.block_bytes)
        for off in FP16_FIELDS[t.name]:
            scales = (rng.standard_normal(len(blocks)) * 0.1).astype(np.float16)
            blocks[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


def gguf_dequantize(raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    out = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    return np.asarray(out, dtype=np.float32).reshape(shape)


def _shapes(qtype: str) -> list[tuple[int, ...]]:
    b = traits(qtype).block_values
    if b == 1:
        return [(1, 7), (5, 96), (2, 3, 64)]
    return [(1, b), (3, 4 * b), (2, 3, 2 * b), (17, 9 * b)]


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_bit_exact_with_gguf(qtype: str) -> None:
    for k, shape in enumerate(_shapes(qtype)):
        raw = random_raw(qtype, shape, seed=k)
        ours = dequantize(raw, qtype, shape)
        ref = gguf_dequantize(raw, qtype, shape)
        assert ours.dtype == np.float32 and ours.shape == shape
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), f"{qtype} {shape}"


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_every_value_depends_on_its_block(qtype: str) -> None:
    """A decoder that drops half a block (the silent launch bug) leaves values that ignore the bytes."""
    t = traits(qtype)
    shape = (2, 2 * t.block_values)
    a = dequantize(random_raw(qtype, shape, 1), qtype, shape)
    b = dequantize(random_raw(qtype, shape, 2), qtype, shape)
    assert np.isfinite(a).all()
    assert (a != b).mean() > 0.5
    assert np.count_nonzero(a) > a.size // 2


def test_raw_may_be_flat_or_rows() -> None:
    shape = (4, 512)
    raw = random_raw("Q4_K", shape, 3)
    assert np.array_equal(dequantize(raw, "Q4_K", shape), dequantize(raw.reshape(-1), "Q4_K", shape))


def test_known_q8_0_block() -> None:
    d = np.array([0.5], dtype=np.float16).view(np.uint8)
    qs = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    raw = np.concatenate([d, qs])
    assert np.array_equal(dequantize(raw, "Q8_0", (1, 32))[0], np.arange(-16, 16) * 0.5)


def test_wrong_byte_count_names_type_and_shape() -> None:
    raw = np.zeros(143, dtype=np.uint8)
    with pytest.raises(MalformedModelError, match=r"Q4_K tensor of shape \(1, 256\) needs 144 bytes, got 143"):
        dequantize(raw, "Q4_K", (1, 256))


def test_row_length_not_a_block_multiple() -> None:
    with pytest.raises(UnsupportedError, match="Q6_K needs rows that are a multiple of 256 values, got 576"):
        dequantize(np.zeros(1000, dtype=np.uint8), "Q6_K", (1, 576))


def test_unknown_type_and_bad_dtype() -> None:
    with pytest.raises(UnsupportedError, match="unsupported tensor type 'IQ2_XS'"):
        dequantize(np.zeros(66, dtype=np.uint8), "IQ2_XS", (1, 256))
    with pytest.raises(QprofError, match="dequantize needs uint8 bytes, got float32"):
        dequantize(np.zeros(8, dtype=np.float32), "F32", (1, 8))


def test_dequantize_torch_from_tensor_info() -> None:
    shape = (3, 256)
    raw = random_raw("Q5_K", shape, 4)
    info = TensorInfo("blk.0.attn_q.weight", "Q5_K", shape, raw)
    out = dequantize_torch(info)
    assert out.dtype == torch.float32 and tuple(out.shape) == shape
    assert np.array_equal(out.numpy(), gguf_dequantize(raw, "Q5_K", shape))
