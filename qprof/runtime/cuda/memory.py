"""What a CudaRuntime needs in GPU memory, checked before loading, and the one line said when it does not fit."""

from __future__ import annotations

import torch

from qprof.errors import QprofError
from qprof.runtime.cuda.kv_cache import KvCache, MaskPolicy
from qprof.runtime.cuda.prefill_graph import PREFILL_GRAPH_SLOTS, prefill_graph_blocker
from qprof.runtime.options import RuntimeOptions

GIB = 2**30


def bytes_needed(model, n_ctx: int, options: RuntimeOptions, prefill_chunk: int) -> dict[str, int]:
    """Bytes by purpose: weights, KV cache, mask, one prefill chunk's activations (and the float16 copy of the
    widest matrix the prefill matmul dequantizes into), and with prefill graphs a chunk's activations more per
    graph slot, each held in its captured graph's own memory pool."""
    cfg = model.config
    widest = max(cfg.n_ff, cfg.n_vocab, cfg.q_dim, cfg.n_embd)
    chunk = prefill_chunk * (4 * cfg.n_embd + 3 * widest) * 4
    need = {
        "weights": int(model.size_bytes),
        "KV cache": KvCache.bytes_needed(cfg.n_layer, n_ctx, cfg.kv_dim, options.kv_type),
        "mask": MaskPolicy.bytes_needed(options.mask, n_ctx),
        "activations": chunk + 2 * widest * cfg.n_embd,
    }
    if prefill_graph_blocker(options) is None:
        need["prefill graphs"] = PREFILL_GRAPH_SLOTS * chunk
    return need


def memory_message(model, need: dict[str, int], what: str) -> str:
    free, total = torch.cuda.mem_get_info()
    parts = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in need.items())
    name = getattr(getattr(model, "path", None), "name", None) or model.config.name or "model"
    return (f"{name} {what}: needs {sum(need.values()) / GIB:.2f} GiB ({parts}), "
            f"{free / GIB:.2f} of {total / GIB:.2f} GiB free on {torch.cuda.get_device_name()}; "
            "lower --ctx or use a smaller model")


def check_fits(model, need: dict[str, int]) -> None:
    free, _ = torch.cuda.mem_get_info()
    if sum(need.values()) > free:
        raise QprofError(memory_message(model, need, "does not fit"))
