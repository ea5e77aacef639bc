"""The one load-time repack of weights for the GPU: GGUF block bytes into the layout the kernels read.

Every quant type keeps GGUF's layout on the device except Q6_K. Its 210-byte blocks leave every field only
2-byte aligned, so the matvec read them as halfwords joined by funnel shifts (13 loads a lane task). On the
device a Q6_K tensor holds every block's first 208 bytes (ql, qh, the int8 scales) in block order, then every
block's float16 d: the same bytes, and each block's 208 start 16-byte aligned (208 = 13 x 16), so ql and qh
take 16-byte loads (kernels/quant_blocks.cuh QbAt and qb_at read this layout). The tensor's rows stay in order,
so block i of the tensor is block i % blocks_per_row of row i // blocks_per_row, as in GGUF.

`to_device` and `from_device` work on numpy arrays and on torch tensors (CPU or CUDA) alike;
tests/test_kernels_ptxas.py decodes the repacked bytes with the kernels' own decoders, compiled for the host,
against the CPU reference of the GGUF bytes.
"""

from __future__ import annotations

import numpy as np

Q6_K_BYTES, Q6_K_BODY = 210, 208  # a block; its bytes before d


def repacked(qtype: str) -> bool:
    """Whether the device copy of a `qtype` tensor is laid out otherwise than GGUF's."""
    return qtype == "Q6_K"


def to_device(qtype: str, raw):
    """The device layout of a tensor's GGUF bytes `raw` (uint8, numpy or torch, any shape: the bytes in order), a
    new array of the same shape; `raw` itself where the type keeps GGUF's layout."""
    if not repacked(qtype):
        return raw
    blocks = raw.reshape(_count(raw), Q6_K_BYTES)
    return _cat(blocks[:, :Q6_K_BODY].reshape(-1), blocks[:, Q6_K_BODY:].reshape(-1)).reshape(raw.shape)


def from_device(qtype: str, raw):
    """GGUF's bytes back from the device layout (the inverse of to_device)."""
    if not repacked(qtype):
        return raw
    n, flat = _count(raw), raw.reshape(-1)
    body = flat[:n * Q6_K_BODY].reshape(n, Q6_K_BODY)
    d = flat[n * Q6_K_BODY:].reshape(n, Q6_K_BYTES - Q6_K_BODY)
    return _cat(body, d, axis=1).reshape(raw.shape)


def _count(raw) -> int:
    size = int(raw.numel() if hasattr(raw, "numel") else raw.size)
    if size % Q6_K_BYTES:
        raise ValueError(f"Q6_K bytes must be whole {Q6_K_BYTES}-byte blocks, got {size}")
    return size // Q6_K_BYTES


def _cat(a, b, axis: int = 0):
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b], axis=axis)
    import torch

    return torch.cat([a, b], dim=axis)
