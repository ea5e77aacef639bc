"""The one load-time repack of weights for the GPU: GGUF block bytes into the layout the kernels read.

Blocks of 18, 34 and 210 bytes (Q4_0, Q8_0, Q6_K) leave their quantized codes only 2-byte aligned, so the matvec
read them as halfwords joined by funnel shifts. On the device such a tensor is split: every block's body (its
codes, and for Q6_K its scales) in block order, then every block's head (the float16 scale) in block order. The
same bytes; every body starts 16-byte aligned (16, 32 or 208 bytes, the tensor 16-aligned), so the codes take
16-byte loads. HEADS gives each split type's head: where it sits in GGUF's block and its size
(kernels/quant_layout.cuh DeviceSplit mirrors it; tests/test_kernels_ptxas.py decodes the repacked bytes with the
kernels' own decoders, compiled for the host, against the CPU reference of the GGUF bytes).
Measured on the H200 (results/h200, stage q6k10A), split against GGUF's layout, batch 1, weights cycled past L2:
Q6_K's matvec took 17-20% less time, Q4_0's 3-13% and Q8_0's up to 7%; Q5_0's (22-byte blocks, 6-byte head)
gained at one shape and lost at two, so it keeps GGUF's layout, as do Q4_1, Q5_1 (split, their stages took more
instructions) and Q2_K..Q5_K (codes already 4-aligned or better).
The tensor's blocks stay in order, so block i is block i % blocks_per_row of row i // blocks_per_row.

`to_device` and `from_device` work on numpy arrays and on torch tensors (CPU or CUDA) alike.
"""

from __future__ import annotations

import numpy as np

from qprof.quant.traits import traits

# qtype -> (offset of the head in GGUF's block, head bytes)
HEADS = {
    "Q4_0": (0, 2),  # d | qs[16]
    "Q8_0": (0, 2),  # d | qs[32]
    "Q6_K": (208, 2),  # ql[128], qh[64], scales[16] | d
}


def repacked(qtype: str) -> bool:
    """Whether the device copy of a `qtype` tensor is laid out otherwise than GGUF's."""
    return qtype in HEADS


def to_device(qtype: str, raw):
    """The device layout of a tensor's GGUF bytes `raw` (uint8, numpy or torch, any shape: the bytes in order), a
    new array of the same shape; `raw` itself where the type keeps GGUF's layout."""
    if not repacked(qtype):
        return raw
    at, size = HEADS[qtype]
    blocks = raw.reshape(_count(qtype, raw), traits(qtype).block_bytes)
    body = _cat(blocks[:, :at], blocks[:, at + size:], axis=1)
    return _cat(body.reshape(-1), blocks[:, at:at + size].reshape(-1)).reshape(raw.shape)


def from_device(qtype: str, raw):
    """GGUF's bytes back from the device layout (the inverse of to_device)."""
    if not repacked(qtype):
        return raw
    at, size = HEADS[qtype]
    n, flat = _count(qtype, raw), raw.reshape(-1)
    body_bytes = traits(qtype).block_bytes - size
    body = flat[:n * body_bytes].reshape(n, body_bytes)
    head = flat[n * body_bytes:].reshape(n, size)
    return _cat(_cat(body[:, :at], head, axis=1), body[:, at:], axis=1).reshape(raw.shape)


def _count(qtype: str, raw) -> int:
    size, block = int(raw.numel() if hasattr(raw, "numel") else raw.size), traits(qtype).block_bytes
    if size % block:
        raise ValueError(f"{qtype} bytes must be whole {block}-byte blocks, got {size}")
    return size // block


def _cat(a, b, axis: int = 0):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b], axis=axis)
    import torch

    return torch.cat([a, b], dim=axis)
