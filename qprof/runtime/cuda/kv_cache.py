"""The device KV cache and the causal mask that attention reads over it, per RuntimeOptions.mask mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qprof.errors import QprofError
from qprof.runtime.cuda.ops import KV_DTYPES, Mask, causal_mask

F32_BYTES = 4


@dataclass
class KvCache:
    """K and V of every layer, [n_layer, n_ctx, kv_dim] each; row = token position.

    float32 by default (the reference: the GPU keeps the CPU's greedy choices token for token);
    float16 (kv_type "f16") halves the bytes decode attention reads at long contexts.
    """

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def allocate(cls, n_layer: int, n_ctx: int, kv_dim: int, kv_type: str = "f32", device="cuda") -> KvCache:
        dtype = _dtype(kv_type)
        return cls(torch.zeros(n_layer, n_ctx, kv_dim, device=device, dtype=dtype),
                   torch.zeros(n_layer, n_ctx, kv_dim, device=device, dtype=dtype))

    @staticmethod
    def bytes_needed(n_layer: int, n_ctx: int, kv_dim: int, kv_type: str = "f32") -> int:
        return 2 * n_layer * n_ctx * kv_dim * _dtype(kv_type).itemsize

    @property
    def n_ctx(self) -> int:
        return self.k.shape[1]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]


def _dtype(kv_type: str) -> torch.dtype:
    try:
        return KV_DTYPES[kv_type]
    except KeyError:
        raise QprofError(f"unknown KV cache type {kv_type!r}; choose from {', '.join(KV_DTYPES)}") from None


class MaskPolicy:
    """How the causal mask reaches attention (see RuntimeOptions.mask).

    upload: a float mask built on the host for this forward and copied to the device every time
            (the seed's fault: a synchronous host->device copy per forward).
    device: one [n_ctx, n_ctx] mask built on the device at load; attention reads the row of each
            query's position, so decode stays graph-capturable.
    skip:   no mask: attention enforces causality and the window from positions in the kernel.
    """

    def __init__(self, mode: str, n_ctx: int, window: int, device="cuda"):
        self.mode = mode
        self.window = window
        self.resident: Mask | None = None
        if mode == "device":
            pos = torch.arange(n_ctx, device=device)
            self.resident = Mask(causal_mask(pos, n_ctx, window), row_by_pos=True)

    @staticmethod
    def bytes_needed(mode: str, n_ctx: int) -> int:
        return n_ctx * n_ctx * F32_BYTES if mode == "device" else 0

    def for_forward(self, pos0: int, n_tokens: int) -> Mask | None:
        """The mask for queries at positions pos0 .. pos0 + n_tokens - 1 over keys 0 .. pos0 + n_tokens - 1."""
        if self.mode == "device":
            return self.resident
        if self.mode == "upload":
            host = causal_mask(torch.arange(pos0, pos0 + n_tokens), pos0 + n_tokens, self.window)
            return Mask(host.to("cuda"), row_by_pos=False)  # pageable copy: the host waits for it
        return None
