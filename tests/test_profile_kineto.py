"""torch.profiler (Kineto): Chrome trace parsing (synthetic, captured fixture, and a live CPU capture)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures.synthetic import kineto_trace, simulate, write_kineto_json, write_nsys_sqlite

from qprof.analysis.activity import restrict_to_run, validate
from qprof.analysis.diagnosis import diagnose, faults
from qprof.analysis.kineto_json import decode_range, encode_range, read_kineto_trace
from qprof.analysis.nsys_sqlite import read_nsys_sqlite
from qprof.analysis.trim import slim_trace
from qprof.annotate import Annotator, RangeInfo
from qprof.errors import QprofError
from qprof.profile.kineto import RecordFunctionListener, kineto_capture, under_nsys

FIXTURES = Path(__file__).parent / "fixtures"
REAL_TRACES = sorted(FIXTURES.glob("kineto_*.json*"))


def test_range_names_round_trip():
    info = RangeInfo("op", "blk.3.attn_q", "matvec/Q4_K")
    assert decode_range(encode_range(info)) == ("op", "matvec/Q4_K", "blk.3.attn_q")
    assert decode_range("ProfilerStep#3") is None
    assert decode_range("qprof|broken") is None


def test_synthetic_trace_matches_the_nsys_parse(tmp_path):
    sim = simulate(mask_upload=True)
    k = restrict_to_run(read_kineto_trace(kineto_trace(sim)))
    n = restrict_to_run(read_nsys_sqlite(write_nsys_sqlite(sim, tmp_path / "s.sqlite")))
    validate(k)
    for kind in ("kernel", "memcpy", "range"):
        a, b = k[k["kind"] == kind], n[n["kind"] == kind]
        assert len(a) == len(b), kind
        assert list(a["start_ns"]) == list(b["start_ns"]), kind
        assert list(a["nvtx_range"].fillna("")) == list(b["nvtx_range"].fillna("")), kind
    assert set(k.loc[k["kind"] == "memcpy", "copy_kind"]) == {"HtoD", "DtoH"}
    # no cuda_sync events in this trace: the synchronize API calls stand in for them
    syncs = k[k["kind"] == "sync"]
    assert len(syncs) == len(n[n["kind"] == "sync"]) and set(syncs["name"]) == {"cuCtxSynchronize"}
    assert "ProfilerStep#1" not in set(k["name"])
    assert [f.rule for f in faults(diagnose(k))] == ["mask_upload"]


def test_cupti_sync_records_stand_in_for_unrecorded_sync_calls(tmp_path):
    sim = simulate(sync_every_op=True)
    k = restrict_to_run(read_kineto_trace(kineto_trace(sim, sync_records=True)))
    n = restrict_to_run(read_nsys_sqlite(write_nsys_sqlite(sim, tmp_path / "s.sqlite")))
    ks, ns = k[k["kind"] == "sync"], n[n["kind"] == "sync"]
    assert len(ks) == len(ns) and set(ks["name"]) == {"Context Sync"}  # the Stream Wait Event is no host sync
    assert list(ks["nvtx_range"]) == list(ns["nvtx_range"])  # placed by time on the thread with ranges
    assert [f.rule for f in faults(diagnose(k))] == ["per_layer_sync"]
    # a runtime sync seen both as an API call and as a CUPTI record counts once
    trace = kineto_trace(sim, sync_records=True)
    for ev in trace["traceEvents"]:
        if ev.get("cat") == "cuda_sync" and ev["args"]["correlation"] == sim.syncs[0][2]:
            trace["traceEvents"].append({**ev, "cat": "cuda_runtime", "name": "cudaStreamSynchronize",
                                         "pid": 4242, "tid": 4242, "args": {"correlation": sim.syncs[0][2]}})
            break
    assert (read_kineto_trace(trace)["kind"] == "sync").sum() == len(sim.syncs)


def test_trace_file_errors(tmp_path):
    with pytest.raises(QprofError, match="does not exist"):
        read_kineto_trace(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QprofError, match="not a JSON trace"):
        read_kineto_trace(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"events": []}))
    with pytest.raises(QprofError, match="no traceEvents"):
        read_kineto_trace(wrong)
    broken_gz = tmp_path / "bad.json.gz"
    broken_gz.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(QprofError, match="not a JSON trace"):
        read_kineto_trace(broken_gz)
    bare = write_kineto_json(simulate(), tmp_path / "ok.json")
    bare.write_text(json.dumps(json.loads(bare.read_text())["traceEvents"]))  # the bare-array form
    assert (read_kineto_trace(bare)["kind"] == "kernel").any()


def test_slim_trace_keeps_what_the_parser_reads(tmp_path):
    full = write_kineto_json(simulate(sync_every_op=True), tmp_path / "full.json")
    data = json.loads(full.read_text())
    data["traceEvents"].append({"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": 1, "tid": 1, "ts": 1.0,
                                "dur": 1.0, "args": {"External id": 3}})
    data["traceEvents"][5].setdefault("args", {})["Ev Idx"] = 99
    full.write_text(json.dumps(data))
    slim = slim_trace(full, tmp_path / "slim.json.gz")
    assert slim.stat().st_size < full.stat().st_size / 3
    a, b = read_kineto_trace(full), read_kineto_trace(slim)
    assert len(b) == len(a) - 1 and not (b["kind"] == "cpu_op").any()
    cols = ["kind", "name", "start_ns", "end_ns", "correlation_id", "nvtx_path", "bytes", "block"]
    a = a[a["kind"] != "cpu_op"].reset_index(drop=True)
    assert a[cols].astype(str).equals(b[cols].astype(str))


def test_refuses_under_nsys(monkeypatch, tmp_path):
    monkeypatch.setenv("NSYS_PROFILING_SESSION_ID", "1")
    assert under_nsys()
    with pytest.raises(QprofError, match="only one CUPTI client"), kineto_capture("cpu", tmp_path / "t.json"):
        pass


def test_live_cpu_capture_keeps_the_range_hierarchy(tmp_path, monkeypatch):
    import torch

    for k in [k for k in os.environ if k.startswith("NSYS_")]:
        monkeypatch.delenv(k)
    ann = Annotator(nvtx_enabled=False, listeners=(RecordFunctionListener(),))
    x = torch.randn(32, 32)
    trace = tmp_path / "live.json"
    with kineto_capture("cpu", trace), ann.run("run"), ann.phase("decode"), ann.token(5), ann.layer(2):
        with ann.op("blk.2.attn_q", "matvec", "Q4_K"):
            x = x @ x
        with ann.op("blk.2.swiglu", "swiglu"):
            x = torch.nn.functional.silu(x)
    df = read_kineto_trace(trace)
    ranges = df[df["kind"] == "range"].set_index("name")
    assert ranges.loc["blk.2.attn_q", "level"] == "op" and ranges.loc["blk.2.attn_q", "qtype"] == "Q4_K"
    assert ranges.loc["blk.2.attn_q", "nvtx_path"] == "run/decode/token 5/blk.2/blk.2.attn_q"
    ops = df[df["kind"] == "cpu_op"]
    mm = ops[ops["name"].str.contains("mm")]
    assert len(mm) and set(mm["nvtx_range"]) == {"blk.2.attn_q"} and set(mm["token"]) == {5}


@pytest.mark.skipif(not REAL_TRACES, reason="no captured Kineto fixture in tests/fixtures (tests/gpu/capture_fixtures.py)")
@pytest.mark.parametrize("path", REAL_TRACES, ids=lambda p: p.name)
def test_captured_fixture(path):
    df = restrict_to_run(read_kineto_trace(path))
    validate(df)
    k = df[df["kind"] == "kernel"]
    assert len(k) > 0, "Kineto must see the kernels launched through the driver API"
    assert k["nvtx_range"].notna().mean() > 0.95
    assert set(k["family"]) & {"matvec", "rmsnorm"}
    found = faults(diagnose(df))
    if "mask" in path.name:
        assert any(f.rule == "mask_upload" for f in found), [f.message for f in found]
    else:
        assert not found, [f.message for f in found]
