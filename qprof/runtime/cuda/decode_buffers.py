"""The CUDA runtime's weights per layer and the decode step's buffers, allocated once (forward.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qprof.quant.dequant import dequantize_torch
from qprof.runtime.cuda import ops
from qprof.runtime.cuda.quant_ops import DeviceWeight, QVec


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    mats: dict[str, DeviceWeight]  # keyed by qprof.runtime.cpu.LAYER_MATRICES


@dataclass
class DecodeBuffers:
    """Everything one decode step touches, allocated once (a captured graph bakes in the addresses)."""

    step: torch.Tensor  # int32 [2]: token, position
    x: torch.Tensor  # [1, n_embd] residual stream
    xn: torch.Tensor  # [1, n_embd] normed
    q: torch.Tensor  # [1, q_dim]
    k: torch.Tensor  # [1, kv_dim]
    v: torch.Tensor
    attn: torch.Tensor  # [1, q_dim]
    tmp: torch.Tensor  # [1, n_embd] projection output before the residual add
    gate: torch.Tensor  # [1, n_ff]
    up: torch.Tensor
    act: torch.Tensor
    logits: torch.Tensor  # [1, n_vocab]
    token_out: torch.Tensor  # int32 [1]: the argmax
    token_host: torch.Tensor  # int32 [1], page-locked: where the argmax is read back to
    scratch: ops.DecodeScratch
    # the fused step's quantized activations (None where a width is not a multiple of 32)
    xq: QVec | None  # the residual stream times the next RMSNorm's weight, with its partials
    attnq: QVec | None  # attention's output
    actq: QVec | None  # SwiGLU's output

    @classmethod
    def allocate(cls, cfg, shape: ops.AttentionShape, n_ctx: int) -> DecodeBuffers:
        def f32(n: int) -> torch.Tensor:
            return torch.zeros(1, n, device="cuda")

        def qvec(n: int) -> QVec | None:
            return QVec.allocate(n) if n % 32 == 0 else None

        return cls(torch.zeros(2, dtype=torch.int32, device="cuda"), f32(cfg.n_embd), f32(cfg.n_embd),
                   f32(cfg.q_dim), f32(cfg.kv_dim), f32(cfg.kv_dim), f32(cfg.q_dim), f32(cfg.n_embd),
                   f32(cfg.n_ff), f32(cfg.n_ff), f32(cfg.n_ff), f32(cfg.n_vocab),
                   torch.zeros(1, dtype=torch.int32, device="cuda"), torch.zeros(1, dtype=torch.int32).pin_memory(),
                   ops.DecodeScratch.allocate(shape, n_ctx), qvec(cfg.n_embd), qvec(cfg.q_dim), qvec(cfg.n_ff))


def norm_weight(info) -> torch.Tensor:
    """A norm vector of the GGUF as a contiguous float32 device tensor."""
    return dequantize_torch(info).reshape(-1).to(device="cuda", dtype=torch.float32).contiguous()
