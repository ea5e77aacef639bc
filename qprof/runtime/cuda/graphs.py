"""A runtime step as a CUDA graph: captured once, replayed to drop per-launch host cost.

StepGraph holds one captured step: the decode step (replayed per token) or a prefill chunk of one
shape (qprof.runtime.cuda.prefill_graph). While a profiled step is captured it runs under a recording annotator: its ranges open and close as
in an eager step (NVTX pushed where the runtime's annotator pushes them), and one listener notes,
at every range boundary, which nodes the capture gained since the last one and so which op added
each node. A profiler that sees the replayed kernels charges them to those ops by node order
(qprof.analysis.graph_ops). Timing listeners are left out of the capture: the kernels and events
they queue would be captured into the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch

from qprof.annotate import NULL_ANNOTATOR, Annotator, RangeInfo
from qprof.runtime.options import RuntimeOptions

NodeLister = Callable[[], list[tuple[str, str | None]]]  # (kind, kernel name) of every node captured so far
T = TypeVar("T")


def graph_blocker(options: RuntimeOptions) -> str | None:
    """Why the decode step (and a prefill chunk) cannot be captured with these options, or None when it can."""
    if options.mask == "upload":
        return "mask=upload copies a host-built mask every step"
    if options.scalar_upload:
        return "scalar-upload copies a host scalar inside every layer"
    if options.sync_every_op:
        return "sync-every-op synchronizes the device inside the step"
    return None


@dataclass(frozen=True)
class NodeOp:
    """One node of the captured step, in node order, and the op that added it."""

    kind: str  # "kernel", "memcpy", "memset", or "other" (event and empty nodes: no device activity)
    kernel: str | None  # a kernel node's function name
    path: tuple[str, ...]  # the step's ranges open when the node was added, outermost first ("blk.3", "blk.3.attn_q")
    family: str | None  # the innermost op range's family and quant type
    qtype: str | None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = list(self.path)
        return d


class NodeRecorder:
    """Annotator listener: at each range boundary, the nodes added since the last one belong to the innermost open range."""

    def __init__(self, list_nodes: NodeLister) -> None:
        self._list_nodes = list_nodes
        self._stack: list[RangeInfo] = []
        self.nodes: list[NodeOp] = []
        self.error: str | None = None  # why the nodes could not be listed; then none are recorded

    def _take(self) -> None:
        if self.error is not None:
            return
        try:
            listed = self._list_nodes()
        except Exception as exc:  # noqa: BLE001 - the record only helps a profiler: it must never fail the capture
            self.error, self.nodes = f"{type(exc).__name__}: {exc}", []
            return
        top = self._stack[-1] if self._stack else None
        meta = top.meta if top is not None and top.level == "op" else {}
        path = tuple(i.message for i in self._stack)
        for kind, kernel in listed[len(self.nodes):]:
            self.nodes.append(NodeOp(kind, kernel, path, meta.get("family"), meta.get("qtype")))

    def begin(self, info: RangeInfo) -> None:
        self._take()
        self._stack.append(info)

    def end(self, info: RangeInfo) -> None:
        self._take()
        if self._stack:
            self._stack.pop()

    def finish(self) -> list[NodeOp]:
        self._take()
        return [] if self.error else self.nodes


def _node_kind(drv, node) -> str:
    kinds = {drv.CUgraphNodeType.CU_GRAPH_NODE_TYPE_KERNEL: "kernel",
             drv.CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEMCPY: "memcpy",
             drv.CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEMSET: "memset"}
    err, kind = drv.cuGraphNodeGetType(node)
    return kinds.get(kind, "other") if err == drv.CUresult.CUDA_SUCCESS else "other"


def _kernel_name(drv, node) -> str | None:
    """The function a kernel node runs (None where the driver cannot say: the name only cross-checks the match)."""
    err, params = drv.cuGraphKernelNodeGetParams(node)
    if err != drv.CUresult.CUDA_SUCCESS:
        return None
    for handle, get_name in ((getattr(params, "func", None), getattr(drv, "cuFuncGetName", None)),
                             (getattr(params, "kern", None), getattr(drv, "cuKernelGetName", None))):
        try:
            if handle is None or get_name is None or not int(handle):
                continue
            err, name = get_name(handle)
        except (TypeError, ValueError):  # a handle type this cuda-bindings version does not convert
            continue
        if err == drv.CUresult.CUDA_SUCCESS and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    return None


def _capturing_graph(drv):
    """The graph torch's current stream is capturing into (None when it is not capturing)."""
    from qprof.runtime.cuda.driver import check

    stream = drv.CUstream(torch.cuda.current_stream().cuda_stream)
    info = check(drv.cuStreamGetCaptureInfo(stream), "cuStreamGetCaptureInfo(captured step)")
    return next((v for v in (info if isinstance(info, tuple) else (info,)) if isinstance(v, drv.CUgraph)), None)


