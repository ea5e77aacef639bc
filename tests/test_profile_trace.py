"""Perfetto/Chrome trace export: format, Kineto categories, launch->kernel flows, and loading with HTA."""

from __future__ import annotations

import json

import pytest
from fixtures.synthetic import op_bytes, simulate, write_nsys_sqlite

from qprof.analysis.activity import fill_kernel_bytes, make_table, restrict_to_run
from qprof.analysis.nsys_sqlite import read_nsys_sqlite
from qprof.analysis.trace_export import GPU_PID, HOST_PID, to_chrome_trace, write_chrome_trace
from qprof.errors import QprofError


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    db = write_nsys_sqlite(simulate(mask_upload=True), tmp_path_factory.mktemp("trace") / "t.sqlite")
    return fill_kernel_bytes(restrict_to_run(read_nsys_sqlite(db)), op_bytes())


def test_chrome_trace_shape(table):
    trace = to_chrome_trace(table, "NVIDIA H100 80GB HBM3")
    assert trace["distributedInfo"] == {"backend": "nccl", "rank": 0, "world_size": 1}
    assert trace["deviceProperties"][0]["name"] == "NVIDIA H100 80GB HBM3"
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    for e in complete:
        assert {"name", "cat", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["ts"] >= 0 and e["dur"] >= 0
    cats = {e["cat"] for e in complete}
    assert {"kernel", "gpu_memcpy", "cuda_driver", "cuda_runtime", "cuda_sync", "user_annotation"} <= cats
    kernels = [e for e in complete if e["cat"] == "kernel"]
    assert len(kernels) == (table["kind"] == "kernel").sum()
    assert all(e["pid"] == GPU_PID and e["tid"] == e["args"]["stream"] for e in kernels)
    k0 = table[table["kind"] == "kernel"].iloc[0]
    first = min(kernels, key=lambda e: e["ts"])
    assert first["dur"] == pytest.approx(k0["dur_ns"] / 1000.0)  # µs
    assert first["args"]["correlation"] == int(k0["correlation_id"])
    assert first["args"]["grid"] == [64, 1, 1]
    matvec = next(e for e in kernels if e["name"].startswith("matvec"))
    assert matvec["args"]["bytes"] > 0 and matvec["args"]["achieved GB/s"] > 0
    copies = [e for e in complete if e["cat"] == "gpu_memcpy"]
    assert {e["name"] for e in copies} == {"Memcpy HtoD", "Memcpy DtoH"}
    ranges = [e for e in complete if e["cat"] == "user_annotation" and e["name"] == "blk.0.attn_q"]
    assert ranges and all(e["pid"] == HOST_PID for e in ranges)


def test_flows_pair_every_launch_with_its_kernel(table):
    events = to_chrome_trace(table)["traceEvents"]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts.keys() == ends.keys()
    device = table[table["kind"].isin(["kernel", "memcpy"])]
    assert set(starts) == set(device["correlation_id"].astype(int))
    for cid, s in starts.items():
        f = ends[cid]
        assert s["cat"] == f["cat"] == "ac2g" and f["bp"] == "e"
        assert s["pid"] == HOST_PID and f["pid"] == GPU_PID
        assert f["ts"] >= s["ts"]  # the kernel starts after its launch


def test_op_timed_tables_export(tmp_path):
    df = make_table([{"kind": "op", "name": "blk.0.attn_q", "family": "matvec", "qtype": "Q4_K", "start_ns": 5,
                      "end_ns": 3005, "phase": "decode", "token": 3}])
    path = write_chrome_trace(df, tmp_path / "ops.json")
    events = json.loads(path.read_text())["traceEvents"]
    op = next(e for e in events if e.get("cat") == "gpu_user_annotation")
    assert op["dur"] == 3.0 and op["args"]["token"] == 3 and op["args"]["qtype"] == "Q4_K"


def test_write_errors(tmp_path, table):
    with pytest.raises(QprofError, match="must end in .json"):
        write_chrome_trace(table, tmp_path / "trace.txt")
    with pytest.raises(QprofError, match="does not exist"):
        write_chrome_trace(table, tmp_path / "no" / "such" / "trace.json")


def test_holistic_trace_analysis_loads_it(tmp_path, table):
    hta = pytest.importorskip("hta.trace_analysis", reason="HolisticTraceAnalysis is not installed (pip install "
                              "HolisticTraceAnalysis; it is in the dev extras)")
    write_chrome_trace(table, tmp_path / "rank-0.json", "H100")
    analysis = hta.TraceAnalysis(trace_dir=str(tmp_path))
    trace = analysis.t.get_trace(0)
    n_kernels = int((table["kind"] == "kernel").sum())
    n_copies = int((table["kind"] == "memcpy").sum())
    assert len(trace) >= n_kernels + n_copies
    kinds = analysis.get_gpu_kernel_breakdown(visualize=False)[0].set_index("kernel_type")
    assert "COMPUTATION" in kinds.index and "MEMORY" in kinds.index
    # HTA rounds timestamps down to whole µs and trims overlaps, so its total is close, not equal
    temporal = analysis.get_temporal_breakdown(visualize=False)
    assert float(temporal["compute_time(us)"].iloc[0]) == pytest.approx(
        table.loc[table["kind"] == "kernel", "dur_ns"].sum() / 1000.0, rel=0.05)
