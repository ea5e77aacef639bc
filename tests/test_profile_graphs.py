"""`qprof profile --graphs` on synthetic captures: the replay charged op by op, the first lines, per-token graph time."""

from __future__ import annotations

import pandas as pd
from fixtures.synthetic import graph_nodes, kineto_trace, simulate

from qprof.analysis.activity import make_table
from qprof.analysis.kineto_json import read_kineto_trace
from qprof.analysis.report import render
from qprof.ceilings.choose import Ceiling, RunCeilings
from qprof.profile.modes import REPLAY_OP, _finish
from qprof.profile.spec import ProfileRun, WorkloadResult, WorkloadSpec
from qprof.profile.summary import decode_mode, graph_agreement, render_graph_agreement, summarize
from qprof.runtime.options import RuntimeOptions

GRAPHS = RuntimeOptions(cuda_graphs=True)


def _result(**kw) -> WorkloadResult:
    return WorkloadResult(model_name="synthetic", device_name="NVIDIA H200", label="clean", n_prompt=16, n_gen=4,
                          prefill_ns=1_000_000, decode_ns=4_000_000, weight_bytes=90_000_000, n_layer=2, **kw)


def _torch_run() -> ProfileRun:
    result = _result(decode_graph=True, graph_ops=graph_nodes())
    notes: list[str] = []
    table = _finish(read_kineto_trace(kineto_trace(simulate(graphs=True))), result, notes)
    return ProfileRun(WorkloadSpec("synthetic", "cuda", 16, 4, GRAPHS), "torch", table, result, notes)


def _events_run(replay_ns: int = 120_000) -> ProfileRun:
    rows = []
    for i in range(4):  # what OpTimer writes for a replayed step: the step's input op and the replay op
        t = i * 1_000_000
        path = f"run/decode/token {8 + i}"
        rows.append({"kind": "op", "name": "step_input", "family": "step", "start_ns": t, "end_ns": t + 2_000,
                     "phase": "decode", "token": 8 + i, "nvtx_range": "step_input", "nvtx_path": path + "/step_input"})
        rows.append({"kind": "op", "name": REPLAY_OP, "family": "graph", "start_ns": t + 5_000,
                     "end_ns": t + 5_000 + replay_ns, "phase": "decode", "token": 8 + i, "nvtx_range": REPLAY_OP,
                     "nvtx_path": f"{path}/{REPLAY_OP}"})
    result = _result(decode_graph=True, graph_ops=graph_nodes())
    return ProfileRun(WorkloadSpec("synthetic", "cuda", 16, 4, GRAPHS), "events", make_table(rows), result, [])


def test_the_replay_is_split_into_the_ops_of_its_nodes():
    run = _torch_run()
    assert any("decode ran as a CUDA graph: 4 replay(s) of 10 nodes" in n for n in run.notes)
    s = summarize(run, RunCeilings(Ceiling(4800.0, "--bandwidth"), Ceiling(None, "unknown")))
    ops = {o["op"]: o for o in s["phases"]["decode"]["ops"]}
    assert REPLAY_OP not in ops and {"attn_q", "attn_v", "attention", "ffn_down", "attn_norm"} <= set(ops)
    assert ops["attention"]["family"] == "attention" and ops["attn_q"]["qtype"] == "Q4_K"  # the op's, from capture
    assert ops["ffn_down"]["calls"] == 4 * 2
    assert s["decode_graph"] is True and s["decode_mode"].startswith("CUDA graph (one step captured with 10 nodes")
    text = render(s)
    assert text.splitlines()[3].startswith("  decode: CUDA graph")
    assert "graph gap" in text and "launch gap" not in text.split("decode: per op")[0].split("decode: where")[1]


def test_graph_time_per_token_by_mode():
    torch_run, events_run = _torch_run(), _events_run()
    per = graph_agreement([events_run, torch_run])
    kernel_ns = sum(ns for ns in (3_000, 20_000, 9_000, 8_000, 40_000)) * 2  # OPS per layer x 2 layers
    assert per["events"] == 0.12 and per["torch"] == kernel_ns / 1e6
    line = render_graph_agreement(per)
    assert "events 0.120" in line and f"torch {kernel_ns / 1e6:.3f} ({100 * (kernel_ns / 1e6 - 0.12) / 0.12:+.1f}% vs events)" in line
    eager = ProfileRun(WorkloadSpec("synthetic", "cuda", 16, 4), "torch", pd.DataFrame(), _result(), [])
    assert graph_agreement([eager]) == {}
    assert decode_mode(eager) == "eager (one launch per kernel; --graphs captures it as a CUDA graph)"
    fallback = ProfileRun(WorkloadSpec("synthetic", "cuda", 16, 4, RuntimeOptions(cuda_graphs=True, mask="upload")),
                          "torch", pd.DataFrame(), _result(graph_note="mask=upload copies a host-built mask every step"))
    assert decode_mode(fallback) == "eager (CUDA graphs asked for but off: mask=upload copies a host-built mask every step)"
