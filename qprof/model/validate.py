"""Checks that turn a malformed GGUF into one clear line instead of a traceback or garbage."""

from __future__ import annotations

from pathlib import Path

from qprof.errors import MalformedModelError, QprofError


def open_reader(path: Path):
    """Open with gguf.GGUFReader, mapping every low-level failure to a one-line error."""
    from gguf import GGUFReader

    if not path.exists():
        raise QprofError(f"model file not found: {path}")
    if path.is_dir():
        raise QprofError(f"model path is a directory, not a GGUF file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise MalformedModelError(f"{path.name}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        return GGUFReader(path, "r")
    except QprofError:
        raise
    except Exception as exc:  # the reader raises many types; all mean a malformed file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedModelError(f"{path.name}: cannot read GGUF: {msg}") from None


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


def validate_model(model) -> None:
    cfg = model.config
    name = model.path.name
    if cfg.n_head <= 0 or cfg.n_head_kv <= 0 or cfg.n_head % cfg.n_head_kv:
        raise MalformedModelError(f"{name}: head_count {cfg.n_head} is not a multiple of head_count_kv {cfg.n_head_kv}")
    if cfg.n_vocab <= 0:
        raise MalformedModelError(f"{name}: vocabulary size is 0 (no tokenizer.ggml.tokens)")
    for tname, shape in expected_shapes(cfg).items():
        t = model.tensors.get(tname)
        if t is None:
            raise MalformedModelError(f"{name}: missing tensor {tname!r}")
        if tuple(t.shape) != shape:
            raise MalformedModelError(f"{name}: tensor {tname!r} has shape {list(t.shape)}, expected {list(shape)}")
