"""The classes of bad GGUF files that used to get through: wrong tokenizer types, FIFOs, lying arrays, wrong blame.

Each test builds its own file with the byte-level serializer (tests/gguf_bytes.py) and reads the
message; the last class is a file llama.cpp accepts (a norm stored as [n, 1]) that qprof must load.
"""

from __future__ import annotations

import os
import signal
import struct
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from gguf_bytes import ARR, KV, N_EMBD, N_VOCAB, STR, U32, base_spec, expect_error, pack_str, with_kv, write

from qprof.cli import main
from qprof.errors import MalformedModelError, QprofError
from qprof.model.gguf_file import load_model
from qprof.model.gguf_reader import MAX_ARRAY_ITEMS

# --- 1. a tokenizer key of the wrong type is refused at load, by `workloads info` and by `generate` alike ---


@pytest.mark.parametrize("key, vtype, value, needle", [
    ("tokenizer.ggml.eos_token_id", STR, "2", "'tokenizer.ggml.eos_token_id' must be an integer, got string '2'"),
    ("tokenizer.ggml.bos_token_id", STR, "one", "'tokenizer.ggml.bos_token_id' must be an integer"),
    ("tokenizer.chat_template", U32, 7, "'tokenizer.chat_template' must be a string, got integer 7"),
    ("tokenizer.ggml.model", U32, 1, "'tokenizer.ggml.model' must be a string"),
])
def test_wrongly_typed_tokenizer_key_is_one_line_everywhere(tmp_path, key, vtype, value, needle):
    path = write(tmp_path, with_kv(key, vtype, value)(), "typed.gguf")
    expect_error(path, needle, kind=MalformedModelError)
    for args in (["workloads", "info", str(path)], ["generate", "-m", str(path), "-n", "2", "--device", "cpu"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qprof: error: typed.gguf: metadata key "), res.output
        assert needle in res.output and "Traceback" not in res.output


# --- 2. a path that is not a regular file is refused before open() (a FIFO would block it forever) ---


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)

    def hung(signum, frame):
        raise AssertionError("load_model blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(QprofError, match=r"model path is a FIFO \(named pipe\), not a GGUF file: .*pipe.gguf"):
            load_model(fifo)
        res = CliRunner().invoke(main, ["workloads", "info", str(fifo)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert res.exit_code == 2 and res.output.startswith("qprof: error: model path is a FIFO")


# --- 3. arrays whose declared length fits the file but whose items do not add up ---


def _tokens_at(data: bytes) -> int:
    """Offset of the tokens array's length field."""
    return data.index(pack_str("tokenizer.ggml.tokens")) + len(pack_str("tokenizer.ggml.tokens")) + 4 + 4


def test_string_array_longer_than_its_items_fails_fast_naming_the_key(tmp_path):
    """The declared count passes the 8-bytes-per-string bound, but past the real tokens the items are garbage.

    Zero bytes read as empty strings, so a reader that walks item by item runs on through them; this one
    stops once the strings left cannot fit in the bytes left, naming the key, with bounded memory."""
    spec = base_spec()
    spec.tensors.append(replace(spec.tensors[1], name="zeros.weight", ne=[1 << 18], data=bytes(4 << 18)))
    data = bytearray(spec.build())
    at = _tokens_at(bytes(data))
    declared = (len(data) - at) // 8 - 4  # the file could hold this many empty strings
    data[at:at + 8] = struct.pack("<Q", declared)
    tracemalloc.start()
    msg = expect_error(write(tmp_path, bytes(data)), "metadata key 'tokenizer.ggml.tokens'",
                       "the array's length or an item's length is wrong", kind=MalformedModelError)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"of its {declared} strings are left" in msg
    assert peak < 64 << 20, f"{peak / 1e6:.0f} MB traced while reading a {len(data) / 1e6:.1f} MB file"


def test_bad_string_length_is_blamed_on_its_own_key(tmp_path):
    data = bytearray(base_spec().build())
    key = pack_str("tokenizer.ggml.tokens")
    first_item = data.index(key) + len(key) + 4 + 4 + 8
    data[first_item + 8 * 0:first_item + 8] = struct.pack("<Q", 10**9)
    expect_error(write(tmp_path, bytes(data)), "metadata key 'tokenizer.ggml.tokens': string #0 of 32",
                 "length 1000000000", "runs past the end of the file", kind=MalformedModelError)
    scalar = bytearray(base_spec().build())
    at = scalar.index(pack_str("tokenizer.ggml.model")) + len(pack_str("tokenizer.ggml.model")) + 4
    scalar[at:at + 8] = struct.pack("<Q", 1 << 40)
    expect_error(write(tmp_path, bytes(scalar), "s.gguf"), "metadata key 'tokenizer.ggml.model': string length",
                 kind=MalformedModelError)


def test_absurd_array_count_is_refused_before_any_walk(tmp_path):
    big = base_spec()
    big.tensors.append(replace(big.tensors[1], name="zeros.weight", ne=[MAX_ARRAY_ITEMS * 3],
                               data=bytes(12 * MAX_ARRAY_ITEMS)))
    data = bytearray(big.build())
    at = _tokens_at(bytes(data))
    data[at:at + 8] = struct.pack("<Q", MAX_ARRAY_ITEMS + 1)
    expect_error(write(tmp_path, bytes(data)), "'tokenizer.ggml.tokens' declares an array of 4194305 items",
                 kind=MalformedModelError)


# --- 4. the right field is blamed ---


def test_key_count_one_too_few_names_the_key_left_over(tmp_path):
    spec = base_spec()
    data = replace(spec, kv_count=len(spec.kvs) - 1).build()
    expect_error(write(tmp_path, data), "declares 10 metadata keys, but key 'tokenizer.ggml.tokens' follows them",
                 "key count is too low", kind=MalformedModelError)


def test_tensor_count_one_too_few_names_the_record_left_over(tmp_path):
    spec = base_spec()
    data = replace(spec, tensor_count=len(spec.tensors) - 1).build()
    expect_error(write(tmp_path, data), f"declares {len(spec.tensors) - 1} tensors, but a tensor info record",
                 repr(spec.tensors[-1].name), "tensor count is too low", kind=MalformedModelError)


def test_key_count_one_too_many_says_a_key_looks_like_a_tensor(tmp_path):
    spec = base_spec()
    data = replace(spec, kv_count=len(spec.kvs) + 1).build()
    msg = expect_error(write(tmp_path, data), kind=MalformedModelError)
    assert "'token_embd.weight' looks like a tensor name" in msg and "key count may exceed" in msg, msg


def test_head_count_not_dividing_the_embedding_is_named_as_such(tmp_path):
    path = write(tmp_path, with_kv("llama.attention.head_count", U32, 3)())
    expect_error(path, "llama.embedding_length 256 is not a multiple of llama.attention.head_count 3",
                 kind=MalformedModelError)


def test_invalid_utf8_in_a_key_or_tensor_name(tmp_path):
    spec = base_spec()
    spec.kvs.insert(3, KV(b"llama.\xff\xfe", U32, 1))
    expect_error(write(tmp_path, spec.build()), "metadata key #4 of 12 (after 'llama.embedding_length')",
                 "not valid UTF-8", kind=MalformedModelError)
    spec = base_spec()
    spec.tensors[2] = replace(spec.tensors[2], name=b"output.\xc3(")
    expect_error(write(tmp_path, spec.build(), "t.gguf"), "tensor #3 of", "not valid UTF-8", kind=MalformedModelError)


def _nested_array(depth: int) -> bytes:
    value = struct.pack("<IQ", U32, 1) + struct.pack("<I", 1)
    for _ in range(depth):
        value = struct.pack("<IQ", ARR, 1) + value
    return pack_str("general.nested") + struct.pack("<I", ARR) + value


@pytest.mark.parametrize("depth", [1, 5000])
def test_nested_arrays_are_refused_naming_the_key(tmp_path, depth):
    spec = base_spec()
    data = spec.build()
    head = data.index(pack_str("general.architecture"))
    body = data[:head] + _nested_array(depth) + data[head:]
    body = body[:16] + struct.pack("<Q", len(spec.kvs) + 1) + body[24:]
    expect_error(write(tmp_path, body), "metadata key 'general.nested' is an array of arrays",
                 kind=MalformedModelError)


# --- 5. what llama.cpp accepts ---


def test_norm_stored_with_a_trailing_unit_dimension_loads(tmp_path):
    spec = base_spec()
    spec.tensors = [replace(t, ne=[N_EMBD, 1]) if t.name.endswith("norm.weight") else t for t in spec.tensors]
    model = load_model(write(tmp_path, spec.build()))
    assert model.tensors["blk.0.attn_norm.weight"].shape == (N_EMBD,)
    assert model.tensors["output_norm.weight"].shape == (N_EMBD,)
    assert np.frombuffer(model.tensors["output_norm.weight"].raw.tobytes(), "<f4").tolist() == [1.0] * N_EMBD
    assert model.config.n_vocab == N_VOCAB
