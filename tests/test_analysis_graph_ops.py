"""Graph-mode attribution: nodes recorded at capture, replayed kernels charged to them (nsys node ids and Kineto order)."""

from __future__ import annotations

import pandas as pd
import pytest
from fixtures.synthetic import graph_nodes, kineto_trace, op_bytes, simulate, write_nsys_sqlite

from qprof.analysis import attribution as attr
from qprof.analysis.activity import fill_kernel_bytes, restrict_to_run
from qprof.analysis.diagnosis import diagnose, faults
from qprof.analysis.graph_ops import charge_replays, device_nodes, op_meta
from qprof.analysis.kineto_json import read_kineto_trace
from qprof.analysis.nsys_sqlite import read_nsys_sqlite
from qprof.annotate import Annotator
from qprof.runtime.cuda.graphs import NodeRecorder

REPLAY = "decode_graph"


def _nsys(tmp_path, graphs: bool) -> pd.DataFrame:
    db = write_nsys_sqlite(simulate(graphs=graphs), tmp_path / f"g{int(graphs)}.sqlite")
    return fill_kernel_bytes(restrict_to_run(read_nsys_sqlite(db)), op_bytes())


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    return _nsys(tmp_path_factory.mktemp("eager"), graphs=False)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    return _nsys(tmp_path_factory.mktemp("graph"), graphs=True)


def test_replay_kernels_are_charged_to_the_replay_range_before_matching(replayed):
    dec = replayed[(replayed["kind"] == "kernel") & (replayed["phase"] == "decode")]
    assert (dec["nvtx_range"] == REPLAY).all()
    assert dec["graph_node"].notna().all() and dec["correlation_id"].nunique() == 4


def test_nsys_replays_match_by_node_id_and_read_like_eager(replayed, eager):
    table, notes = charge_replays(replayed, graph_nodes(), REPLAY)
    assert "4 replay(s) of 10 nodes" in notes[0] and "graph node id" in notes[0]
    dec = table[(table["kind"] == "kernel") & (table["phase"] == "decode")]
    assert set(dec["nvtx_range"]) == {f"blk.{i}.{op}" for i in (0, 1) for op in ("attn_norm", "attn_q", "attn_v",
                                                                              "attention", "ffn_down")}
    assert set(dec["layer"]) == {0, 1} and list(dec["token"].unique()) == [8, 9, 10, 11]
    assert dec["nvtx_path"].str.startswith("run/decode/token ").all() and not dec["nvtx_path"].str.contains(REPLAY).any()
    table = fill_kernel_bytes(table, op_bytes())
    graph_ops = attr.by_range(table, "decode", op_meta=op_meta(graph_nodes())).set_index("op")
    eager_ops = attr.by_range(eager, "decode").set_index("op")
    for op in ("attn_q", "attn_v", "attention", "ffn_down", "attn_norm"):
        # the same kernels, calls and families as an eager step; only the host ranges around them are gone
        assert graph_ops.loc[op, ["family", "qtype", "calls", "time_ns"]].tolist() == \
            eager_ops.loc[op, ["family", "qtype", "calls", "time_ns"]].tolist()
    top = attr.top_kernels(table, phase="decode").set_index("name")
    assert top.loc["matvec_q4_k", "bytes"] == 4 * 2 * (9_437_184 + 33_030_144)  # weight bytes joined through the ops


def test_kineto_replays_match_by_order(tmp_path):
    table = restrict_to_run(read_kineto_trace(kineto_trace(simulate(graphs=True))))
    assert table["graph_node"].isna().all()  # this Kineto build records no node ids
    charged, notes = charge_replays(table, graph_nodes(), REPLAY)
    assert "order within each replay" in notes[0]
    dec = charged[(charged["kind"] == "kernel") & (charged["phase"] == "decode")]
    assert dec.groupby("nvtx_range").size().to_dict() == {f"blk.{i}.{op}": 4 for i in (0, 1)
                                                          for op in ("attn_norm", "attn_q", "attn_v", "attention",
                                                                     "ffn_down")}


def test_graph_gaps_are_the_devices_not_the_hosts(replayed):
    table, _ = charge_replays(replayed, graph_nodes(), REPLAY)
    g = attr.gaps(table, "decode")
    inside = g[g["gap"] == "graph gap"]
    assert len(inside) == 4 * 9 and (inside["dur_ns"] == 500).all()  # 9 node-to-node gaps per replay
    assert not any(f.rule == "launch_bound" for f in diagnose(table))
    assert faults(diagnose(table)) == []


def test_a_replay_that_does_not_match_keeps_its_charge_and_says_why(replayed):
    short = graph_nodes()[:-1]
    table, notes = charge_replays(replayed, short, REPLAY)
    assert "4 replay(s) did not match the 9 recorded nodes (10 device rows against 9 recorded nodes)" in notes[0]
    assert (table.loc[(table["kind"] == "kernel") & (table["phase"] == "decode"), "nvtx_range"] == REPLAY).all()
    wrong = [dict(n, kernel="rmsnorm_f32") if i == 1 else n for i, n in enumerate(graph_nodes())]
    _, notes = charge_replays(replayed, wrong, REPLAY)
    assert "node 1 runs matvec_q4_k but rmsnorm_f32 was captured" in notes[0]
    _, notes = charge_replays(replayed, [], REPLAY)
    assert "no node of it was recorded" in notes[0]


