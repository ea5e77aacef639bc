"""`qprof generate` streams its answer, prefills long prompts in chunks with progress, builds graph options on a
GPU, and refuses bad input before it loads anything."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from tiny_gguf import hf_model, write_gguf

from qprof.cli import main
from qprof.runtime.generate import generate
from qprof.runtime.streaming import TextStream


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("stream") / "tiny.gguf", hf_model(seed=5))


@pytest.fixture(scope="module")
def tiny_loaded(tiny):
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer

    model = load_model(tiny)
    return model, load_tokenizer(model)


class ByteTokenizer:
    """Ids are UTF-8 bytes: a character of several bytes spans several tokens, as in byte-level BPE."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_stream_never_splits_a_character_and_writes_each_piece_once():
    out: list[str] = []
    stream = TextStream(ByteTokenizer(), out.append)
    for b in " café – ok ".encode():
        stream.push(b)
    assert stream.finish() == "café – ok"
    assert "".join(out) == "café – ok" and not any("\ufffd" in piece for piece in out)
    assert len(out) > 3  # it streamed: pieces came before the end


def test_streamed_text_is_the_answer_and_its_time_is_not_decode_time(tiny_loaded):
    from qprof.runtime.cpu import CpuRuntime

    model, tok = tiny_loaded
    rt = CpuRuntime(model, n_ctx=64)
    seen: list[int] = []

    def slow_print(token_id: int) -> None:
        seen.append(token_id)
        time.sleep(0.05)

    res = generate(rt, tok, "hello", 6, stop_at_eos=False, on_token=slow_print)
    assert seen == res.new_ids
    assert res.decode_seconds < 0.05 * len(seen)  # the printing is left out of the decode rate
    assert res.prompt_seconds < 0.05  # and the first token's printing out of the prompt rate
    stream = TextStream(tok, lambda s: None)
    for t in res.new_ids:
        stream.push(t)
    assert stream.finish() == res.text.strip()


def test_chunked_prefill_reports_progress_and_gives_the_same_answer(tiny_loaded):
    from qprof.runtime.cpu import CpuRuntime

    model, tok = tiny_loaded
    rt = CpuRuntime(model, n_ctx=128)
    ids = tok.encode("hello world the " * 6)
    whole = generate(rt, tok, ids, 8, stop_at_eos=False)
    progress: list[tuple[int, int]] = []
    chunked = generate(rt, tok, ids, 8, stop_at_eos=False, prefill_chunk=16,
                       on_prefill=lambda done, total: progress.append((done, total)))
    assert chunked.new_ids == whole.new_ids
    n = len(ids)
    assert progress == [(min(k, n), n) for k in range(16, n + 16, 16)]


def test_cli_streams_and_long_prompts_say_they_are_prefilling(tiny):
    res = CliRunner().invoke(main, ["generate", "-m", str(tiny), "-p", "hello world " * 60, "--no-chat", "-n", "3",
                                    "--no-eos", "--device", "cpu", "-t", "1"])
    assert res.exit_code == 0, res.output
    assert "qprof generate: device cpu (--device cpu): CPU reference runtime, 1 thread; decode eager" in res.stderr
    assert "prefilling" not in res.stderr  # 121 prompt tokens: one prefill call
    res = CliRunner().invoke(main, ["generate", "-m", str(tiny), "-p", "hello world " * 80, "--no-chat", "-n", "3",
                                    "--no-eos", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "prefilling 162 prompt tokens on the cpu runtime in chunks of 128" in res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("prompt: 162 tok")


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n/--n-predict must be at least 1, got 0"),
    (["-p", ""], "the prompt is empty (-p TEXT)"),
    (["-p", "  \n "], "the prompt is empty (-p TEXT)"),
    (["-t", "0"], "-t: 0 threads; need at least 1"),
    (["-m", "./nope.gguf"], "model file not found: ./nope.gguf"),
])
def test_bad_input_fails_before_any_model_loads(monkeypatch, tiny, args, message):
    from qprof.model import gguf_file

    monkeypatch.setattr(gguf_file, "load_model", lambda *a, **k: pytest.fail("loaded a model before checking"))
    res = CliRunner().invoke(main, ["generate", "-m", str(tiny), "--device", "cpu", *args])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"qprof: error: {message}"


def test_gpu_options_capture_decode_unless_a_switch_or_the_flag_says_otherwise():
    from qprof.commands.generate import build_options

    options, why = build_options("cuda", "skip", None, None)
    assert options.cuda_graphs and why == "captured as a CUDA graph (--no-graphs for eager)"
    options, why = build_options("cuda", "upload", None, None)
    assert not options.cuda_graphs and why == "eager (mask=upload copies a host-built mask every step)"
    options, why = build_options("cuda", "skip", "block-dim", None)
    assert options.cuda_graphs and options.inject == "block-dim"  # a wrong block size is still capturable
    options, why = build_options("cuda", "skip", None, False)
    assert not options.cuda_graphs and why == "eager (--no-graphs)"
    options, why = build_options("cpu", "skip", None, True)
    assert not options.cuda_graphs and "CPU runtime has no graphs" in why


def test_default_device_is_cuda_when_a_gpu_is_there(monkeypatch, tiny):
    """The same choice as bench and profile; the (faked) CUDA runtime gets graph options and the line says so."""
    import torch

    from qprof.runtime import factory
    from qprof.runtime.cpu import CpuRuntime

    made = {}
    calls: list[str] = []

    class Recording(CpuRuntime):  # stands in for the GPU
        def reset(self):
            calls.append("reset")
            super().reset()

        def prefill(self, tokens, all_logits=False):
            calls.append("prefill")
            return super().prefill(tokens, all_logits)

    def fake_runtime(model, device="cpu", options=None, annotator=None, n_ctx=None):
        made.update(device=device, graphs=options.cuda_graphs)
        return Recording(model, options=options, n_ctx=n_ctx)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(factory, "create_runtime", fake_runtime)
    res = CliRunner().invoke(main, ["generate", "-m", str(tiny), "-n", "2", "--no-eos"])
    assert res.exit_code == 0, res.output
    assert made == {"device": "cuda", "graphs": True}
    assert "device cuda (a CUDA GPU is available): CUDA runtime; decode captured as a CUDA graph" in res.stderr
    assert "one untimed warm-up step first" in res.stderr
    assert calls == ["reset", "prefill", "reset", "prefill"]  # the warm-up, then the timed generation
