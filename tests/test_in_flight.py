"""Greedy decode with one token in flight: the generic loop's tokens are decode + sample's, generate gives the same
results whichever loop runs (also one that queues a step ahead, as CUDA's does), and the CUDA chain's order of
launches, copies and waits, emulated on the CPU, keeps one step queued while each token is read."""

from __future__ import annotations

import pytest
import torch
from tiny_gguf import hf_model, write_gguf

from qprof.errors import QprofError
from qprof.runtime import generate as generate_module
from qprof.runtime.base import SamplingParams
from qprof.runtime.cpu import CpuRuntime
from qprof.runtime.generate import generate
from qprof.runtime.in_flight import GREEDY, check_steps, decode_greedy, has_in_flight_decode
from qprof.runtime.timed import timed_loop

PROMPT = [1, 5, 100, 200, 30]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer

    model = load_model(write_gguf(tmp_path_factory.mktemp("in_flight") / "tiny.gguf", hf_model(seed=5)))
    return model, load_tokenizer(model)


def synced_greedy(rt, first: int, n: int) -> list[int]:
    """The loop every runtime had: decode, sample greedily, n times."""
    out, token = [], first
    for _ in range(n):
        token = rt.sample(rt.decode(token), GREEDY)
        out.append(token)
    return out


class OneAhead(CpuRuntime):
    """The CPU reference with CudaRuntime's order: step i+1 is decoded before step i's token is handed out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_run = 0

    def decode(self, token):
        self.steps_run += 1
        return super().decode(token)

    def decode_greedy(self, first_token: int, n: int):
        check_steps(n, self.n_past, self.n_ctx)

        def chain():
            if not n:
                return
            token = int(self.decode(first_token).argmax())
            for _ in range(n - 1):
                logits = self.decode(token)  # queued before the host reads `token`
                yield token
                token = int(logits.argmax())
            yield token

        return chain()


def test_the_generic_loop_gives_decode_and_sample_greedy_tokens(tiny):
    model, _ = tiny
    rt = CpuRuntime(model, n_ctx=64)
    first = int(rt.prefill(PROMPT).argmax())
    want = synced_greedy(rt, first, 12)
    assert len(set(want)) > 3  # a varied continuation: a loop that repeated a token would not pass by luck
    rt.reset()
    rt.prefill(PROMPT)
    assert not has_in_flight_decode(rt)
    got = list(decode_greedy(rt, first, 12))
    assert got == want
    assert rt.n_past == len(PROMPT) + 12


def test_steps_and_the_context_are_checked_when_called_not_at_the_first_token(tiny):
    model, _ = tiny
    rt = CpuRuntime(model, n_ctx=8)
    rt.prefill(PROMPT)
    with pytest.raises(QprofError, match=r"context full: 5 \+ 4 tokens exceed 8 \(raise --ctx\)"):
        decode_greedy(rt, 1, 4)
    with pytest.raises(QprofError, match="decode steps must be 0 or more, got -1"):
        decode_greedy(rt, 1, -1)
    assert list(decode_greedy(rt, 1, 0)) == [] and rt.n_past == len(PROMPT)
    assert len(list(decode_greedy(rt, 1, 3))) == 3 and rt.n_past == 8


def test_a_runtime_with_its_own_loop_is_asked_for_it(tiny):
    model, _ = tiny
    rt = OneAhead(model, n_ctx=64)
    rt.prefill(PROMPT)
    assert has_in_flight_decode(rt)
    it = decode_greedy(rt, 7, 5)
    assert rt.steps_run == 0  # nothing runs before the first token is asked for
    assert next(it) is not None and rt.steps_run == 2  # the second step was queued before the first token came


def synced_generate(monkeypatch, *args, **kwargs):
    """generate with the loop it had before the in-flight path: decode, sample, for greedy sampling too."""

    def old_loop(*a, decode_loop=None, **kw):
        return timed_loop(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(generate_module, "timed_loop", old_loop)
        return generate(*args, **kwargs)


class StopAt:
    """The model's tokenizer, with one more end-of-generation id."""

    def __init__(self, tok, eog: int):
        self.tok, self.eog = tok, eog

    def decode(self, ids):
        return self.tok.decode(ids)

    def is_eog(self, token_id: int) -> bool:
        return token_id == self.eog or self.tok.is_eog(token_id)