def test_nodes_without_device_activity_are_left_out_of_the_match(replayed):
    nodes = graph_nodes()
    nodes.insert(3, {"kind": "other", "kernel": None, "path": ["blk.0"], "family": None, "qtype": None})
    assert len(device_nodes(nodes)) == 10
    _, notes = charge_replays(replayed, nodes, REPLAY)
    assert "4 replay(s) of 10 nodes" in notes[0]


class FakeCapture:
    """Stands in for the capturing graph: launches append nodes, the recorder lists them."""

    def __init__(self) -> None:
        self.nodes: list[tuple[str, str | None]] = []

    def launch(self, kernel: str) -> None:
        self.nodes.append(("kernel", kernel))

    def __call__(self) -> list[tuple[str, str | None]]:
        return list(self.nodes)


def test_recorder_gives_each_node_the_op_that_added_it():
    cap = FakeCapture()
    rec = NodeRecorder(cap)
    ann = Annotator(nvtx_enabled=False).with_listeners([rec])
    cap.launch("before_any_range")
    with ann.op("token_embd", "get_rows", "Q4_K"):
        cap.launch("get_rows_q4_k")
    with ann.layer(0):
        with ann.op("blk.0.attn_norm", "rmsnorm"):
            cap.launch("rmsnorm_f32")
        cap.launch("between_ops")
        with ann.op("blk.0.attention", "attention"):
            cap.launch("attn_decode_d64")
            cap.launch("attn_combine")
    cap.launch("after_all")
    nodes = [n.as_dict() for n in rec.finish()]
    assert [(n["kernel"], n["path"], n["family"], n["qtype"]) for n in nodes] == [
        ("before_any_range", [], None, None),
        ("get_rows_q4_k", ["token_embd"], "get_rows", "Q4_K"),
        ("rmsnorm_f32", ["blk.0", "blk.0.attn_norm"], "rmsnorm", None),
        ("between_ops", ["blk.0"], None, None),
        ("attn_decode_d64", ["blk.0", "blk.0.attention"], "attention", None),
        ("attn_combine", ["blk.0", "blk.0.attention"], "attention", None),
        ("after_all", [], None, None),
    ]
    assert op_meta(nodes)["blk.0.attention"] == ("attention", None)


def test_recording_annotator_keeps_nvtx_and_drops_the_timing_listeners():
    class Timing:
        def __init__(self):
            self.seen = []

        def begin(self, info):
            self.seen.append(info.message)

        def end(self, info):
            pass

    timing = Timing()
    ann = Annotator(nvtx_enabled=True, listeners=(timing,), force_nvtx=False)
    rec = NodeRecorder(FakeCapture())
    twin = ann.with_listeners([rec])
    assert twin.nvtx_on == ann.nvtx_on and twin.listeners == [rec]
    with twin.op("blk.0.attn_q", "matvec", "Q4_K"):
        pass
    assert timing.seen == []  # the step's ranges under capture never reach the timing listener


def test_a_driver_that_cannot_list_nodes_never_fails_the_capture():
    def broken():
        raise RuntimeError("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED")

    rec = NodeRecorder(broken)
    ann = Annotator(nvtx_enabled=False).with_listeners([rec])
    with ann.op("blk.0.attn_q", "matvec", "Q4_K"):
        pass
    assert rec.finish() == [] and "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED" in rec.error


def test_node_ids_out_of_capture_order_fall_back_to_start_order(replayed):
    scrambled = replayed.copy()
    ids = scrambled["graph_node"].notna()
    scrambled.loc[ids, "graph_node"] = -scrambled.loc[ids, "graph_node"]  # node ids no longer in creation order
    table, notes = charge_replays(scrambled, graph_nodes(), REPLAY)
    assert "4 replay(s) of 10 nodes" in notes[0] and "(matched by order within each replay)" in notes[0]
    dec = table[(table["kind"] == "kernel") & (table["phase"] == "decode")]
    assert dec.groupby("nvtx_range").size().eq(4).all() and len(dec.groupby("nvtx_range")) == 10


def test_an_unprofiled_runtime_captures_without_recording():
    from qprof.annotate import NULL_ANNOTATOR
    from qprof.runtime.cuda.graphs import StepGraph

    def no_lister():
        raise AssertionError("the driver must not be asked about nodes when nobody profiles")

    assert StepGraph(list_nodes=no_lister).recording_annotator(NULL_ANNOTATOR) is NULL_ANNOTATOR
    profiled = StepGraph(list_nodes=FakeCapture).recording_annotator(Annotator(nvtx_enabled=False))
    assert profiled is not NULL_ANNOTATOR and profiled.listeners  # a profiler's runtime: the recorder listens
