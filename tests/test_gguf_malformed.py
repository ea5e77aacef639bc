"""A corpus of malformed GGUF files, generated here byte by byte: each must fail with one clear line.

The files are built by a tiny serializer (not the writer) so that every field, count and offset can
be made to lie. The base model is small but has every supported quant family in it.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from gguf_bytes import (
    ARR,
    F32,
    KV,
    N_EMBD,
    N_VOCAB,
    STR,
    U32,
    Tensor,
    base_spec,
    expect_error,
    pack_str,
    spec_with,
    valid_blocks,
    with_kv,
    with_tensor,
    without_key,
    write,
)

from qprof.errors import MalformedModelError, UnsupportedError
from qprof.model.gguf_file import load_model
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import QUANT_TRAITS

# --- the corpus -------------------------------------------------------------------------------------
# Each case: (id, function spec/bytes -> bytes, expected substrings, error class)


def _truncated_at(fraction_of: str, back: int = 0):
    """Cut the valid file inside the given section."""

    def make() -> bytes:
        s = base_spec()
        full = s.build()
        head = 24
        kv_end = head + sum(len(k.encode()) for k in s.kvs)
        if fraction_of == "metadata":
            return full[: (head + kv_end) // 2]
        if fraction_of == "infos":
            return full[: kv_end + 40]
        return full[: len(full) - back]

    return make


def _poke_scale(name: str, field_index: int, block: int, value: float):
    def make() -> bytes:
        s = base_spec()
        t = s.tensor(name)
        qt = next(q for q in QUANT_TRAITS.values() if q.ggml_type == t.type_id)
        data = bytearray(t.data)
        at = block * qt.block_bytes + FP16_FIELDS[qt.name][field_index]
        data[at : at + 2] = np.array([value], np.float16).tobytes()
        t.data = bytes(data)
        return s.build()

    return make


def _nan_norm() -> bytes:
    s = base_spec()
    t = s.tensor("blk.0.ffn_norm.weight")
    values = np.ones(N_EMBD, "<f4")
    values[17] = np.nan
    t.data = values.tobytes()
    return s.build()


def _duplicate_tensor() -> bytes:
    s = base_spec()
    s.tensors.append(replace(s.tensor("blk.0.attn_norm.weight")))
    return s.build()


def _missing_tensor() -> bytes:
    s = base_spec()
    s.tensors = [t for t in s.tensors if t.name != "blk.0.ffn_up.weight"]
    return s.build()


def _duplicate_key() -> bytes:
    s = base_spec()
    s.kvs.append(KV("llama.block_count", U32, 1))
    return s.build()


def _quantized_norm() -> bytes:
    s = base_spec()
    rng = np.random.default_rng(1)
    s.tensors = [
        Tensor(t.name, t.ne, 8, valid_blocks("Q8_0", 1, N_EMBD, rng)) if t.name == "blk.0.attn_norm.weight" else t
        for t in s.tensors
    ]
    return s.build()


def _overlap() -> bytes:
    s = base_spec()
    s.tensor("blk.0.ffn_norm.weight").offset = 0  # lands on token_embd's data
    return s.build()


def _bad_alignment() -> bytes:
    s = base_spec()
    s.kvs.append(KV("general.alignment", U32, 3))
    return s.build()


def _unknown_value_type() -> bytes:
    s = base_spec()
    data = s.build()
    key = pack_str("llama.rope.freq_base")
    at = data.index(key) + len(key)
    return data[:at] + struct.pack("<I", 77) + data[at + 4 :]


def _huge_array() -> bytes:
    s = base_spec()
    data = s.build()
    key = pack_str("tokenizer.ggml.tokens")
    at = data.index(key) + len(key) + 4 + 4  # value type, item type -> length
    return data[:at] + struct.pack("<Q", 1 << 60) + data[at + 8 :]


def _far_offset_with_alignment_key() -> bytes:
    # general.alignment makes the reader's offsets numpy uint32; an offset past 4 GiB must not wrap.
    s = base_spec()
    s.kvs.append(KV("general.alignment", U32, 32))
    s.tensor("blk.0.attn_v.weight").offset = 5 << 30
    return s.build()


def _bad_rows() -> bytes:
    # A Q4_0 tensor whose rows are 48 values: not a whole number of 32-value blocks.
    s = base_spec()
    s.tensors.append(Tensor("extra.weight", [48, 2], 2, bytes(2 * 27)))
    return s.build()


CASES = [
    ("empty", lambda: b"", ["empty"], MalformedModelError),
    ("truncated-header", lambda: base_spec().build()[:10], ["truncated in the header"], MalformedModelError),
    ("truncated-metadata", _truncated_at("metadata"), ["truncated in the metadata"], MalformedModelError),
    ("truncated-tensor-infos", _truncated_at("infos"), ["truncated in the tensor infos"], MalformedModelError),
    ("truncated-tensor-data", _truncated_at("data", back=100), ["runs past the end"], MalformedModelError),
    ("bad-magic", spec_with(magic=b"GGML"), ["not a GGUF file", "GGML"], MalformedModelError),
    ("version-0", spec_with(version=0), ["unsupported GGUF version 0"], UnsupportedError),
    ("version-1", spec_with(version=1), ["unsupported GGUF version 1"], UnsupportedError),
    ("version-99", spec_with(version=99), ["unsupported GGUF version 99"], UnsupportedError),
    ("big-endian", spec_with(version=3 << 24), ["big-endian"], UnsupportedError),
    ("missing-architecture", without_key("general.architecture"), ["general.architecture"], MalformedModelError),
    ("missing-embedding-length", without_key("llama.embedding_length"), ["llama.embedding_length"],
     MalformedModelError),
    ("missing-block-count", without_key("llama.block_count"), ["llama.block_count"], MalformedModelError),
    ("missing-head-count", without_key("llama.attention.head_count"), ["llama.attention.head_count"],
     MalformedModelError),
    ("missing-feed-forward-length", without_key("llama.feed_forward_length"), ["llama.feed_forward_length"],
     MalformedModelError),
    ("missing-context-length", without_key("llama.context_length"), ["llama.context_length"], MalformedModelError),
    ("wrong-type-block-count", with_kv("llama.block_count", STR, "one"), ["llama.block_count", "integer"],
     MalformedModelError),
    ("unknown-tensor-type", with_tensor("blk.0.attn_k.weight", type_id=99),
     ["blk.0.attn_k.weight", "unknown tensor type id 99"], MalformedModelError),
    ("unsupported-tensor-type", with_tensor("blk.0.attn_k.weight", type_id=16),
     ["blk.0.attn_k.weight", "IQ2_XXS", "does not support"], UnsupportedError),
    ("offset-out-of-bounds", with_tensor("blk.0.attn_q.weight", offset=1 << 40),
     ["blk.0.attn_q.weight", "runs past the end"], MalformedModelError),
    ("offset-past-4gib-with-alignment-key", _far_offset_with_alignment_key,
     ["blk.0.attn_v.weight", "offset 5368709120", "runs past the end"], MalformedModelError),
    ("offset-misaligned", with_tensor("blk.0.attn_q.weight", offset=7),
     ["blk.0.attn_q.weight", "not a multiple of the alignment"], MalformedModelError),
    ("overlapping-tensors", _overlap, ["overlap"], MalformedModelError),
    ("shape-vs-config", with_kv("llama.feed_forward_length", U32, 512),
     ["blk.0.ffn_gate.weight", "shape", "512"], MalformedModelError),
    ("arch-gpt2", with_kv("general.architecture", STR, "gpt2"), ["unsupported architecture 'gpt2'"],
     UnsupportedError),
    ("arch-falcon", with_kv("general.architecture", STR, "falcon"), ["unsupported architecture 'falcon'"],
     UnsupportedError),
    ("tensor-count-too-high", spec_with(tensor_count=len(base_spec().tensors) + 1),
     ["tensor count may exceed the tensors present"], MalformedModelError),
    ("tensor-count-absurd", spec_with(tensor_count=1 << 50), ["declares", "tensors"], MalformedModelError),
    ("kv-count-absurd", spec_with(kv_count=1 << 40), ["metadata keys"], MalformedModelError),
    ("missing-tensor", _missing_tensor, ["missing tensor 'blk.0.ffn_up.weight'"], MalformedModelError),
    ("duplicate-tensor", _duplicate_tensor, ["duplicate tensor name 'blk.0.attn_norm.weight'"],
     MalformedModelError),
    ("duplicate-key", _duplicate_key, ["duplicate metadata key 'llama.block_count'"], MalformedModelError),
    ("nan-scale-q4_k", _poke_scale("blk.0.attn_q.weight", 0, 5, np.nan),
     ["blk.0.attn_q.weight", "block 5", "scale d"], MalformedModelError),
    ("inf-dmin-q2_k", _poke_scale("blk.0.ffn_gate.weight", 1, 3, np.inf),
     ["blk.0.ffn_gate.weight", "block 3", "dmin"], MalformedModelError),
    ("nan-scale-q8_0-embd", _poke_scale("token_embd.weight", 0, 9, np.nan),
     ["token_embd.weight", "block 9", "row 1"], MalformedModelError),
    ("inf-min-q4_1", _poke_scale("blk.0.ffn_up.weight", 1, 0, -np.inf), ["blk.0.ffn_up.weight", "block 0", " m "],
     MalformedModelError),
    ("nan-f32-norm", _nan_norm, ["blk.0.ffn_norm.weight", "NaN", "17"], MalformedModelError),
    ("heads-not-divisible", with_kv("llama.attention.head_count_kv", U32, 3),
     ["head_count 4", "head_count_kv 3"], MalformedModelError),
    ("zero-vocabulary", with_kv("tokenizer.ggml.tokens", ARR, [], STR), ["vocabulary size is 0"],
     MalformedModelError),
    ("rows-not-block-multiple", _bad_rows, ["extra.weight", "48", "block size 32"], MalformedModelError),
    ("negative-dim", with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, (1 << 64) - 5]), ["negative dimension -5"],
     MalformedModelError),
    ("huge-dim", with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, 1 << 45]), ["absurd dimension"],
     MalformedModelError),
    ("too-many-dims", with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, 2, 2, 2, 2, 2, 2]), ["7 dimensions"],
     MalformedModelError),
    ("quantized-norm", _quantized_norm, ["norm tensor 'blk.0.attn_norm.weight' is Q8_0"], MalformedModelError),
    ("bad-alignment", _bad_alignment, ["alignment"], MalformedModelError),
    ("unknown-value-type", _unknown_value_type, ["metadata key 'llama.rope.freq_base' has unknown value type 77"],
     MalformedModelError),
    ("huge-metadata-array", _huge_array, ["array of", "runs past the end"], MalformedModelError),
    ("absurd-embedding-length", with_kv("llama.embedding_length", U32, 0), ["n_embd = 0"], MalformedModelError),
    ("nan-rms-eps", with_kv("llama.attention.layer_norm_rms_epsilon", F32, float("nan")), ["rms_eps"],
     MalformedModelError),
]


def test_corpus_is_large_enough():
    assert len(CASES) >= 24
    assert len({c[0] for c in CASES}) == len(CASES)


def test_base_spec_is_valid(tmp_path):
    """The corpus is only meaningful if its unbroken base loads cleanly (tied and untied)."""
    model = load_model(write(tmp_path, base_spec().build()))
    assert model.config.n_embd == N_EMBD and not model.config.tied_embeddings
    assert model.config.n_vocab == N_VOCAB  # no llama.vocab_size key: counted from tokenizer.ggml.tokens
    assert model.type_counts()["Q4_K"] == 1
    tied = load_model(write(tmp_path, base_spec(tied=True).build(), "tied.gguf"))
    assert tied.config.tied_embeddings


@pytest.mark.parametrize(("case", "make", "needles", "kind"), CASES, ids=[c[0] for c in CASES])
def test_malformed_file_gives_one_line(tmp_path, case, make, needles, kind):
    expect_error(write(tmp_path, make(), f"{case}.gguf"), *needles, kind=kind)


def test_missing_path_and_directory(tmp_path):
    expect_error(tmp_path / "nope.gguf", "not found")
    expect_error(tmp_path, "directory")


@pytest.mark.parametrize("cut", [25, 100, 333, 1000, 5000])
def test_truncation_anywhere_in_the_metadata_is_clean(tmp_path, cut):
    """Cuts at arbitrary points, not only section boundaries, still give one line."""
    msg = expect_error(write(tmp_path, base_spec().build()[:cut]), "truncated", kind=MalformedModelError)
    assert "Traceback" not in msg


def test_value_scan_can_be_skipped(tmp_path):
    """check_values=False is the opt-out for freshly written files; structure is still checked."""
    path = write(tmp_path, _poke_scale("blk.0.attn_q.weight", 0, 5, np.nan)())
    assert load_model(path, check_values=False).config.n_layer == 1
    expect_error(path, "block 5")


def test_cli_reports_malformed_file_in_one_line(tmp_path):
    from qprof.cli import main

    path = write(tmp_path, spec_with(version=99)())
    result = CliRunner().invoke(main, ["workloads", "info", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"qprof: error: {path.name}: unsupported GGUF version 99 (supported: 2, 3)"]
