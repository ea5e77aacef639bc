"""Python launchers for the forward-pass kernels: RMSNorm, add, RoPE, SwiGLU, KV write, attention, argmax, steps.

Every launcher writes into caller-owned tensors (so a decode step can use static buffers and be
captured in a CUDA graph) and launches on torch's current stream through KernelLibrary. Decode
variants read the position from a device int32 scalar (`pos`), prefill ones take it from the host.
Launch shapes are the named constants below; the kernels' header comments say what they assume.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch

from qprof.errors import QprofError, UnsupportedError
from qprof.runtime.cuda.driver import KernelLibrary

NORM_THREADS = 256  # any multiple of 32 works; 256 keeps 4096-wide rows at 16 values per thread
ELEMENTWISE_THREADS = 256
ROPE_THREADS = 128
KV_THREADS = 256
ARGMAX_THREADS = 1024  # power of two: the kernel's tree reduction halves it
DECODE_THREADS = 128  # QP_DECODE_THREADS in attention.cu
DECODE_TARGET_CTAS = 256  # decode attention CTAs (KV heads x splits) asked for: about two per SM
DECODE_SPLIT_MAX_KEYS = 1024  # more splits where a split would hold more keys than this
MAX_DECODE_SPLITS = 256
# attention.cu's decode ring: QP_DECODE_WARPS warps, each streaming stages of QP_DECODE_STAGE_KEYS keys'
# K and V rows through at most QP_DECODE_MAX_SLOTS slots; DECODE_RING_BYTES is what a CTA's rings may take
DECODE_WARPS, DECODE_STAGE_KEYS, DECODE_MAX_SLOTS = 4, 8, 4
DECODE_RING_BYTES = 64 << 10
MAX_GQA = 8  # QP_MAX_GQA in attention.cu: query heads per KV head
ATTENTION_HEAD_DIMS = (32, 64, 96, 128)  # instantiated in attention.cu

NULL = ctypes.c_void_p(0)


def _lib() -> KernelLibrary:
    return KernelLibrary.get()


def _ptr(t: torch.Tensor | None):
    return NULL if t is None else t


def _require_f32(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise QprofError(f"{name}: expects contiguous float32 tensors, got {t.dtype} {list(t.shape)}")


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, eps: float) -> torch.Tensor:
    """out[r] = x[r] / rms(x[r]) * weight for every row r of x [rows, n]."""
    _require_f32("rmsnorm", x, weight, out)
    n = weight.numel()
    lib = _lib()
    lib.launch(lib.kernel("norm", "rmsnorm_f32"), (x.numel() // n,), (NORM_THREADS,), x, weight, out, n,
               float(eps))
    return out


def add(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = a + b elementwise (out may be a: the residual stream is updated in place)."""
    _require_f32("add", a, b, out)
    n = a.numel()
    lib = _lib()
    lib.launch(lib.kernel("norm", "add_f32"), (math.ceil(n / ELEMENTWISE_THREADS),), (ELEMENTWISE_THREADS,),
               a, b, out, n)
    return out


