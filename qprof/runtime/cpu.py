"""The CPU reference forward pass (torch float32) that every GPU result is checked against.

Model: llama/mistral as GGUF stores it. Weights are dequantized once at load to float32.

RoPE convention. convert_hf_to_gguf.py permutes the rows of attn_q / attn_k so that llama.cpp
can apply the *normal* rotation to adjacent pairs (x[2i], x[2i+1]) of each head, with angle
pos * theta^(-2i/rope_dim), on the first rope_dim values of the head. (transformers' GGUF loader
undoes that permutation and then uses its rotate_half form; both are the same function.)

Op names (shared with the CUDA runtime and the profiler; keep them in step):

    ================================  ==========================  ==========================
    op name                           family                      qtype
    ================================  ==========================  ==========================
    token_embd                        get_rows                    token_embd.weight's type
    blk.{i}.attn_norm                 rmsnorm                     -
    blk.{i}.attn_q / attn_k / attn_v  matvec (decode) |           that weight's type
                                      matmul (prefill)
    blk.{i}.rope                      rope   (q and k together)   -
    blk.{i}.kv_write                  kv_write                    -
    blk.{i}.attention                 attention (scores, causal   -
                                      / sliding-window mask,
                                      softmax, weighted sum)
    blk.{i}.attn_output               matvec | matmul             that weight's type
    blk.{i}.attn_add                  add (residual)              -
    blk.{i}.ffn_norm                  rmsnorm                     -
    blk.{i}.ffn_gate / ffn_up         matvec | matmul             that weight's type
    blk.{i}.swiglu                    swiglu  (silu(gate) * up)   -
    blk.{i}.ffn_down                  matvec | matmul             that weight's type
    blk.{i}.ffn_add                   add (residual)              -
    output_norm                       rmsnorm                     -
    output                            matvec | matmul             output.weight's type (the
                                                                  embedding's when tied)
    sample                            sample                      -
    ================================  ==========================  ==========================

The CUDA runtime adds ops that exist only on the GPU: step_input (family "step": the decode
token/position written on the device), scalar_upload ("copy", a fault switch) and decode_graph
("graph", a captured decode step).

Ranges: prefill() runs inside annotator.phase("prefill"); decode() inside phase("decode") and
token(n_past); each layer inside layer(i). The `mask` option changes nothing numerically here:
the CPU always applies the exact causal / sliding-window mask (the options matter on the GPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from qprof.annotate import NULL_ANNOTATOR, Annotator
from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams, TokenChecks
from qprof.runtime.options import RuntimeOptions
from qprof.runtime.sampling import Sampler
from qprof.runtime.weights import dequantize_model

LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "ffn_norm")


# ---- pure ops: reused by tests and by GPU-vs-CPU checks ----------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_inv_freq(rope_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim))


def rope_adjacent(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Normal (GGUF llama) RoPE on x [T, heads, head_dim]: rotate pairs (x[2i], x[2i+1]) of the first rope dims."""
    rope_dim = 2 * inv_freq.numel()
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, rope_dim/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    pairs = x[..., :rope_dim].reshape(*x.shape[:-1], rope_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).reshape(*x.shape[:-1], rope_dim)
    return torch.cat((rotated, x[..., rope_dim:]), dim=-1) if rope_dim < x.shape[-1] else rotated


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """True where query at q_pos may see key at k_pos: causal, and within the sliding window if any."""
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window:
        allowed &= diff < window
    return allowed


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention. q [T, H, d], k/v [S, KV, d], mask [T, S] or None -> [T, H*d]."""
    n_head, n_kv, d = q.shape[1], k.shape[1], q.shape[2]
    group = n_head // n_kv  # query head h reads KV head h // group
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask[None, :, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hts,shd->thd", probs, v).reshape(q.shape[0], n_head * d)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


# ---- the runtime ------------------------------------------------------------------------------

class CpuRuntime(TokenChecks):
    """Reference Runtime (see qprof.runtime.base.Runtime) on the CPU in float32."""

    device = "cpu"

    def __init__(self, model, options: RuntimeOptions | None = None, annotator: Annotator | None = None,
                 n_ctx: int | None = None):
        cfg = model.config
        self.model = model
        self.config = cfg
        self.options = options or RuntimeOptions()
        self.annotator = annotator or NULL_ANNOTATOR
        self.n_ctx = int(n_ctx or min(cfg.n_ctx, 4096))
        if self.n_ctx <= 0:
            raise QprofError(f"context size must be positive, got {self.n_ctx}")
        self.n_past = 0
        self.qtypes: dict[str, str] = {name: t.qtype for name, t in model.tensors.items()}
        self.w: dict[str, torch.Tensor] = dequantize_model(model)
        self.output_name = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        self.inv_freq = rope_inv_freq(cfg.rope_dim, cfg.rope_theta)
        kv_shape = (cfg.n_layer, self.n_ctx, cfg.n_head_kv, cfg.head_dim)
        self.k_cache = torch.zeros(kv_shape, dtype=torch.float32)
        self.v_cache = torch.zeros(kv_shape, dtype=torch.float32)
        self._sampler: Sampler | None = None

    # -- protocol --
    def reset(self) -> None:
        self.n_past = 0
        self._sampler = None  # a new generation restarts the seeded random stream

    def synchronize(self) -> None:
        """Nothing is queued on the CPU."""

    def prefill(self, tokens: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        tokens = self._check_tokens(tokens)
        with self.annotator.phase("prefill"):
            logits = self._forward(tokens, "matmul", all_logits)
        return logits if all_logits else logits[-1]

    def decode(self, token: int) -> torch.Tensor:
        tokens = self._check_tokens([token])
        with self.annotator.phase("decode"), self.annotator.token(self.n_past):
            return self._forward(tokens, "matvec", False)[-1]

    def sample(self, logits: torch.Tensor, params: SamplingParams) -> int:
        if self._sampler is None or self._sampler.params != params:
            self._sampler = Sampler(params, device=logits.device)
        with self.annotator.op("sample", "sample"):
            return int(self._sampler(logits))

    # -- internals --
    def _matmul(self, name: str, x: torch.Tensor, family: str) -> torch.Tensor:
        wname = name + ".weight" if name != "output" else self.output_name
        with self.annotator.op(name, family, self.qtypes[wname]):
            return x @ self.w[wname].T

    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        with self.annotator.op(name, "rmsnorm"):
            return rms_norm(x, self.w[name + ".weight"], self.config.rms_eps)

    def _forward(self, tokens: list[int], family: str, all_logits: bool) -> torch.Tensor:
        cfg, ann = self.config, self.annotator
        n = len(tokens)
        start = self.n_past
        positions = torch.arange(start, start + n)
        with ann.op("token_embd", "get_rows", self.qtypes["token_embd.weight"]):
            x = self.w["token_embd.weight"][torch.tensor(tokens)]
        k_pos = torch.arange(0, start + n)
        # a single token with no window sees every cached position: no mask needed
        mask = None if (n == 1 and not cfg.sliding_window) else attention_mask(positions, k_pos, cfg.sliding_window)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            with ann.layer(i):
                h = self._norm(p + "attn_norm", x)
                q = self._matmul(p + "attn_q", h, family).view(n, cfg.n_head, cfg.head_dim)
                k = self._matmul(p + "attn_k", h, family).view(n, cfg.n_head_kv, cfg.head_dim)
                v = self._matmul(p + "attn_v", h, family).view(n, cfg.n_head_kv, cfg.head_dim)
                with ann.op(p + "rope", "rope"):
                    q = rope_adjacent(q, positions, self.inv_freq)
                    k = rope_adjacent(k, positions, self.inv_freq)
                with ann.op(p + "kv_write", "kv_write"):
                    self.k_cache[i, start:start + n] = k
                    self.v_cache[i, start:start + n] = v
                with ann.op(p + "attention", "attention"):
                    a = attention(q, self.k_cache[i, :start + n], self.v_cache[i, :start + n], mask)
                o = self._matmul(p + "attn_output", a, family)
                with ann.op(p + "attn_add", "add"):
                    x = x + o
                h = self._norm(p + "ffn_norm", x)
                g = self._matmul(p + "ffn_gate", h, family)
                u = self._matmul(p + "ffn_up", h, family)
                with ann.op(p + "swiglu", "swiglu"):
                    s = swiglu(g, u)
                o = self._matmul(p + "ffn_down", s, family)
                with ann.op(p + "ffn_add", "add"):
                    x = x + o
        self.n_past = start + n
        if not all_logits:
            x = x[-1:]
        x = self._norm("output_norm", x)
        return self._matmul("output", x, family)
