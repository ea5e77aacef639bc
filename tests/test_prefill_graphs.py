"""The prefill-graph cache on the CPU: first sight eager then captured, later sights replayed with their own
ids and cloned logits, LRU eviction that never evicts the current prompt's graphs, and what keeps prefill
eager. The GPU side (logits bit for bit against eager) is tests/gpu/test_prefill_graphs_gpu.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from bench_fakes import FakeStepGraph

from qprof.errors import QprofError
from qprof.runtime.cuda.prefill_graph import PrefillGraphs, PrefillShape, prefill_graph_blocker
from qprof.runtime.options import RuntimeOptions

GRAPHS = RuntimeOptions(cuda_graphs=True, prefill_graphs=True)


def expected(tokens: list[int]) -> torch.Tensor:
    return torch.tensor(tokens, dtype=torch.float32)[None, :] * 2 + 1


class Forward:
    """A chunk's forward that depends on every token id, counting its runs (capture runs it once, see FakeStepGraph)."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.int32 and ids.dim() == 1
        self.runs += 1
        return ids.to(torch.float32)[None, :] * 2 + 1


def cache(slots: int = 4, **kw) -> PrefillGraphs:
    return PrefillGraphs(slots=slots, new_graph=FakeStepGraph, device="cpu", **kw)


def prompt(graphs: PrefillGraphs, *chunks: tuple[PrefillShape, list[int]], forward=None) -> list:
    """One prefill call: new_prompt, then each chunk through the cache."""
    forward = forward or Forward()
    graphs.new_prompt()
    return [graphs.run(shape, tokens, forward) for shape, tokens in chunks]


def shape(n: int = 3, pos0: int = 0, all_logits: bool = False, last: bool = True) -> PrefillShape:
    return PrefillShape(n, pos0, all_logits, last)


def test_first_sight_runs_eagerly_and_is_captured_then_later_sights_replay_their_own_ids():
    graphs, forward = cache(), Forward()
    (first,) = prompt(graphs, (shape(), [1, 2, 3]), forward=forward)
    assert torch.equal(first, expected([1, 2, 3]))
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 1, 0) and shape() in graphs
    (second,) = prompt(graphs, (shape(), [4, 5, 6]), forward=forward)
    assert torch.equal(second, expected([4, 5, 6])), "the replay must read the new token ids"
    (third,) = prompt(graphs, (shape(), [7, 8, 9]), forward=forward)
    assert torch.equal(third, expected([7, 8, 9]))
    assert torch.equal(second, expected([4, 5, 6])), "a later replay overwrote logits a caller still holds"
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 1, 2)


def test_every_part_of_the_shape_is_part_of_the_key():
    graphs = cache(slots=8)
    shapes = [shape(), shape(n=4), shape(pos0=3), shape(all_logits=True), shape(last=False)]
    for s in shapes:
        prompt(graphs, (s, list(range(s.n_tokens))))
    assert graphs.eager == len(shapes) and graphs.replays == 0 and graphs.shapes() == shapes
    for s in shapes:
        prompt(graphs, (s, list(range(s.n_tokens))))
    assert graphs.replays == len(shapes) and graphs.eager == len(shapes)


def test_a_chunk_without_logits_replays_and_returns_none():
    graphs = cache()
    middle = shape(last=False)
    assert prompt(graphs, (middle, [1, 2, 3]), forward=lambda ids: None) == [None]
    assert prompt(graphs, (middle, [4, 5, 6]), forward=lambda ids: None) == [None]
    assert graphs.replays == 1


def test_a_new_shape_evicts_the_least_recently_used_graph():
    graphs = cache(slots=2)
    a, b, c = shape(n=1), shape(n=2), shape(n=3)
    prompt(graphs, (a, [1]))
    prompt(graphs, (b, [1, 2]))
    prompt(graphs, (a, [3]))  # a replayed: b is now the least recently used
    prompt(graphs, (c, [1, 2, 3]))
    assert graphs.shapes() == [a, c] and graphs.evictions == 1 and graphs.captures == 3
    (again,) = prompt(graphs, (b, [5, 6]))  # evicted: eager (and captured) again
    assert torch.equal(again, expected([5, 6])) and graphs.shapes() == [c, b] and graphs.eager == 4


