"""Model-level checks of a loaded GGUF: config ranges, tensor presence/shape/type, NaN/inf in weights and scales.

The file-level checks (header, metadata, tensor infos, layout) run while reading, in
qprof.model.gguf_reader. Everything here is O(metadata) except the scan of fp16 block scales and
float tensors, which is vectorized.
"""

from __future__ import annotations

import math

import numpy as np

from qprof.errors import MalformedModelError
from qprof.model.gguf_reader import open_reader  # noqa: F401 -- re-exported for callers of the old home
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import QUANT_TRAITS

# Exponent-all-ones masks: a value is NaN or inf exactly when (bits & mask) == mask.
_NONFINITE_MASK = {"F32": (np.uint32, 0x7F800000), "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}


# --- model-level checks ---------------------------------------------------------------------------


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Torch-order shapes of every tensor a llama/mistral model must have."""
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (cfg.n_vocab, cfg.n_embd),
        "output_norm.weight": (cfg.n_embd,),
    }
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.n_vocab, cfg.n_embd)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (cfg.n_embd,),
                p + "attn_q.weight": (cfg.q_dim, cfg.n_embd),
                p + "attn_k.weight": (cfg.kv_dim, cfg.n_embd),
                p + "attn_v.weight": (cfg.kv_dim, cfg.n_embd),
                p + "attn_output.weight": (cfg.n_embd, cfg.q_dim),
                p + "ffn_norm.weight": (cfg.n_embd,),
                p + "ffn_gate.weight": (cfg.n_ff, cfg.n_embd),
                p + "ffn_up.weight": (cfg.n_ff, cfg.n_embd),
                p + "ffn_down.weight": (cfg.n_embd, cfg.n_ff),
            }
        )
    return shapes


# Upper bounds far above any real llama-family model; a value beyond them is a corrupt field.
_CONFIG_LIMITS = {
    "n_embd": 1 << 17,
    "n_layer": 4096,
    "n_head": 4096,
    "n_head_kv": 4096,
    "head_dim": 1 << 12,
    "n_ff": 1 << 20,
    "n_ctx": 1 << 24,
    "n_vocab": 1 << 24,
    "rope_dim": 1 << 12,
}


def _check_config(cfg, name: str) -> None:
    for key, limit in _CONFIG_LIMITS.items():
        value = getattr(cfg, key)
        if key == "n_vocab" and value == 0:
            raise MalformedModelError(f"{name}: vocabulary size is 0 (no tokenizer.ggml.tokens and no vocab_size)")
        if not 1 <= value <= limit:
            raise MalformedModelError(f"{name}: config {key} = {value} is out of range (1..{limit})")
    if cfg.n_head % cfg.n_head_kv:
        raise MalformedModelError(
            f"{name}: head_count {cfg.n_head} is not a multiple of head_count_kv {cfg.n_head_kv}"
        )
    if cfg.rope_dim > cfg.head_dim or cfg.rope_dim % 2:
        raise MalformedModelError(f"{name}: rope dimension {cfg.rope_dim} does not fit head dim {cfg.head_dim}")
    for key in ("rms_eps", "rope_theta"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value > 0):
            raise MalformedModelError(f"{name}: config {key} = {value} must be finite and positive")
    if cfg.sliding_window is not None and cfg.sliding_window < 1:
        raise MalformedModelError(f"{name}: sliding window {cfg.sliding_window} must be positive")


def first_nonfinite_scale(qtype: str, raw: np.ndarray) -> tuple[int, str, float] | None:
    """(block index, field name, value) of the first NaN/inf fp16 scale in raw quant data, else None."""
    offsets = FP16_FIELDS.get(qtype)
    if not offsets or raw.size == 0:
        return None
    blocks = raw.reshape(-1, QUANT_TRAITS[qtype].block_bytes)
    worst: tuple[int, str, float] | None = None
    # ggml calls the first field d (the scale) and the second m (legacy) or dmin (K-quants).
    names = ("d", "dmin" if QUANT_TRAITS[qtype].family == "kquant" else "m")
    for field_name, offset in zip(names, offsets):
        bits = blocks[:, offset : offset + 2].view(np.uint16)[:, 0]
        bad = np.flatnonzero((bits & 0x7C00) == 0x7C00)
        if bad.size and (worst is None or bad[0] < worst[0]):
            value = float(bits[bad[0] : bad[0] + 1].view(np.float16)[0])
            worst = (int(bad[0]), field_name, value)
    return worst


def first_nonfinite_value(qtype: str, raw: np.ndarray) -> int | None:
    """Flat index of the first NaN/inf in a float tensor's raw bytes, else None."""
    dtype, mask = _NONFINITE_MASK[qtype]
    bits = raw.reshape(-1).view(dtype)
    bad = np.flatnonzero((bits & mask) == mask)
    return int(bad[0]) if bad.size else None


def check_tensor_values(tname: str, qtype: str, shape: tuple[int, ...], raw: np.ndarray, file: str) -> None:
    """Raise naming the tensor and block if any fp16 scale or float value is NaN/inf."""
    if qtype in _NONFINITE_MASK:
        idx = first_nonfinite_value(qtype, raw)
        if idx is not None:
            raise MalformedModelError(f"{file}: tensor {tname!r} ({qtype}) has a NaN/inf value at flat index {idx}")
        return
    hit = first_nonfinite_scale(qtype, raw)
    if hit is not None:
        block, field_name, value = hit
        per_row = shape[-1] // QUANT_TRAITS[qtype].block_values
        raise MalformedModelError(
            f"{file}: tensor {tname!r} ({qtype}) block {block} (row {block // per_row}) has a non-finite"
            f" fp16 scale {field_name} = {value}"
        )


def validate_model(model, check_values: bool = True) -> None:
    """Config ranges, tensor presence/shape/type, then (optionally) the NaN/inf scan of every tensor."""
    cfg = model.config
    name = model.path.name
    _check_config(cfg, name)
    expected = expected_shapes(cfg)
    for tname, shape in expected.items():
        t = model.tensors.get(tname)
        if t is None:
            raise MalformedModelError(f"{name}: missing tensor {tname!r}")
        if tuple(t.shape) != shape:
            raise MalformedModelError(
                f"{name}: tensor {tname!r} has shape {list(t.shape)}, config implies {list(shape)}"
            )
        if len(shape) == 1 and t.qtype not in _NONFINITE_MASK:
            raise MalformedModelError(f"{name}: norm tensor {tname!r} is {t.qtype}; it must be F32, F16 or BF16")
    if check_values:
        for tname, t in model.tensors.items():
            check_tensor_values(tname, t.qtype, t.shape, t.raw, name)

