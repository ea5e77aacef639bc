"""Test helper: GGUF files written byte by byte by a tiny serializer, so every field, count and offset can lie.

The base model is small but has every supported quant family in it (legacy, K-quants, floats).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from qprof.errors import QprofError
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


def without_key(key: str):
    def make() -> bytes:
        s = base_spec()
        s.kvs = [k for k in s.kvs if k.key != key]
        return s.build()

    return make


def with_kv(key: str, vtype: int, value, sub: int | None = None):
    def make() -> bytes:
        s = base_spec()
        s.kvs = [k for k in s.kvs if k.key != key] + [KV(key, vtype, value, sub)]
        return s.build()

    return make


def with_tensor(name: str, **changes):
    def make() -> bytes:
        s = base_spec()
        s.tensors = [replace(t, **changes) if t.name == name else t for t in s.tensors]
        return s.build()

    return make


def spec_with(**changes):
    return lambda: replace(base_spec(), **changes).build()
