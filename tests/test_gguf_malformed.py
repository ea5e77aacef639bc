"""A corpus of malformed GGUF files, generated here byte by byte: each must fail with one clear line.

The files are built by a tiny serializer (not the writer) so that every field, count and offset can
be made to lie. The base model is small but has every supported quant family in it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.model.gguf_file import load_model
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import QUANT_TRAITS

# GGUF value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
           F64: "d"}  # fmt: skip

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_VOCAB = 256, 4, 2, 64, 256, 32


def pack_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def pack_value(vtype: int, value, sub: int | None = None) -> bytes:
    if vtype == STR:
        return pack_str(value)
    if vtype == ARR:
        return struct.pack("<IQ", sub, len(value)) + b"".join(pack_value(sub, v) for v in value)
    return struct.pack("<" + _SCALAR[vtype], value)


@dataclass
class KV:
    key: str
    vtype: int
    value: object
    sub: int | None = None

    def encode(self) -> bytes:
        return pack_str(self.key) + struct.pack("<I", self.vtype) + pack_value(self.vtype, self.value, self.sub)


@dataclass
class Tensor:
    name: str
    ne: list[int]  # ggml order: ne[0] is the row length
    type_id: int
    data: bytes
    offset: int | None = None  # None: the natural, aligned position


@dataclass
class Spec:
    kvs: list[KV]
    tensors: list[Tensor]
    version: int = 3
    tensor_count: int | None = None
    kv_count: int | None = None
    magic: bytes = b"GGUF"
    alignment: int = 32
    extra_info: bytes = b""  # raw bytes appended after the tensor infos (to fake extra records)

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key)

    def tensor(self, name: str) -> Tensor:
        return next(t for t in self.tensors if t.name == name)

    def build(self) -> bytes:
        a = self.alignment
        infos, data, natural = b"", b"", []
        for t in self.tensors:
            data += b"\0" * (-len(data) % a)
            natural.append(len(data))
            data += t.data
        for t, nat in zip(self.tensors, natural):
            off = nat if t.offset is None else t.offset
            infos += pack_str(t.name) + struct.pack("<I", len(t.ne)) + b"".join(struct.pack("<Q", d) for d in t.ne)
            infos += struct.pack("<IQ", t.type_id, off)
        head = self.magic + struct.pack("<I", self.version)
        head += struct.pack("<QQ", len(self.tensors) if self.tensor_count is None else self.tensor_count,
                            len(self.kvs) if self.kv_count is None else self.kv_count)
        body = head + b"".join(k.encode() for k in self.kvs) + infos + self.extra_info
        return body + b"\0" * (-len(body) % a) + data


def valid_blocks(qtype: str, n_rows: int, n_cols: int, rng: np.random.Generator) -> bytes:
    t = QUANT_TRAITS[qtype]
    blocks = rng.integers(0, 256, size=(n_rows * n_cols // t.block_values, t.block_bytes), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        blocks[:, off : off + 2] = np.full(len(blocks), 0.01, np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.tobytes()


# Every family in one model: legacy, K-quants and floats.
LAYER_TYPES = {"attn_q": "Q4_K", "attn_k": "Q4_0", "attn_v": "Q5_K", "attn_output": "Q3_K", "ffn_gate": "Q2_K",
               "ffn_up": "Q4_1", "ffn_down": "Q5_1"}  # fmt: skip


def base_spec(tied: bool = False) -> Spec:
    rng = np.random.default_rng(0)
    kvs = [
        KV("general.architecture", STR, "llama"),
        KV("llama.context_length", U32, 128),
        KV("llama.embedding_length", U32, N_EMBD),
        KV("llama.block_count", U32, 1),
        KV("llama.feed_forward_length", U32, N_FF),
        KV("llama.attention.head_count", U32, N_HEAD),
        KV("llama.attention.head_count_kv", U32, N_HEAD_KV),
        KV("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        KV("llama.rope.freq_base", F32, 10000.0),
        KV("tokenizer.ggml.model", STR, "llama"),
        KV("tokenizer.ggml.tokens", ARR, [f"t{i}" for i in range(N_VOCAB)], STR),
    ]

    def mat(name: str, qtype: str, rows: int, cols: int) -> Tensor:
        if qtype == "F16":
            data = (rng.standard_normal((rows, cols)) * 0.02).astype("<f2").tobytes()
        else:
            data = valid_blocks(qtype, rows, cols, rng)
        return Tensor(name, [cols, rows], QUANT_TRAITS[qtype].ggml_type, data)

    def norm(name: str) -> Tensor:
        return Tensor(name, [N_EMBD], 0, np.ones(N_EMBD, "<f4").tobytes())

    kv_dim, q_dim = N_HEAD_KV * HEAD_DIM, N_HEAD * HEAD_DIM
    tensors = [mat("token_embd.weight", "Q8_0", N_VOCAB, N_EMBD), norm("output_norm.weight")]
    if not tied:
        tensors.append(mat("output.weight", "Q6_K", N_VOCAB, N_EMBD))
    rows_cols = {"attn_q": (q_dim, N_EMBD), "attn_k": (kv_dim, N_EMBD), "attn_v": (kv_dim, N_EMBD),
                 "attn_output": (N_EMBD, q_dim), "ffn_gate": (N_FF, N_EMBD), "ffn_up": (N_FF, N_EMBD),
                 "ffn_down": (N_EMBD, N_FF)}  # fmt: skip
    tensors += [norm("blk.0.attn_norm.weight"), norm("blk.0.ffn_norm.weight")]
    tensors += [mat(f"blk.0.{k}.weight", LAYER_TYPES[k], *rows_cols[k]) for k in LAYER_TYPES]
    return Spec(kvs, tensors)


def write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expect_error(path: Path, *needles: str, kind: type[QprofError] = QprofError) -> str:
    with pytest.raises(kind) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(path.name) or "not found" in msg or "directory" in msg, msg
    for needle in needles:
        assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    return msg


# --- the corpus -------------------------------------------------------------------------------------
# Each case: (id, function spec/bytes -> bytes, expected substrings, error class)


def _without_key(key: str):
    def make() -> bytes:
        s = base_spec()
        s.kvs = [k for k in s.kvs if k.key != key]
        return s.build()

    return make


def _with_kv(key: str, vtype: int, value, sub: int | None = None):
    def make() -> bytes:
        s = base_spec()
        s.kvs = [k for k in s.kvs if k.key != key] + [KV(key, vtype, value, sub)]
        return s.build()

    return make


def _with_tensor(name: str, **changes):
    def make() -> bytes:
        s = base_spec()
        s.tensors = [replace(t, **changes) if t.name == name else t for t in s.tensors]
        return s.build()

    return make


def _spec(**changes):
    return lambda: replace(base_spec(), **changes).build()


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
    ("bad-magic", _spec(magic=b"GGML"), ["not a GGUF file", "GGML"], MalformedModelError),
    ("version-0", _spec(version=0), ["unsupported GGUF version 0"], UnsupportedError),
    ("version-1", _spec(version=1), ["unsupported GGUF version 1"], UnsupportedError),
    ("version-99", _spec(version=99), ["unsupported GGUF version 99"], UnsupportedError),
    ("big-endian", _spec(version=3 << 24), ["big-endian"], UnsupportedError),
    ("missing-architecture", _without_key("general.architecture"), ["general.architecture"], MalformedModelError),
    ("missing-embedding-length", _without_key("llama.embedding_length"), ["llama.embedding_length"],
     MalformedModelError),
    ("missing-block-count", _without_key("llama.block_count"), ["llama.block_count"], MalformedModelError),
    ("missing-head-count", _without_key("llama.attention.head_count"), ["llama.attention.head_count"],
     MalformedModelError),
    ("missing-feed-forward-length", _without_key("llama.feed_forward_length"), ["llama.feed_forward_length"],
     MalformedModelError),
    ("missing-context-length", _without_key("llama.context_length"), ["llama.context_length"], MalformedModelError),
    ("wrong-type-block-count", _with_kv("llama.block_count", STR, "one"), ["llama.block_count", "integer"],
     MalformedModelError),
    ("unknown-tensor-type", _with_tensor("blk.0.attn_k.weight", type_id=99),
     ["blk.0.attn_k.weight", "unknown tensor type id 99"], MalformedModelError),
    ("unsupported-tensor-type", _with_tensor("blk.0.attn_k.weight", type_id=16),
     ["blk.0.attn_k.weight", "IQ2_XXS", "does not support"], UnsupportedError),
    ("offset-out-of-bounds", _with_tensor("blk.0.attn_q.weight", offset=1 << 40),
     ["blk.0.attn_q.weight", "runs past the end"], MalformedModelError),
    ("offset-past-4gib-with-alignment-key", _far_offset_with_alignment_key,
     ["blk.0.attn_v.weight", "offset 5368709120", "runs past the end"], MalformedModelError),
    ("offset-misaligned", _with_tensor("blk.0.attn_q.weight", offset=7),
     ["blk.0.attn_q.weight", "not a multiple of the alignment"], MalformedModelError),
    ("overlapping-tensors", _overlap, ["overlap"], MalformedModelError),
    ("shape-vs-config", _with_kv("llama.feed_forward_length", U32, 512),
     ["blk.0.ffn_gate.weight", "shape", "512"], MalformedModelError),
    ("arch-gpt2", _with_kv("general.architecture", STR, "gpt2"), ["unsupported architecture 'gpt2'"],
     UnsupportedError),
    ("arch-falcon", _with_kv("general.architecture", STR, "falcon"), ["unsupported architecture 'falcon'"],
     UnsupportedError),
    ("tensor-count-too-high", _spec(tensor_count=len(base_spec().tensors) + 1),
     ["tensor count may exceed the tensors present"], MalformedModelError),
    ("tensor-count-absurd", _spec(tensor_count=1 << 50), ["declares", "tensors"], MalformedModelError),
    ("kv-count-absurd", _spec(kv_count=1 << 40), ["metadata keys"], MalformedModelError),
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
    ("heads-not-divisible", _with_kv("llama.attention.head_count_kv", U32, 3),
     ["head_count 4", "head_count_kv 3"], MalformedModelError),
    ("zero-vocabulary", _with_kv("tokenizer.ggml.tokens", ARR, [], STR), ["vocabulary size is 0"],
     MalformedModelError),
    ("rows-not-block-multiple", _bad_rows, ["extra.weight", "48", "block size 32"], MalformedModelError),
    ("negative-dim", _with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, (1 << 64) - 5]), ["negative dimension -5"],
     MalformedModelError),
    ("huge-dim", _with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, 1 << 45]), ["absurd dimension"],
     MalformedModelError),
    ("too-many-dims", _with_tensor("blk.0.attn_k.weight", ne=[N_EMBD, 2, 2, 2, 2, 2, 2]), ["7 dimensions"],
     MalformedModelError),
    ("quantized-norm", _quantized_norm, ["norm tensor 'blk.0.attn_norm.weight' is Q8_0"], MalformedModelError),
    ("bad-alignment", _bad_alignment, ["alignment"], MalformedModelError),
    ("unknown-value-type", _unknown_value_type, ["unknown metadata value type 77", "llama.attention"],
     MalformedModelError),
    ("huge-metadata-array", _huge_array, ["array of", "runs past the end"], MalformedModelError),
    ("absurd-embedding-length", _with_kv("llama.embedding_length", U32, 0), ["n_embd = 0"], MalformedModelError),
    ("nan-rms-eps", _with_kv("llama.attention.layer_norm_rms_epsilon", F32, float("nan")), ["rms_eps"],
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

    path = write(tmp_path, _spec(version=99)())
    result = CliRunner().invoke(main, ["workloads", "info", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"qprof: error: {path.name}: unsupported GGUF version 99 (supported: 2, 3)"]