def swiglu(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = silu(gate) * up."""
    _require_f32("swiglu", gate, up, out)
    n = gate.numel()
    lib = _lib()
    lib.launch(lib.kernel("swiglu", "swiglu_f32"), (math.ceil(n / ELEMENTWISE_THREADS),),
               (ELEMENTWISE_THREADS,), gate, up, out, n)
    return out


def rope(q: torch.Tensor, k: torch.Tensor, n_rows: int, n_head_q: int, n_head_k: int, head_dim: int,
         rope_dim: int, theta: float, pos: torch.Tensor | None = None, pos0: int = 0) -> None:
    """Rotate q [n_rows, n_head_q, head_dim] and k [n_rows, n_head_k, head_dim] in place (normal mode).

    Row r sits at position pos[0] + r when `pos` (device int32) is given, else pos0 + r.
    """
    _require_f32("rope", q, k)
    if rope_dim % 2 or rope_dim > head_dim:
        raise UnsupportedError(f"rope dimension {rope_dim} must be even and at most the head size {head_dim}")
    pairs = (n_head_q + n_head_k) * (rope_dim // 2)
    lib = _lib()
    lib.launch(lib.kernel("rope", "rope_f32"), (n_rows, math.ceil(pairs / ROPE_THREADS)), (ROPE_THREADS,),
               q, k, n_head_q, n_head_k, head_dim, rope_dim, float(theta), _ptr(pos), int(pos0))


def rope_table(n_ctx: int, rope_dim: int, theta: float) -> torch.Tensor:
    """float32 [n_ctx, rope_dim / 2, 2]: (cos, sin) of every pair at every position, by rope_f32's formula
    (kernels/rope.cu rope_table); the fused QKV epilogue reads it instead of computing sin/cos."""
    if n_ctx <= 0 or rope_dim <= 0 or rope_dim % 2:
        raise UnsupportedError(f"rope table: needs positions and an even rope dimension, got {n_ctx} and {rope_dim}")
    half = rope_dim // 2
    table = torch.empty(n_ctx, half, 2, dtype=torch.float32, device="cuda")
    lib = _lib()
    lib.launch(lib.kernel("rope", "rope_table"), (n_ctx, math.ceil(half / ROPE_THREADS)), (ROPE_THREADS,), table,
               int(n_ctx), int(rope_dim), float(theta))
    return table


KV_DTYPES = {"f32": torch.float32, "f16": torch.float16}


def _require_cache(name: str, *caches: torch.Tensor) -> str:
    """The caches' type suffix ("" for float32, "_f16kv" for float16); they must share one dtype."""
    dtypes = {c.dtype for c in caches}
    if len(dtypes) != 1 or next(iter(dtypes)) not in KV_DTYPES.values() or not all(c.is_contiguous() for c in caches):
        raise QprofError(f"{name}: KV caches must be contiguous and all float32 or all float16")
    return "_f16kv" if caches[0].dtype == torch.float16 else ""


def kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, n_rows: int,
             pos: torch.Tensor | None = None, pos0: int = 0) -> None:
    """Copy n_rows rows of k, v [n_rows, kv_dim] into one layer's caches [n_ctx, kv_dim] at their positions."""
    _require_f32("kv_write", k, v)
    kernel = "kv_write_f16" if _require_cache("kv_write", k_cache, v_cache) else "kv_write_f32"
    n_ctx, kv_dim = k_cache.shape
    lib = _lib()
    lib.launch(lib.kernel("kv_cache", kernel), (n_rows, math.ceil(kv_dim / KV_THREADS)),
               (KV_THREADS,), k, v, k_cache, v_cache, kv_dim, n_ctx, _ptr(pos), int(pos0))


@dataclass(frozen=True)
class AttentionShape:
    n_head: int
    n_head_kv: int
    head_dim: int
    window: int = 0  # sliding window in tokens; 0 = none

    def __post_init__(self) -> None:
        if self.head_dim not in ATTENTION_HEAD_DIMS:
            raise UnsupportedError(f"attention head size {self.head_dim} is not supported; "
                                   f"supported: {', '.join(map(str, ATTENTION_HEAD_DIMS))}")
        if self.n_head % self.n_head_kv:
            raise UnsupportedError(f"{self.n_head} query heads do not divide into {self.n_head_kv} KV heads")
        if self.n_head // self.n_head_kv > MAX_GQA:
            raise UnsupportedError(f"{self.n_head // self.n_head_kv} query heads per KV head is more than the "
                                   f"{MAX_GQA} decode attention supports")

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)


@dataclass(frozen=True)
class Mask:
    """An additive float mask (0 / -inf) on the device; rows by position (resident) or by batch row."""

    values: torch.Tensor  # [rows, stride] float32
    row_by_pos: bool

    @property
    def stride(self) -> int:
        return self.values.shape[-1]


def _mask_args(mask: Mask | None) -> tuple:
    if mask is None:
        return NULL, 0, 0
    return mask.values, mask.stride, int(mask.row_by_pos)


def decode_splits(n_ctx: int, n_head_kv: int) -> int:
    """Splits per KV head for decode attention: a grid that depends on n_ctx only (graph-capturable).

    About DECODE_TARGET_CTAS CTAs over the KV heads, more splits where a split would pass
    DECODE_SPLIT_MAX_KEYS keys, never more splits than 32-key pieces of the context. The kernel uses
    fewer at run time where the position is short (attention.cu: QP_DECODE_SPLIT_KEYS).
    """
    n_split = max(math.ceil(DECODE_TARGET_CTAS / n_head_kv), math.ceil(n_ctx / DECODE_SPLIT_MAX_KEYS))
    return max(1, min(n_split, MAX_DECODE_SPLITS, math.ceil(n_ctx / 32)))


