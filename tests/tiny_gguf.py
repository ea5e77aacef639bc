"""Test helper: tiny random HF llama/mistral models and GGUF files written from them as llama.cpp would.

The GGUF copy applies convert_hf_to_gguf's Q/K row permutation, so comparing qprof's CPU runtime
on the file against transformers on the original model checks the RoPE convention independently
of transformers' own GGUF loader. The vocabulary is a small SentencePiece-style one with byte tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SP_PIECES = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "\u2581h", "ll", "llo", "\u2581he", "\u2581hello",
             "\u2581w", "or", "\u2581wor", "ld", "\u2581world", "\u2581the", "t", "\u2581t", "\u2581th"]


def sp_vocab() -> tuple[list[str], list[float], list[int]]:
    """tokens, scores, token types: <unk>, <s>, </s>, 256 byte tokens, then pieces scored best-first."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
    scores = [0.0] * 259 + [-float(i + 1) for i in range(len(SP_PIECES))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(SP_PIECES)
    return tokens, scores, types


def sp_metadata(add_bos: bool | None = None, add_space_prefix: bool | None = None) -> dict:
    tokens, scores, types = sp_vocab()
    meta = {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    if add_bos is not None:
        meta["tokenizer.ggml.add_bos_token"] = add_bos
    if add_space_prefix is not None:
        meta["tokenizer.ggml.add_space_prefix"] = add_space_prefix
    return meta


def hf_model(seed: int = 0, sliding_window: int | None = None, tied: bool = False, n_layer: int = 2,
             n_head: int = 4, n_head_kv: int = 2, head_dim: int = 16, rope_theta: float = 5000.0):
    """A random HF model (Mistral when sliding_window is set) with weights large enough to give peaked logits."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    n_vocab = len(sp_vocab()[0])
    common = {"vocab_size": n_vocab, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": n_layer,
              "num_attention_heads": n_head, "num_key_value_heads": n_head_kv, "head_dim": head_dim,
              "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": tied,
              "bos_token_id": 1, "eos_token_id": 2}
    if sliding_window:
        cfg, cls = MistralConfig(sliding_window=sliding_window, rope_theta=rope_theta, **common), MistralForCausalLM
    else:
        cfg, cls = LlamaConfig(rope_theta=rope_theta, **common), LlamaForCausalLM
    cfg._attn_implementation = "eager"  # the eager path honours the sliding window exactly
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's row permutation of q/k: rotate_half halves -> adjacent pairs, per head."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of permute_qk."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model, meta_extra: dict | None = None, arch: str = "llama",
               quant: str | None = None) -> Path:
    """Write `model` as a GGUF: F32 tensors (or matrices quantized to `quant`), SP tokenizer, chat template."""
    import gguf

    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors: dict[str, np.ndarray] = {"token_embd.weight": sd["model.embed_tokens.weight"],
                                      "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = permute_qk(w, cfg.num_attention_heads)
            elif gg == "attn_k":
                w = permute_qk(w, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{gg}.weight"] = w

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta}  # transformers 5 | 4
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(cfg.head_dim)
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(cfg.sliding_window)
    tokens, scores, types = sp_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}assistant:{% endif %}")
    for key, value in (meta_extra or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, str(value))
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if quant and arr.ndim == 2:
            qtype = gguf.GGMLQuantizationType[quant]
            writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