def programmatic_edges(graph=None) -> int | None:
    """How many of the graph's edges are programmatic (a kernel that may start before the one it depends
    on has ended: PDL); the capturing graph when none is given. None where the driver cannot say."""
    from qprof.runtime.cuda.driver import _driver

    drv = _driver()
    try:
        graph = _capturing_graph(drv) if graph is None else graph
        if graph is None:
            return None
        err, _, _, _, n = drv.cuGraphGetEdges(graph)
        if err != drv.CUresult.CUDA_SUCCESS:
            return None
        err, _, _, data, n = drv.cuGraphGetEdges(graph, n)
        if err != drv.CUresult.CUDA_SUCCESS or data is None:
            return None
    except Exception:  # noqa: BLE001 - a fact for the report; a driver without edge data must not fail the capture
        return None
    programmatic = drv.CUgraphDependencyType.CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC
    return sum(1 for d in list(data)[:n] if d is not None and d.type == programmatic)


class CaptureNodes:
    """The nodes of the graph that torch's current stream is capturing into, described once each, in node order."""

    def __init__(self) -> None:
        from qprof.runtime.cuda.driver import _driver

        self._drv = _driver()
        self._described: list[tuple[str, str | None]] = []

    def __call__(self) -> list[tuple[str, str | None]]:
        from qprof.runtime.cuda.driver import check

        drv = self._drv
        graph = _capturing_graph(drv)
        if graph is None:
            return self._described
        _, count = check(drv.cuGraphGetNodes(graph), "cuGraphGetNodes(captured step)")
        if count > len(self._described):
            nodes, _ = check(drv.cuGraphGetNodes(graph, count), "cuGraphGetNodes(captured step)")
            for node in nodes[len(self._described):count]:
                kind = _node_kind(drv, node)
                self._described.append((kind, _kernel_name(drv, node) if kind == "kernel" else None))
        return self._described


class StepGraph:
    """One captured step. Its inputs live in static device buffers that the step reads (decode: token and
    position in an int32 pair and the KV cache; a prefill chunk: its token ids), so every replay is the same graph.

    Tensors the step allocates while it is captured live in the graph's own memory pool for as long as the
    graph does; capture() hands back what the step returned (e.g. a prefill chunk's logits), which every
    replay rewrites in place."""

    def __init__(self, list_nodes: Callable[[], NodeLister] = CaptureNodes) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.replays = 0
        self.nodes: list[NodeOp] = []  # the captured step's nodes and their ops, once captured
        self.record_error: str | None = None  # why no node's op was recorded, if so
        self.programmatic_edges: int | None = None  # of the captured step (PDL), counted at capture
        self._new_lister = list_nodes
        self._recorder: NodeRecorder | None = None

    @property
    def ready(self) -> bool:
        return self.graph is not None

    def recording_annotator(self, annotator: Annotator) -> Annotator:
        """The annotator the step runs under while it is captured: the same NVTX, only the node recorder listening.

        A runtime built without an annotator (bench, generate: nobody profiles it) captures as it always did,
        with no ranges and no driver queries inside the capture."""
        if annotator is NULL_ANNOTATOR:
            return NULL_ANNOTATOR
        self._recorder = NodeRecorder(self._new_lister())
        return annotator.with_listeners([self._recorder])

    def capture(self, step: Callable[[], T]) -> T:
        """Record `step` (which must already have run once eagerly, so its kernels are loaded); nothing runs.

        Returns what `step` returned while it was captured: tensors in the graph's pool, rewritten by every replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a side stream: torch's current stream, which every launch uses
            out = step()
            self.programmatic_edges = programmatic_edges()
            if self._recorder is not None:  # nodes after the last range boundary, while the capture is open
                self.nodes = self._recorder.finish()
                self.record_error = self._recorder.error
        self.graph = graph
        self._recorder = None
        return out

    def replay(self) -> None:
        self.graph.replay()
        self.replays += 1
