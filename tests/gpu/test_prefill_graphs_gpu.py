"""Prefill replayed as CUDA graphs gives exactly the eager prefill's logits (torch.equal) on the tiny synthetic
models: one chunk and several, a chunk at pos0 > 0, all positions' logits, the resident mask, float16 KV, a
greedy continuation after a replayed prefill, a graph evicted and captured again; and the replays happen
(counters). Every replay gets other token ids than the capture saw, and every result is compared only after
the later replays ran, so stale ids, a missing position in the key or logits that a replay overwrites fail."""

from __future__ import annotations

import functools

import pytest
import torch

from qprof.runtime.options import RuntimeOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]
MODELS = ["tiny-q4_k_m", "tiny-swa-q8_0", "tiny-f16"]  # mixed K-quants, a 64-token sliding window, float weights
N_CTX = 1536
N_DECODE = 8
ROUNDS = 3  # the first prefill of a shape runs eagerly and is captured; the others replay


@functools.cache
def loaded(name: str):
    from qprof.model.gguf_file import load_model
    from qprof.workloads import resolve_model

    return load_model(resolve_model(name, log=None))


def runtime(name: str, prefill_graphs: bool, annotator=None, **options):
    """Decode is a CUDA graph in both runtimes compared, so only how prefill runs differs."""
    from qprof.runtime.cuda.forward import CudaRuntime

    opts = RuntimeOptions(cuda_graphs=True, prefill_graphs=prefill_graphs, **options)
    return CudaRuntime(loaded(name), options=opts, annotator=annotator, n_ctx=N_CTX)


def prompt(name: str, n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(1000 * n + seed)
    return torch.randint(0, loaded(name).config.n_vocab, (n,), generator=gen).tolist()


def prefills(rt, calls: list[list[int]], all_logits: bool = False) -> list[torch.Tensor]:
    """From an empty cache, one prefill call per token list (the later ones continue at pos0 > 0)."""
    rt.reset()
    out = [rt.prefill(ids, all_logits=all_logits) for ids in calls]
    assert rt.n_past == sum(map(len, calls))
    return out


def assert_equal(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.isfinite(w).all(), f"{what}: the eager logits are not finite"
        assert g.shape == w.shape and torch.equal(g, w), \
            f"{what}, result {i}: max |graph - eager| {float((g - w).abs().max()):.3e}"


def compare(name: str, lengths: list[int], all_logits: bool = False, **options):
    """ROUNDS prefills of prompts split into calls of these lengths, other tokens each round, both ways."""
    eager, graphs = runtime(name, False, **options), runtime(name, True, **options)
    rounds = [[prompt(name, n, seed=10 * r + i) for i, n in enumerate(lengths)] for r in range(ROUNDS)]
    want = [t for calls in rounds for t in prefills(eager, calls, all_logits)]
    got = [t for calls in rounds for t in prefills(graphs, calls, all_logits)]
    # eager prefill is deterministic run to run, or bitwise equality would prove nothing about the graphs
    assert_equal(prefills(eager, rounds[0], all_logits), want[:len(lengths)], "eager run twice")
    assert_equal(got, want, f"{name} {lengths} all_logits={all_logits} {options}")
    return graphs


def chunks(n: int) -> int:
    from qprof.runtime.cuda.forward import PREFILL_CHUNK

    return -(-n // PREFILL_CHUNK)


@pytest.mark.parametrize("n_tokens", [1, 7, 64, 300, 512, 700])  # 700: a 512-token chunk, then 188 at pos0 512
@pytest.mark.parametrize("name", MODELS)
def test_replayed_prefill_gives_the_eager_logits(name, n_tokens):
    graphs = compare(name, [n_tokens]).prefill_graphs
    assert graphs.captures == chunks(n_tokens) and graphs.eager == chunks(n_tokens)
    assert graphs.replays == (ROUNDS - 1) * chunks(n_tokens), "the graphs were captured but never replayed"


@pytest.mark.parametrize("name", MODELS)
def test_a_second_call_at_pos0_above_zero_replays_its_own_graph(name):
    # two calls of one length: only pos0 tells their shapes apart, so a key without it would replay the wrong one
    graphs = compare(name, [40, 40, 9]).prefill_graphs
    assert graphs.captures == 3 and graphs.replays == 3 * (ROUNDS - 1)


@pytest.mark.parametrize("options", [{}, {"mask": "device"}, {"kv_type": "f16"}], ids=["skip", "mask=device", "kv=f16"])
def test_all_logits_and_switches_replay_exactly(options):
    graphs = compare("tiny-q4_k_m", [33, 600], all_logits=True, **options).prefill_graphs
    assert graphs.captures == 3 and graphs.replays == 3 * (ROUNDS - 1)


@pytest.mark.parametrize("name", MODELS)
def test_greedy_decode_after_a_replayed_prefill_equals_eager(name):
    def greedy(rt, ids: list[int]) -> tuple[torch.Tensor, list[int]]:
        from qprof.runtime.base import SamplingParams

        rt.reset()
        logits, tokens = [rt.prefill(ids).clone()], []
        for _ in range(N_DECODE):
            tokens.append(rt.sample(logits[-1], SamplingParams()))
            logits.append(rt.decode(tokens[-1]).clone())
        return torch.stack(logits), tokens

    eager, graphs = runtime(name, False), runtime(name, True)
    greedy(graphs, prompt(name, 48, seed=0))  # first sight: eager, then captured
    ids = prompt(name, 48, seed=1)
    want, got = greedy(eager, ids), greedy(graphs, ids)
    assert graphs.prefill_graphs.replays == 1
    assert got[1] == want[1], f"greedy tokens part: {got[1]} vs {want[1]}"
    assert_equal([got[0]], [want[0]], f"{name}: logits of the prefill and {N_DECODE} decode steps")


def test_an_evicted_shape_is_captured_again_and_still_exact():
    from qprof.runtime.cuda.prefill_graph import PrefillGraphs

    name = "tiny-q4_k_m"
    eager, graphs = runtime(name, False), runtime(name, True)
    graphs.prefill_graphs = PrefillGraphs(graphs._reserve_scratch, slots=1)
    calls = [[prompt(name, n, seed=s)] for s, n in enumerate([20, 30, 20, 20, 30])]
    want = [t for c in calls for t in prefills(eager, c)]
    got = [t for c in calls for t in prefills(graphs, c)]
    assert_equal(got, want, "one slot, shapes 20 30 20 20 30")
    pg = graphs.prefill_graphs
    assert (pg.captures, pg.evictions, pg.replays, pg.eager) == (4, 3, 1, 4)


def test_a_profiled_runtime_runs_prefill_eagerly():
    from qprof.annotate import Annotator

    class Ranges:
        def __init__(self) -> None:
            self.ops = 0

        def begin(self, info) -> None:
            self.ops += info.level == "op"

        def end(self, info) -> None:
            pass

    listener = Ranges()
    name = "tiny-q4_k_m"
    rt = runtime(name, True, annotator=Annotator(nvtx_enabled=False, listeners=(listener,)))
    eager = runtime(name, False)
    calls = [[prompt(name, 24, seed=s)] for s in range(ROUNDS)]
    assert_equal([t for c in calls for t in prefills(rt, c)], [t for c in calls for t in prefills(eager, c)],
                 "profiled")
    pg = rt.prefill_graphs
    assert (pg.captures, pg.replays) == (0, 0), "a profiler's ranges must see every prefill op"
    assert listener.ops >= ROUNDS * loaded(name).config.n_layer
