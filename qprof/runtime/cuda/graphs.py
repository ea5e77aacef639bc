"""The decode step as a CUDA graph: captured once, replayed per token to drop per-launch host cost."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qprof.runtime.options import RuntimeOptions


def graph_blocker(options: RuntimeOptions) -> str | None:
    """Why the decode step cannot be captured with these options, or None when it can."""
    if options.mask == "upload":
        return "mask=upload copies a host-built mask every step"
    if options.scalar_upload:
        return "scalar-upload copies a host scalar inside every layer"
    if options.sync_every_op:
        return "sync-every-op synchronizes the device inside the step"
    return None


class DecodeGraph:
    """One captured decode step. Its inputs live in static device buffers that the step reads
    (token and position in an int32 pair, the KV cache), so every replay is the same graph."""

    def __init__(self) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0

    @property
    def ready(self) -> bool:
        return self.graph is not None

    def capture(self, step: Callable[[], None]) -> None:
        """Record `step` (which must already have run once eagerly, so its kernels are loaded)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a side stream: torch's current stream, which every launch uses
            step()
        self.graph = graph

    def replay(self) -> None:
        self.graph.replay()
        self.replays += 1
