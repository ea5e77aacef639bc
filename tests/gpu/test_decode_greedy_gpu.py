"""CudaRuntime.decode_greedy (one token in flight) gives the synced loop's greedy tokens on the tiny synthetic models:
CUDA-graph and eager decode, the unfused step, float16 KV, the sync-every-op / mask=upload / scalar-upload faults;
n_past ends where it should (and one further after an early stop); the graph is replayed, not run eagerly; each
token is read only after the step behind it was queued; generate gives the old loop's results."""

from __future__ import annotations

import functools

import pytest
import torch

from qprof.runtime.base import SamplingParams
from qprof.runtime.options import RuntimeOptions

pytestmark = pytest.mark.gpu  # tests/gpu/conftest.py skips it, saying why, where there is no CUDA GPU
MODELS = ["tiny-q4_k_m", "tiny-swa-q8_0", "tiny-f16"]  # mixed K-quants, a 64-token sliding window, float weights
N_CTX = 256
N_PROMPT = 12
N_STEPS = 80  # past the 64-token window of tiny-swa-q8_0
OPTIONS = {
    "graphs": {"cuda_graphs": True},
    "eager": {},
    "sync-every-op": {"sync_every_op": True},
    "mask=upload": {"mask": "upload"},
    "scalar-upload": {"scalar_upload": True},
    "unfused,kv=f16,graphs": {"cuda_graphs": True, "fused": False, "kv_type": "f16"},
}


@functools.cache
def loaded(name: str):
    from qprof.model.gguf_file import load_model
    from qprof.workloads import resolve_model

    return load_model(resolve_model(name, log=None))


def runtime(name: str, **options):
    from qprof.runtime.cuda.forward import CudaRuntime

    return CudaRuntime(loaded(name), options=RuntimeOptions(nvtx=False, **options), n_ctx=N_CTX)


def prompt(name: str, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, loaded(name).config.n_vocab, (N_PROMPT,), generator=gen).tolist()


def synced(rt, ids: list[int], n: int) -> list[int]:
    """decode + sample(greedy) n times after the prompt's own greedy token: the loop every runtime had."""
    rt.reset()
    token = rt.sample(rt.prefill(ids), SamplingParams())
    out = []
    for _ in range(n):
        token = rt.sample(rt.decode(token), SamplingParams())
        out.append(token)
    return out


def in_flight(rt, ids: list[int], n: int) -> list[int]:
    rt.reset()
    first = rt.sample(rt.prefill(ids), SamplingParams())
    rt.buf.token_out.fill_(-1)  # poisoned: a step that read a token nobody wrote would decode -1 and fail its check
    return list(rt.decode_greedy(first, n))


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", MODELS)
def test_in_flight_tokens_are_the_synced_loops(name, option):
    rt = runtime(name, **OPTIONS[option])
    ids = prompt(name, seed=1)
    synced(rt, prompt(name, seed=0), 4)  # first sight: kernels loaded, the graph captured (with graphs)
    want = synced(rt, ids, N_STEPS)
    assert len(set(want)) > 5, "a near-constant continuation would not show a stale token"
    assert rt.n_past == N_PROMPT + N_STEPS
    replays = rt.graph.replays if rt.graph is not None else None
    got = in_flight(rt, ids, N_STEPS)
    assert got == want, f"{name} [{option}]: in-flight tokens part from synced at {_first_diff(got, want)}"
    assert rt.n_past == N_PROMPT + N_STEPS
    if rt.graph is not None:
        assert rt.graph.replays - replays == N_STEPS, "the in-flight steps did not replay the captured graph"
    again = in_flight(rt, ids, N_STEPS)  # the ring's slots and events reused by a second run
    assert again == want


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_the_first_in_flight_step_captures_the_graph_as_decode_does(graphs):
    name = "tiny-q4_k_m"
    want = synced(runtime(name, cuda_graphs=graphs), prompt(name, seed=3), 16)
    rt = runtime(name, cuda_graphs=graphs)  # a fresh runtime: its first decode step is a chained one's first
    got = in_flight(rt, prompt(name, seed=3), 16)
    assert got == want
    assert (rt.graph is not None and rt.graph.ready) == graphs


def test_each_token_is_read_after_the_next_step_is_queued_and_an_early_stop_has_run_it():
    name = "tiny-q4_k_m"
    rt = runtime(name, cuda_graphs=True)
    want = synced(rt, prompt(name, seed=2), 10)
    rt.reset()
    first = rt.sample(rt.prefill(prompt(name, seed=2)), SamplingParams())
    it = rt.decode_greedy(first, 10)
    got = []
    for token in it:
        got.append(token)
        assert rt.n_past == N_PROMPT + min(len(got) + 1, 10)  # the step decoding `token` is already queued
        if len(got) == 4:
            break
    it.close()
    rt.synchronize()
    assert got == want[:4] and rt.n_past == N_PROMPT + 5
    # the cache holds the fourth token decoded: continuing from there gives the synced loop's fifth token on
    assert list(rt.decode_greedy(want[4], 3)) == want[5:8]


def test_bad_steps_and_tokens_are_refused_before_anything_is_queued():
    from qprof.errors import QprofError

    rt = runtime("tiny-q4_k_m", cuda_graphs=True)
    rt.prefill(prompt("tiny-q4_k_m", seed=0))
    with pytest.raises(QprofError, match=f"context full: {N_PROMPT} \\+ {N_CTX} tokens exceed {N_CTX}"):
        rt.decode_greedy(1, N_CTX)
    with pytest.raises(QprofError, match="token id 5000 is outside the vocabulary of 1000"):
        rt.decode_greedy(5000, 2)
    assert rt.n_past == N_PROMPT


@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_generate_gives_the_old_loops_results(monkeypatch, graphs):
    from qprof.runtime import generate as generate_module
    from qprof.runtime.generate import generate
    from qprof.runtime.timed import timed_loop

    class Ids:
        """Ids shown as numbers; one id counts as an end of generation."""

        def __init__(self, eog: int | None = None):
            self.eog = eog

        def decode(self, ids):
            return " ".join(map(str, ids))

        def is_eog(self, token_id: int) -> bool:
            return token_id == self.eog

    def old_generate(rt, tok, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(generate_module, "timed_loop", lambda *a, decode_loop=None, **kw: timed_loop(*a, **kw))
            return generate(rt, tok, prompt("tiny-q4_k_m", seed=4), **kwargs)

    rt = runtime("tiny-q4_k_m", cuda_graphs=graphs)
    old = old_generate(rt, Ids(), max_new_tokens=24)
    new = generate(rt, Ids(), prompt("tiny-q4_k_m", seed=4), max_new_tokens=24)
    assert (new.new_ids, new.stop_reason, new.text) == (old.new_ids, old.stop_reason, old.text)
    k = next(i for i in range(3, 20) if old.new_ids[i] not in old.new_ids[:i])  # not the last: a step follows
    stop = Ids(old.new_ids[k])
    old = old_generate(rt, stop, max_new_tokens=24)
    old_past = rt.n_past
    new = generate(rt, stop, prompt("tiny-q4_k_m", seed=4), max_new_tokens=24)
    assert (new.new_ids, new.stop_reason, new.text) == (old.new_ids, old.stop_reason, old.text)
    assert new.stop_reason == "eos" and rt.n_past == old_past + 1  # the step queued behind the end ran


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