def decode_heads(n_gqa: int) -> int:
    """The query heads per KV head a decode-attention kernel is built for: the power of two at or above n_gqa.

    Its loops over heads unroll whole; the heads past n_gqa are zeros it never stores.
    """
    if not 1 <= n_gqa <= MAX_GQA:
        raise QprofError(f"decode attention takes 1..{MAX_GQA} query heads per KV head, not {n_gqa}")
    return 1 << (n_gqa - 1).bit_length()


def decode_shared_bytes(shape: AttentionShape, kv_bytes: int, n_split: int) -> int:
    """Dynamic shared memory of a decode-attention CTA: its warps' rings (as many slots as DECODE_RING_BYTES
    holds, 1 to DECODE_MAX_SLOTS), or more where the merges that reuse it need more (attention.cu)."""
    stage = 2 * DECODE_STAGE_KEYS * shape.head_dim * kv_bytes
    slots = max(1, min(DECODE_MAX_SLOTS, DECODE_RING_BYTES // (DECODE_WARPS * stage)))
    heads = decode_heads(shape.n_gqa)
    warps_merge = 4 * DECODE_WARPS * heads * (2 + shape.head_dim)  # each warp's (m, l, o) per head
    splits_merge = 4 * (heads + 1) * 2 * n_split  # each split's (m, l) per head, and a row for warps past the heads
    per_warp = max(slots * stage, math.ceil(max(warps_merge, splits_merge) / DECODE_WARPS))
    return DECODE_WARPS * 128 * math.ceil(per_warp / 128)  # the kernel cuts it into 128-byte aligned rings


@dataclass
class DecodeScratch:
    """Per-split partial results of decode attention and its counters, allocated once per runtime."""

    n_split: int
    part_o: torch.Tensor  # [n_head, n_split, head_dim]
    part_ml: torch.Tensor  # [n_head, n_split, 2]
    done: torch.Tensor  # int32 [n_head_kv]: splits finished this step; the last one merges and zeroes it

    @classmethod
    def allocate(cls, shape: AttentionShape, n_ctx: int, device="cuda", n_split: int | None = None) -> DecodeScratch:
        """n_split: the grid's splits a KV head (default decode_splits'; a benchmark may ask for others)."""
        n_split = decode_splits(n_ctx, shape.n_head_kv) if n_split is None else n_split
        if not 1 <= n_split <= MAX_DECODE_SPLITS:
            raise QprofError(f"decode attention takes 1..{MAX_DECODE_SPLITS} splits a KV head, not {n_split}")
        return cls(n_split,
                   torch.empty(shape.n_head, n_split, shape.head_dim, device=device),
                   torch.empty(shape.n_head, n_split, 2, device=device),
                   torch.zeros(shape.n_head_kv, dtype=torch.int32, device=device))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                     shape: AttentionShape, scratch: DecodeScratch, pos: torch.Tensor | None = None,
                     pos0: int = 0, mask: Mask | None = None, out_q: torch.Tensor | None = None) -> torch.Tensor:
    """One query row q [n_head * D] at position pos[0] (or pos0) against the cache; out [n_head * D].

    One launch: the splits' partials are merged by each KV head's last split (attention.cu).
    out_q (a QVec byte buffer for n_head * D values): also write out quantized for the next matvec.
    """
    _require_f32("attention_decode", q, out)
    suffix = _require_cache("attention_decode", k_cache, v_cache)
    lib = _lib()
    kernel = lib.kernel("attention", f"attn_decode_d{shape.head_dim}_g{decode_heads(shape.n_gqa)}{suffix}")
    shared = decode_shared_bytes(shape, k_cache.element_size(), scratch.n_split)
    lib.launch(kernel, (shape.n_head_kv, scratch.n_split), (DECODE_THREADS,), q, k_cache, v_cache,
               scratch.part_o, scratch.part_ml, scratch.done, out, _ptr(out_q), shape.n_gqa, shape.kv_dim, _ptr(pos),
               int(pos0), shape.window, *_mask_args(mask), shape.scale, shared_bytes=shared)
    return out


def attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                      n_q: int, shape: AttentionShape, pos0: int, mask: Mask | None = None) -> torch.Tensor:
    """n_q query rows q [n_q, n_head * D] at positions pos0.. against the cache (already holding them).

    Through torch's scaled_dot_product_attention in float32 (its memory-efficient kernel, a tiled online
    softmax): on the H200 it replaced qprof's own prefill kernel, whose scalar tiles took 319 us a layer at
    512 tokens of Mistral-7B, a third of prefill. The KV heads are the batch and each one's query heads
    the heads, K and V broadcast over them (no copy for float32 caches); float16 caches are widened first.
    Causality and the window come from the mask when one is given, as in the decode kernel."""
    _require_f32("attention_prefill", q, out)
    _require_cache("attention_prefill", k_cache, v_cache)
    n_keys, g, gqa, d = pos0 + n_q, shape.n_head_kv, shape.n_gqa, shape.head_dim
    if pos0 < 0 or n_keys > k_cache.shape[0] or tuple(q.shape) != (n_q, shape.n_head * d):
        raise QprofError(f"attention_prefill: {n_q} queries at {pos0} do not fit a cache of {k_cache.shape[0]} "
                         f"positions, or q is not [{n_q}, {shape.n_head * d}]")

    def heads(cache: torch.Tensor) -> torch.Tensor:  # [G, gqa, n_keys, D], the query heads sharing a view
        kv = cache[:n_keys].view(n_keys, g, 1, d).permute(1, 2, 0, 3).expand(g, gqa, n_keys, d)
        return kv if kv.dtype == torch.float32 else kv.float()

    attn_mask = None
    if mask is None:
        mask = prefill_mask(pos0, n_q, shape, q.device)
    if mask is not None:
        rows = mask.values[pos0:pos0 + n_q] if mask.row_by_pos else mask.values[:n_q]
        attn_mask = rows[:, :n_keys]
    o = torch.nn.functional.scaled_dot_product_attention(
        q.view(n_q, g, gqa, d).permute(1, 2, 0, 3), heads(k_cache), heads(v_cache), attn_mask=attn_mask,
        is_causal=attn_mask is None, scale=shape.scale)
    out.view(n_q, g, gqa, d).copy_(o.permute(2, 0, 1, 3))
    return out