def same(a, b) -> None:
    assert (a.new_ids, a.stop_reason, a.text) == (b.new_ids, b.stop_reason, b.text)


@pytest.mark.parametrize("runtime_class", [CpuRuntime, OneAhead])
def test_generate_gives_the_old_loops_results_on_every_stop(monkeypatch, tiny, runtime_class):
    model, tok = tiny
    old_rt, rt = CpuRuntime(model, n_ctx=64), runtime_class(model, n_ctx=64)
    old = synced_generate(monkeypatch, old_rt, tok, PROMPT, 16, stop_at_eos=False)
    new = generate(rt, tok, PROMPT, 16, stop_at_eos=False)
    same(new, old)
    assert old.stop_reason == "length" and len(new.new_ids) == 16 and rt.n_past == old_rt.n_past == len(PROMPT) + 15

    # an end of generation in the middle: the first id not seen before, at the fourth token or later
    k = next(i for i in range(3, 16) if old.new_ids[i] not in old.new_ids[:i])
    stops = StopAt(tok, old.new_ids[k])
    old = synced_generate(monkeypatch, old_rt, stops, PROMPT, 16)
    seen: list[int] = []
    new = generate(rt, stops, PROMPT, 16, on_token=seen.append)
    same(new, old)
    assert new.stop_reason == "eos" and len(new.new_ids) == k + 1 and seen == new.new_ids[:-1]
    assert old_rt.n_past == len(PROMPT) + k
    # one step ahead: the end-of-generation token was decoded too (its step was queued before it was read)
    assert rt.n_past == len(PROMPT) + k + (runtime_class is OneAhead)

    # a full cache: the prompt and 6 decode steps fill 11 positions
    old_rt, rt = CpuRuntime(model, n_ctx=11), runtime_class(model, n_ctx=11)
    old = synced_generate(monkeypatch, old_rt, tok, PROMPT, 16, stop_at_eos=False)
    new = generate(rt, tok, PROMPT, 16, stop_at_eos=False)
    same(new, old)
    assert new.stop_reason == "context" and len(new.new_ids) == 7 and rt.n_past == old_rt.n_past == 11


def test_a_prompt_that_fills_the_cache_stops_before_any_decode(monkeypatch, tiny):
    model, tok = tiny
    rt = OneAhead(model, n_ctx=len(PROMPT))
    new = generate(rt, tok, PROMPT, 4, stop_at_eos=False)
    assert new.stop_reason == "context" and len(new.new_ids) == 1 and rt.steps_run == 0


def test_sampling_that_is_not_greedy_keeps_the_decode_then_sample_loop(monkeypatch, tiny):
    model, tok = tiny
    rt = OneAhead(model, n_ctx=64)
    params = SamplingParams(temperature=0.8, seed=3)
    old = synced_generate(monkeypatch, CpuRuntime(model, n_ctx=64), tok, PROMPT, 10, sampling=params,
                          stop_at_eos=False)
    monkeypatch.setattr(OneAhead, "decode_greedy", lambda *a: pytest.fail("the greedy loop ran for top-p"))
    same(generate(rt, tok, PROMPT, 10, sampling=params, stop_at_eos=False), old)


def test_the_timed_loop_hands_the_first_token_to_the_decode_loop_then_syncs():
    calls: list[str] = []

    class Rt:
        def reset(self):
            calls.append("reset")

        def synchronize(self):
            calls.append("sync")

        def prefill(self, tokens):
            calls.append(f"prefill {len(tokens)}")
            return "p"

        def decode(self, token):
            pytest.fail("the step loop ran beside the decode loop")

    times = timed_loop(Rt(), [1, 2], lambda logits: 9, decode_loop=lambda token: calls.append(f"loop {token}"))
    assert calls == ["reset", "sync", "prefill 2", "sync", "loop 9", "sync"]
    assert times.decode_ns >= 0
    calls.clear()
    timed_loop(Rt(), [1], lambda logits: None, decode_loop=lambda token: pytest.fail("a loop with no token"))
    assert calls == ["reset", "sync", "prefill 1", "sync", "sync"]


