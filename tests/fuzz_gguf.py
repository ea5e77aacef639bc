"""Coverage-guided fuzzing (atheris / libFuzzer) of GGUF bytes -> load_model -> tokenizer -> one CPU prefill.

Every input must end in success or in one QprofError with a one-line message; anything else (another
exception, a message over several lines, a hang past -timeout, memory past -rss_limit_mb) is a crash
that libFuzzer saves as crash-<hash> for replay. Run it for longer than the CI test does:

    python tests/fuzz_gguf.py -max_total_time=600 -rss_limit_mb=4096 -timeout=20 fuzz-corpus/
    python tests/fuzz_gguf.py crash-<hash>          # replay one saved input

An input that starts with b"GGUF" is the file itself; any other input is a list of edits to a valid
model (metadata keys replaced with values of any type or dropped, tensor shapes and types changed),
which reaches the tokenizer and the runtime far more often than raw byte flips. An empty corpus folder
is seeded first with two small valid models (every quant family; a working SentencePiece vocabulary)
and one edit list.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's qprof, and the test helpers
os.environ.setdefault("HF_HUB_OFFLINE", "1")

INSTRUMENTED = ["qprof", "gguf"]
with atheris.instrument_imports(include=INSTRUMENTED):
    from qprof.errors import QprofError
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.cpu import CpuRuntime

# each input is written here and removed after it ran (libFuzzer ends the process without Python's atexit)
SCRATCH = Path(tempfile.gettempdir()) / f"qprof-fuzz-{os.getpid()}.gguf"
MAX_PROMPT = 8


def seed_files() -> dict[str, bytes]:
    """Valid inputs to start from: the malformed corpus's base model (with a usable vocabulary) and a tiny
    transformers-converted model."""
    import torch
    from tiny_gguf import hf_model, write_gguf

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_gguf(Path(tmp) / "tiny.gguf", hf_model(seed=1, n_layer=1)).read_bytes()
    return {"base-every-quant-family.gguf": structured_base().build(), "tiny-hf-llama.gguf": tiny,
            "edits-of-the-base.bin": bytes(range(1, 64))}


# Structured inputs (any that do not start with b"GGUF") edit a valid model instead: the fuzzer's bytes pick
# metadata keys to replace or drop, with values of any GGUF type, and tensor shapes and types. Raw bytes
# rarely make a well-formed file with a value of the wrong type; these reach the tokenizer and the runtime.
EDIT_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count",
             "attention.key_length", "attention.sliding_window", "vocab_size")
TOKENIZER_KEYS = ("model", "pre", "tokens", "scores", "token_type", "merges", "bos_token_id", "eos_token_id",
                  "eot_token_id", "fim_rep_token_id", "padding_token_id", "add_bos_token", "add_space_prefix")


def _value(fdp) -> tuple:
    from gguf_bytes import ARR, BOOL, F32, F64, I32, I64, STR, U8, U32, U64

    def f32() -> float:  # any float32, inf and NaN included (a double past float32's range packs as inf)
        with np.errstate(over="ignore"):
            return float(np.float32(fdp.ConsumeFloat()))

    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return (U32, fdp.ConsumeIntInRange(0, 2**32 - 1))
    if kind == 1:
        return (I32, fdp.ConsumeIntInRange(-2**31, 2**31 - 1))
    if kind == 2:
        return (F32, f32())
    if kind == 3:
        return (STR, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16)))
    if kind == 4:
        return (BOOL, fdp.ConsumeBool())
    if kind == 5:
        return (U64, fdp.ConsumeIntInRange(0, 2**64 - 1))
    if kind == 6:
        return (I64, fdp.ConsumeIntInRange(-2**63, 2**63 - 1))
    if kind == 7:
        return (F64, fdp.ConsumeFloat())
    if kind == 8:
        return (U8, fdp.ConsumeIntInRange(0, 255))
    sub = fdp.PickValueInList([U32, I32, F32, STR, BOOL])
    n = fdp.ConsumeIntInRange(0, 40)
    items = {U32: lambda: fdp.ConsumeIntInRange(0, 300), I32: lambda: fdp.ConsumeIntInRange(-3, 300),
             F32: f32, STR: lambda: fdp.ConsumeUnicodeNoSurrogates(4), BOOL: fdp.ConsumeBool}[sub]
    return (ARR, [items() for _ in range(n)], sub)


def edited_model(data: bytes) -> bytes:
    from dataclasses import replace

    from gguf_bytes import KV

    fdp = atheris.FuzzedDataProvider(data)
    spec = structured_base()
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        action = fdp.ConsumeIntInRange(0, 3)
        if action <= 1:
            name = fdp.PickValueInList([f"llama.{k}" for k in EDIT_KEYS] + [f"tokenizer.ggml.{k}" for k in TOKENIZER_KEYS]
                                       + ["tokenizer.chat_template", "general.alignment", "general.architecture"])
            spec.kvs = [k for k in spec.kvs if k.key != name]
            if action == 0:
                spec.kvs.append(KV(name, *_value(fdp)))
        elif action == 2:
            i = fdp.ConsumeIntInRange(0, len(spec.tensors) - 1)
            ne = list(spec.tensors[i].ne)
            ne[fdp.ConsumeIntInRange(0, len(ne) - 1)] = fdp.PickValueInList([1, 2, 32, 64, 128, 256, 512, 1024])
            if fdp.ConsumeBool():
                ne.append(1)
            spec.tensors[i] = replace(spec.tensors[i], ne=ne)
        else:
            i = fdp.ConsumeIntInRange(0, len(spec.tensors) - 1)
            spec.tensors[i] = replace(spec.tensors[i], type_id=fdp.ConsumeIntInRange(0, 40))
    return spec.build()


def structured_base():
    from gguf_bytes import ARR, F32, I32, KV, base_spec

    spec = base_spec()
    n = len(spec.kv("tokenizer.ggml.tokens").value)
    spec.kvs += [KV("tokenizer.ggml.scores", ARR, [-float(i) for i in range(n)], F32),
                 KV("tokenizer.ggml.token_type", ARR, [1] * n, I32)]
    return spec


def one_input(data: bytes) -> None:
    if not data.startswith(b"GGUF"):
        data = edited_model(data)
    SCRATCH.write_bytes(data)
    try:
        _run()
    finally:
        SCRATCH.unlink(missing_ok=True)


def _run() -> None:
    try:
        model = load_model(SCRATCH)
        tokenizer = load_tokenizer(model)
        ids = tokenizer.encode("hello world")[:MAX_PROMPT] or [0]
        runtime = CpuRuntime(model, n_ctx=MAX_PROMPT)
        runtime.prefill([i % model.config.n_vocab for i in ids])
    except QprofError as exc:
        message = str(exc)
        if "\n" in message or not message.strip():
            raise AssertionError(f"a QprofError must be one non-empty line, got {message!r}") from None


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    seeds = seed_files()
    for folder in (Path(a) for a in argv[1:] if not a.startswith("-")):
        if folder.is_dir() and not any(folder.iterdir()):
            for name, data in seeds.items():
                (folder / name).write_bytes(data)
    # qprof imports most modules inside functions: run the seeds once under the import hook so those are
    # instrumented too (coverage of the reader, validation, tokenizer and runtime, not only the entry points)
    with atheris.instrument_imports(include=INSTRUMENTED):
        for data in seeds.values():
            one_input(data)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