def test_a_prompt_of_more_chunk_shapes_than_slots_keeps_its_graphs_and_runs_the_rest_eagerly():
    graphs = cache(slots=2)
    chunks = [(shape(n=2, pos0=2 * i, last=i == 2), [i, i + 1]) for i in range(3)]
    prompt(graphs, *chunks)
    assert graphs.captures == 2 and graphs.evictions == 0 and chunks[2][0] not in graphs
    outs = prompt(graphs, *chunks)
    # no cycle of evictions and captures: the first two replay, the third runs eagerly again, uncaptured
    assert (graphs.replays, graphs.eager, graphs.captures, graphs.evictions) == (2, 4, 2, 0)
    assert torch.equal(outs[2], expected([2, 3]))
    prompt(graphs, (shape(n=5), [1, 2, 3, 4, 5]))  # another prompt may evict them
    assert graphs.evictions == 1 and shape(n=5) in graphs


def test_the_runtime_prepares_before_each_capture_and_not_before_a_replay():
    events = []

    def new_graph():
        events.append("graph")
        return FakeStepGraph()

    graphs = PrefillGraphs(before_capture=lambda: events.append("reserve"), new_graph=new_graph, device="cpu")
    prompt(graphs, (shape(), [1, 2, 3]))
    prompt(graphs, (shape(), [1, 2, 3]))
    prompt(graphs, (shape(n=2), [1, 2]))
    assert events == ["reserve", "graph", "reserve", "graph"]


def test_bad_input_is_one_line():
    with pytest.raises(QprofError, match="at least one slot, got 0"):
        cache(slots=0)
    graphs = cache()
    graphs.new_prompt()
    with pytest.raises(QprofError, match="prefill chunk of 2 tokens run as the shape of 3"):
        graphs.run(shape(), [1, 2], Forward())


def test_a_failed_capture_is_one_line_naming_the_chunk():
    class FailingGraph(FakeStepGraph):
        def capture(self, step):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")

    graphs = PrefillGraphs(new_graph=FailingGraph, device="cpu")
    graphs.new_prompt()
    with pytest.raises(QprofError) as err:
        graphs.run(shape(pos0=5), [1, 2, 3], Forward())
    msg = str(err.value)
    assert "\n" not in msg and "prefill chunk of 3 tokens at position 5" in msg
    assert "operation not permitted when stream is capturing" in msg and "--prefill-graphs 0" in msg
    assert shape(pos0=5) not in graphs


@pytest.mark.parametrize("options, blocked", [
    (GRAPHS, None), (GRAPHS.with_(mask="device"), None), (GRAPHS.with_(inject="block-dim"), None),
    (GRAPHS.with_(pdl=True, fused=False, kv_type="f16"), None),
    (RuntimeOptions(prefill_graphs=True), "CUDA graphs off"), (RuntimeOptions(cuda_graphs=True), "prefill graphs off"),
    (GRAPHS.with_(mask="upload"), "mask=upload"), (GRAPHS.with_(scalar_upload=True), "scalar-upload"),
    (GRAPHS.with_(sync_every_op=True), "sync-every-op")])
def test_what_keeps_prefill_eager(options, blocked):
    reason = prefill_graph_blocker(options)
    assert (reason is None) if blocked is None else reason.startswith(blocked)


def test_prefill_graphs_are_off_unless_asked():
    assert prefill_graph_blocker(RuntimeOptions()) is not None
    assert prefill_graph_blocker(RuntimeOptions(cuda_graphs=True)) == "prefill graphs off"


def test_the_memory_plan_counts_every_graph_slot():
    from qprof.runtime.cuda.memory import bytes_needed
    from qprof.runtime.cuda.prefill_graph import PREFILL_GRAPH_SLOTS

    cfg = SimpleNamespace(n_ff=96, n_vocab=300, q_dim=64, n_embd=64, n_layer=2, kv_dim=32)
    model = SimpleNamespace(config=cfg, size_bytes=1000)
    eager = bytes_needed(model, 128, RuntimeOptions(cuda_graphs=True), 512)
    graphs = bytes_needed(model, 128, GRAPHS, 512)
    assert "prefill graphs" not in eager and set(graphs) == set(eager) | {"prefill graphs"}
    chunk = 512 * (4 * 64 + 3 * 300) * 4
    assert graphs["prefill graphs"] == PREFILL_GRAPH_SLOTS * chunk
    assert eager["activations"] == chunk + 2 * 300 * 64 and eager["weights"] == 1000