# ------------------------------------------------------------------ CudaRuntime's chain, emulated on the CPU

class EmulatedStream:
    """Stands in for the device: each launch runs at once, in the order the chain queues it, and is logged."""

    N_VOCAB = 50

    def __init__(self, n_ctx: int = 32):
        self.n_past, self.n_ctx = 0, n_ctx
        self.log: list[str] = []
        step = torch.zeros(2, dtype=torch.int32)
        self.buf = type("Buf", (), {"step": step, "logits": torch.zeros(1, self.N_VOCAB),
                                    "token_out": torch.zeros(1, dtype=torch.int32)})()
        from qprof.annotate import NULL_ANNOTATOR

        self.annotator = NULL_ANNOTATOR

    @staticmethod
    def next_of(token: int) -> int:
        return (7 * token + 3) % EmulatedStream.N_VOCAB

    def _check_tokens(self, tokens):
        from qprof.runtime.base import check_tokens

        return check_tokens(tokens, self.N_VOCAB, self.n_past, self.n_ctx)

    def _queue_step(self, write_input) -> None:
        write_input(self.n_past)
        token, pos = (int(v) for v in self.buf.step)
        assert pos == self.n_past, "the step's position is not n_past"
        self.log.append(f"step {pos} of {token}")
        self.buf.logits.zero_()
        self.buf.logits[0, self.next_of(token)] = 1.0
        self.n_past += 1


class EmulatedRing:
    def __init__(self, stream: EmulatedStream):
        self.stream, self.host = stream, [None, None]

    def __len__(self):
        return 2

    def queue_copy(self, slot, token):
        self.host[slot] = int(token[0])
        self.stream.log.append(f"copy {slot}")

    def wait(self, slot):
        self.stream.log.append(f"wait {slot}")
        return self.host[slot]


@pytest.fixture
def emulated(monkeypatch):
    from qprof.runtime.cuda import greedy_chain, ops

    def argmax(logits, out):
        out[0] = int(logits.argmax())

    def step_set(step, token, pos):
        step[0], step[1] = token, pos

    def step_chain(step, token, pos):
        step[0], step[1] = token[0], pos

    for name, fn in (("argmax", argmax), ("step_set", step_set), ("step_chain", step_chain)):
        monkeypatch.setattr(ops, name, fn)
    stream = EmulatedStream()
    return stream, lambda first, n: greedy_chain.greedy_chain(stream, EmulatedRing(stream), first, n)


def test_the_cuda_chain_reads_each_token_after_the_next_step_is_queued(emulated):
    stream, chain = emulated
    want, t = [], 4
    for _ in range(5):
        t = EmulatedStream.next_of(t)
        want.append(t)
    it = chain(4, 5)
    assert stream.log == []  # checked now, run lazily
    got = []
    for token in it:
        got.append(token)
        # when token i is handed out, step i+1 (decoding it) is queued unless token i is the last
        assert stream.n_past == min(len(got) + 1, 5)
    assert got == want and stream.n_past == 5
    assert stream.log[:6] == ["step 0 of 4", "copy 0", f"step 1 of {want[0]}", "copy 1", "wait 0",
                              f"step 2 of {want[1]}"]
    assert stream.log[-2:] == ["wait 1", "wait 0"]  # the last token is read after its own copy, nothing queued


def test_the_cuda_chain_stopped_early_has_run_one_step_more(emulated):
    stream, chain = emulated
    it = chain(4, 10)
    first_two = [next(it), next(it)]
    assert stream.n_past == 3  # the step decoding the second token is already queued
    it.close()
    assert len(first_two) == 2 and stream.n_past == 3 and stream.log.count("copy 0") == 2


def test_the_cuda_chain_checks_the_first_token_and_the_context_up_front(emulated):
    stream, chain = emulated
    with pytest.raises(QprofError, match="token id 99 is outside the vocabulary of 50"):
        chain(99, 2)
    with pytest.raises(QprofError, match=r"context full: 0 \+ 33 tokens exceed 32"):
        chain(4, 33)
    assert list(chain(4, 0)) == [] and stream.log == []