def argmax(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[r] (int32) = index of the largest value of logits row r (first on ties, NaN wins)."""
    _require_f32("argmax", logits)
    if out.dtype != torch.int32:
        raise QprofError(f"argmax: expects an int32 output, got {out.dtype}")
    n = logits.shape[-1]
    lib = _lib()
    lib.launch(lib.kernel("sample", "argmax_f32"), (logits.numel() // n,), (ARGMAX_THREADS,), logits, n, out)
    return out


def prefill_mask(pos0: int, n_q: int, shape: AttentionShape, device) -> Mask | None:
    """The mask prefill attention needs without a given one, for n_q queries at pos0.. (rows by batch row).

    None where torch's is_causal (top-left aligned) is the cache's causality: the queries start at position
    0 and no window cuts the keys. A forward makes it once per chunk, for every layer."""
    n_keys = pos0 + n_q
    if pos0 == 0 and (shape.window <= 0 or shape.window >= n_keys):
        return None
    return Mask(causal_mask(torch.arange(pos0, n_keys, device=device), n_keys, shape.window), row_by_pos=False)


def causal_mask(q_pos: torch.Tensor, n_keys: int, window: int) -> torch.Tensor:
    """Additive mask [len(q_pos), n_keys]: 0 where the key is visible to the query, -inf elsewhere."""
    k_pos = torch.arange(n_keys, device=q_pos.device)
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window > 0:
        allowed &= diff < window
    zero = torch.zeros((), dtype=torch.float32, device=q_pos.device)
    return torch.where(allowed, zero, torch.full_like(zero, float("-inf")))


def step_set(step: torch.Tensor, token: int, pos: int) -> None:
    """Write (token, position) into the decode step's int32[2] device input, as kernel parameters."""
    lib = _lib()
    lib.launch(lib.kernel("sample", "step_set"), (1,), (32,), step, int(token), int(pos))


def step_chain(step: torch.Tensor, token: torch.Tensor, pos: int) -> None:
    """Write the decode step's int32[2] device input from a device token (int32[1], e.g. argmax's output) and a
    position: the next greedy step is queued without the token visiting the host."""
    if token.dtype != torch.int32 or not token.is_cuda:
        raise QprofError(f"step_chain: expects an int32 device token, got {token.dtype} on {token.device}")
    lib = _lib()
    lib.launch(lib.kernel("sample", "step_chain"), (1,), (32,), step, token, int(pos))
