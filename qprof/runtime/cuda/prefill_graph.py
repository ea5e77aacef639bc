"""Prefill chunks replayed as CUDA graphs, so prompt processing is not bound by the host's launch cost.

An eager 512-token chunk issues about 960 launches (kernels through cuda-python, cuBLAS through torch);
a replay is one graph launch. A chunk's shape is (tokens, pos0, all_logits, last): RoPE, the KV write and
prefill attention take pos0 as a launch scalar, so it belongs to the key. The first chunk of a shape runs
eagerly (kernels load, cuBLAS sets up), then is captured at once; capture runs nothing, so the KV cache
and n_past stay as the eager run left them. Every later chunk of that shape copies its token ids into the
graph's own int32 buffer (host->device, queued before the replay on the same stream) and replays; its
logits are cloned out of the graph's pool, so a later replay cannot overwrite logits a caller still holds.
What else a replay reads is static: weights, KV cache views, the resident mask (or none), and the matmul's
float16 scratch, which the runtime grows to its largest before the first capture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qprof.errors import QprofError
from qprof.runtime.cuda.graphs import StepGraph, graph_blocker
from qprof.runtime.options import RuntimeOptions

# Captured shapes kept. Each graph holds its chunk's activations in its own memory pool for as long as it
# lives (float32 x, q, k, v, gate/up/act...: about 135 MB for 512 tokens of Mistral-7B by arithmetic, plus
# the float16 matmul input and cuBLAS's workspace), so the cache is small and drops the least recently used.
# Four covers bench's usual pp tests and a 2048-token prompt (four 512-token chunks at four positions).
PREFILL_GRAPH_SLOTS = 4

ChunkForward = Callable[[torch.Tensor], "torch.Tensor | None"]  # the chunk's device token ids -> its logits, if any


@dataclass(frozen=True)
class PrefillShape:
    """What a captured chunk bakes in: its launch shapes, its positions and which logits it returns."""

    n_tokens: int
    pos0: int
    all_logits: bool
    last: bool


def prefill_graph_blocker(options: RuntimeOptions) -> str | None:
    """Why prefill chunks always run eagerly with these options, or None when a repeated shape replays its graph."""
    if not options.cuda_graphs:
        return "CUDA graphs off"
    if not options.prefill_graphs:
        return "prefill graphs off"
    return graph_blocker(options)


def host_ids(tokens: list[int], device: str = "cuda") -> torch.Tensor:
    """Token ids as int32 on the host, page-locked where they go to a GPU: the copy is then queued, not waited
    for (torch's pinned allocator keeps the buffer until the copy has run)."""
    ids = torch.tensor(tokens, dtype=torch.int32)
    return ids.pin_memory() if device == "cuda" else ids


def upload_ids(tokens: list[int], device: str = "cuda") -> torch.Tensor:
    """A new device int32 tensor holding the token ids (the eager prefill's input)."""
    return host_ids(tokens, device).to(device, non_blocking=True)


@dataclass
class CapturedChunk:
    graph: StepGraph
    ids: torch.Tensor  # int32 [n_tokens] on the device: the input every replay reads
    logits: torch.Tensor | None  # in the graph's pool, rewritten by every replay; None where the chunk returns none
    prompt: int  # the last prompt (PrefillGraphs.new_prompt) that ran it


class PrefillGraphs:
    """The runtime's captured prefill chunks by shape: first sight eager then captured, later sights replayed.

    At most `slots` graphs; a new shape evicts the least recently used one, except one that the current prompt
    has run: a prompt of more chunk shapes than slots would otherwise evict its own graphs in a cycle and
    capture every chunk of every prefill, so its extra chunks run eagerly instead."""

    def __init__(self, before_capture: Callable[[], None] = lambda: None, slots: int = PREFILL_GRAPH_SLOTS,
                 new_graph: Callable[[], StepGraph] = StepGraph, device: str = "cuda") -> None:
        if slots < 1:
            raise QprofError(f"prefill graphs need at least one slot, got {slots}")
        self.slots, self.device = slots, device
        self._before_capture, self._new_graph = before_capture, new_graph
        self._chunks: OrderedDict[PrefillShape, CapturedChunk] = OrderedDict()  # least recently used first
        self._prompt = 0
        self.replays = 0  # chunks replayed, over every graph this cache has held
        self.eager = 0  # chunks run eagerly: a shape's first sight, or no slot free for it
        self.captures = 0
        self.evictions = 0

    def __contains__(self, shape: PrefillShape) -> bool:
        return shape in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)

    def shapes(self) -> list[PrefillShape]:
        """The captured shapes, least recently used first."""
        return list(self._chunks)

    def new_prompt(self) -> None:
        """A prefill call begins: its chunks may not evict each other's graphs."""
        self._prompt += 1

    def run(self, shape: PrefillShape, tokens: list[int], forward: ChunkForward) -> torch.Tensor | None:
        """The chunk's logits (or None, as `forward` returns): replayed where `shape` is captured, else run
        eagerly by `forward` and captured right after, where a slot is free or can be freed."""
        if len(tokens) != shape.n_tokens:
            raise QprofError(f"prefill chunk of {len(tokens)} tokens run as the shape of {shape.n_tokens}")
        chunk = self._chunks.get(shape)
        if chunk is not None:
            return self._replay(shape, chunk, tokens)
        ids = upload_ids(tokens, self.device)
        logits = forward(ids)
        self.eager += 1
        if self._make_room():
            self._capture(shape, ids, forward)
        return logits

    def _replay(self, shape: PrefillShape, chunk: CapturedChunk, tokens: list[int]) -> torch.Tensor | None:
        self._chunks.move_to_end(shape)
        chunk.prompt = self._prompt
        chunk.ids.copy_(host_ids(tokens, self.device), non_blocking=True)  # same stream: lands before the replay
        chunk.graph.replay()
        self.replays += 1
        return None if chunk.logits is None else chunk.logits.clone()

    def _make_room(self) -> bool:
        if len(self._chunks) < self.slots:
            return True
        shape, oldest = next(iter(self._chunks.items()))
        if oldest.prompt == self._prompt:
            return False
        # its pool goes back to the allocator; the capture that follows synchronizes the device before it allocates
        del self._chunks[shape]
        self.evictions += 1
        return True

    def _capture(self, shape: PrefillShape, ids: torch.Tensor, forward: ChunkForward) -> None:
        """Capture `forward` on the eager run's ids tensor, which becomes the graph's static input."""
        self._before_capture()
        graph = self._new_graph()
        try:
            logits = graph.capture(lambda: forward(ids))
        except (RuntimeError, QprofError) as exc:  # torch's capture errors are RuntimeErrors; a launch's are ours
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QprofError(f"capturing the prefill chunk of {shape.n_tokens} tokens at position {shape.pos0} as a "
                             f"CUDA graph failed: {first} (--prefill-graphs 0 runs prefill eagerly)") from exc
        self._chunks[shape] = CapturedChunk(graph, ids, logits, self._prompt)
        self.captures += 1
