"""Coverage-guided fuzzing (atheris / libFuzzer) of GGUF bytes -> load_model -> tokenizer -> one CPU prefill.

Every input must end in success or in one QprofError with a one-line message; anything else (another
exception, a message over several lines, a hang past -timeout, memory past -rss_limit_mb) is a crash
that libFuzzer saves as crash-<hash> for replay. Run it for longer than the CI test does:

    python tests/fuzz_gguf.py -max_total_time=600 -rss_limit_mb=4096 -timeout=20 fuzz-corpus/
    python tests/fuzz_gguf.py crash-<hash>          # replay one saved input

An empty corpus folder is seeded first with two small valid models (every quant family; a working
SentencePiece vocabulary), so mutations start from files that get all the way to the prefill.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

INSTRUMENTED = ["qprof", "gguf"]
with atheris.instrument_imports(include=INSTRUMENTED):
    from qprof.errors import QprofError
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.cpu import CpuRuntime

SCRATCH = Path(tempfile.mkdtemp(prefix="qprof-fuzz-")) / "input.gguf"
MAX_PROMPT = 8


def seed_files() -> dict[str, bytes]:
    """Valid inputs to start from: the malformed corpus's base model (with a usable vocabulary) and a tiny
    transformers-converted model."""
    import torch
    from gguf_bytes import ARR, F32, I32, KV, base_spec
    from tiny_gguf import hf_model, write_gguf

    torch.set_num_threads(1)
    spec = base_spec()
    n = len(spec.kv("tokenizer.ggml.tokens").value)
    spec.kvs += [KV("tokenizer.ggml.scores", ARR, [-float(i) for i in range(n)], F32),
                 KV("tokenizer.ggml.token_type", ARR, [1] * n, I32)]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_gguf(Path(tmp) / "tiny.gguf", hf_model(seed=1, n_layer=1)).read_bytes()
    return {"base-every-quant-family.gguf": spec.build(), "tiny-hf-llama.gguf": tiny}


def one_input(data: bytes) -> None:
    SCRATCH.write_bytes(data)
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
