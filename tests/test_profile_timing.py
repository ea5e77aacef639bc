"""Timing modes and the workload runner on the CPU: host-timer listener, launch-blocking child, spec, bias."""

from __future__ import annotations

import json
import time

import pytest

from qprof.analysis.activity import make_table, validate
from qprof.annotate import Annotator
from qprof.errors import QprofError
from qprof.profile.child import child_main, read_child_result
from qprof.profile.loop import load_model, op_weight_bytes, prompt_tokens
from qprof.profile.modes import ops_from_ranges, profile_workload
from qprof.profile.nvtx_overhead import NvtxOverhead
from qprof.profile.spec import FAULT_SWITCHES, WorkloadSpec
from qprof.profile.timing_blocking import bias_table
from qprof.profile.timing_events import OpTimer
from qprof.runtime.options import RuntimeOptions

TINY = "tiny-q4_k_m"


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY)


def test_host_timer_times_nested_ranges():
    timer = OpTimer("host")
    ann = Annotator(nvtx_enabled=False, listeners=(timer,))
    with ann.run("run"), ann.phase("decode"), ann.token(3), ann.layer(1):
        with ann.op("blk.1.attn_q", "matvec", "Q4_K"):
            time.sleep(0.002)
        with ann.op("blk.1.swiglu", "swiglu"):
            pass
    df = validate(timer.table())
    op = df[df["kind"] == "op"].set_index("name")
    assert op.loc["blk.1.attn_q", "dur_ns"] >= 2_000_000
    assert op.loc["blk.1.attn_q", "nvtx_path"] == "run/decode/token 3/blk.1/blk.1.attn_q"
    assert (op.loc["blk.1.attn_q", "family"], op.loc["blk.1.attn_q", "qtype"]) == ("matvec", "Q4_K")
    assert (op.loc["blk.1.attn_q", "token"], op.loc["blk.1.attn_q", "layer"]) == (3, 1)
    ranges = df[df["kind"] == "range"].set_index("name")
    assert ranges.loc["run", "start_ns"] == 0 and ranges.loc["run", "level"] == "run"
    assert ranges.loc["run", "end_ns"] >= op.loc["blk.1.swiglu", "end_ns"]
    timer.reset()
    assert timer.table().empty


def test_op_timer_rejects_unknown_clock():
    with pytest.raises(ValueError):
        OpTimer("sundial")


def test_spec_validation_and_json_round_trip():
    spec = WorkloadSpec(TINY, "cpu", 4, 2, RuntimeOptions(mask="upload", sync_every_op=True))
    back = WorkloadSpec.from_json(spec.to_json())
    assert back == spec
    assert spec.with_options(mask="skip").options.label() == "sync-every-op"
    for kwargs, msg in [({"n_prompt": 0}, "--n-prompt must be at least 1"), ({"n_gen": 0}, "--n-gen must be"),
                        ({"device": "tpu"}, "unknown device 'tpu'")]:
        with pytest.raises(QprofError, match=msg):
            WorkloadSpec(TINY, **{"device": "cpu", **kwargs})
    labels = [label for label, _ in FAULT_SWITCHES]
    assert labels[0] == "clean" and len(labels) == 6
    for label, changes in FAULT_SWITCHES:
        assert RuntimeOptions(**changes).label() == label


def test_prompt_and_weight_bytes(tiny):
    toks = prompt_tokens(16, tiny.config.n_vocab, seed=1)
    assert len(toks) == 16 and all(0 <= t < tiny.config.n_vocab for t in toks)
    assert toks != prompt_tokens(16, tiny.config.n_vocab, seed=2)
    ob = op_weight_bytes(tiny)
    assert ob["blk.0.attn_q"] == tiny.tensors["blk.0.attn_q.weight"].n_bytes
    emb = tiny.tensors["token_embd.weight"]
    assert ob["token_embd"] == emb.n_bytes // emb.shape[0]


def test_events_mode_on_cpu_states_its_fallback(tiny):
    run = profile_workload(WorkloadSpec(TINY, "cpu", 4, 2), "events", model=tiny)
    assert run.timing == "events" and any("host timers" in n for n in run.notes)
    df = run.table
    ops = df[df["kind"] == "op"]
    n_layer = tiny.config.n_layer
    assert (ops.loc[ops["phase"] == "decode", "name"].str.endswith("attn_q")).sum() == 2 * n_layer
    assert sorted(ops.loc[ops["phase"] == "decode", "token"].unique()) == [4, 5]
    assert "warmup" not in "".join(df["nvtx_path"].fillna(""))
    mv = ops[ops["name"] == "blk.0.attn_q"]
    assert (mv["bytes"] == tiny.tensors["blk.0.attn_q.weight"].n_bytes).all()
    assert run.result.tg_tok_s > 0 and run.result.n_gen == 2


def test_nsys_mode_falls_back_to_events_with_the_reason(tiny, monkeypatch, tmp_path):
    from qprof.analysis import nsys_tool as nsys
    from qprof.doctor import NsysInfo

    monkeypatch.setattr(nsys, "_nsys_info", lambda: NsysInfo(None, False, "nsys not found on PATH"))
    run = profile_workload(WorkloadSpec(TINY, "cpu", 4, 1), "nsys", out_dir=tmp_path, model=tiny)
    assert run.timing == "events"
    assert any("nsys not found on PATH; falling back to --timing events" in n for n in run.notes)
    assert not (run.table["kind"] == "op").empty


def test_unknown_timing_mode():
    with pytest.raises(QprofError, match="unknown timing mode 'sundial'"):
        profile_workload(WorkloadSpec(TINY, "cpu", 1, 1), "sundial")


def test_child_main_writes_result_and_host_table(tmp_path):
    spec_file, result_file = tmp_path / "spec.json", tmp_path / "result.json"
    spec_file.write_text(WorkloadSpec(TINY, "cpu", 3, 1).to_json())
    assert child_main(["--spec", str(spec_file), "--result", str(result_file), "--host-timer"]) == 0
    table, result = read_child_result(result_file)
    assert result.n_prompt == 3 and result.prefill_ns > 0
    assert (table["kind"] == "op").sum() > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(spec_file.read_text()), "model": "no-such-workload"}))
    assert child_main(["--spec", str(bad), "--result", str(tmp_path / "r2.json")]) == 2


@pytest.mark.slow
def test_blocking_mode_runs_in_a_child(tmp_path):
    run = profile_workload(WorkloadSpec(TINY, "cpu", 3, 1), "blocking", out_dir=tmp_path)
    assert run.timing == "blocking"
    assert any("CUDA_LAUNCH_BLOCKING has no effect on the CPU runtime" in n for n in run.notes)
    assert (run.table["kind"] == "op").sum() > 0 and run.result.tg_tok_s > 0


def test_torch_mode_on_cpu_keeps_the_trace(tiny, tmp_path):
    run = profile_workload(WorkloadSpec(TINY, "cpu", 3, 1), "torch", out_dir=tmp_path, model=tiny)
    assert (tmp_path / "kineto_trace.json").exists() and run.artifacts["kineto_trace"]
    df = run.table
    assert (df["kind"] == "cpu_op").any()
    ops = df[df["kind"] == "op"]  # op rows derived from the record_function ranges
    assert (ops["phase"] == "decode").any() and set(ops["family"].dropna()) >= {"matvec", "rmsnorm"}


def test_ops_from_ranges_only_when_nothing_else_was_timed():
    ranges = make_table([{"kind": "range", "name": "blk.0.attn_q", "level": "op", "family": "matvec",
                          "start_ns": 0, "end_ns": 9}])
    derived = ops_from_ranges(ranges)
    assert sorted(derived["kind"]) == ["op", "range"]
    with_kernels = make_table([*ranges.to_dict("records"),
                               {"kind": "kernel", "name": "k", "start_ns": 1, "end_ns": 2}])
    assert not (ops_from_ranges(with_kernels)["kind"] == "op").any()


def test_bias_table():
    def ops(scale):
        return make_table([{"kind": "op", "name": f"o{i}", "family": fam, "phase": "decode", "start_ns": 0,
                            "end_ns": int(ns * scale)} for i, (fam, ns) in enumerate([("matvec", 1e6), ("add", 2e5)])])

    t = bias_table(ops(1.5), ops(1.0)).set_index("family")
    assert t.loc["matvec", "blocking_ms"] == pytest.approx(1.5) and t.loc["matvec", "events_ms"] == pytest.approx(1.0)
    assert t.loc["matvec", "bias_pct"] == pytest.approx(50.0)
    assert t.loc["TOTAL", "bias_pct"] == pytest.approx(50.0)


def test_nvtx_overhead_math():
    o = NvtxOverhead(on_tok_s=[90.0, 95.0, 91.0], off_tok_s=[100.0, 99.0, 101.0], forced_tok_s=[80.0, 70.0, 75.0])
    assert o.on == 91.0 and o.off == 100.0 and o.overhead_pct == pytest.approx(9.0)
    assert o.forced == 75.0 and o.forced_overhead_pct == pytest.approx(25.0)
    assert NvtxOverhead([1.0, 3.0], [2.0, 2.0]).on == 2.0
    text = o.describe("cuda")
    assert "on (no tool attached, ranges skipped) 91.00, +9.00%" in text
    assert "forced on (QPROF_NVTX=1: every range pushed through nvtx with no tool to record it) 75.00, +25.00%" in text
    attached = NvtxOverhead([90.0], [100.0], [80.0], tool_attached=True).describe("cuda")
    assert "on (a tool is attached, ranges pushed)" in attached and "no tool to record" not in attached
    assert o.as_dict()["forced_overhead_pct"] == pytest.approx(25.0) and o.as_dict()["tool_attached"] is False


def test_nvtx_overhead_predicts_from_the_cost_of_one_range():
    # 500 ranges per step, 2 µs more each when forced: 1 ms on a 10 ms (100 tok/s) step = 10%
    o = NvtxOverhead([100.0], [100.0], [90.0], range_ns={"off": 300.0, "on": 300.0, "forced": 2300.0},
                     ranges_per_token=500)
    assert o.predicted_pct("forced") == pytest.approx(10.0) and o.predicted_pct("on") == pytest.approx(0.0)
    assert "a decode step opens 500 ranges, so on costs +0.00% and forced +10.00%" in o.describe("cuda")
    assert NvtxOverhead([1.0], [1.0]).predicted_pct("forced") == 0.0  # nothing measured: no prediction
    assert o.as_dict()["predicted_pct"]["forced"] == pytest.approx(10.0)


def test_an_annotator_switches_nvtx_in_place():
    from qprof.annotate import Annotator

    ann = Annotator(nvtx_enabled=True, env={})
    op = ann.op  # what a runtime holds
    assert not ann.nvtx_on and op("blk.0.attn_q", "matvec") is op("blk.0.attn_k", "add")  # the shared no-op
    ann.set_nvtx(True, force=True, env={})
    assert ann.nvtx_on and op("blk.0.attn_q", "matvec") is not op("blk.0.attn_k", "add")
    with op("blk.0.attn_q", "matvec"):
        pass
    built = op("blk.0.attn_q", "matvec")
    ann.set_nvtx(False)
    assert not ann.nvtx_on and "--no-nvtx" in ann.nvtx_reason
    ann.set_nvtx(True, force=True, env={})
    assert op("blk.0.attn_q", "matvec") is built  # each domain keeps the ranges built for it


def test_gc_is_paused_inside_a_measured_run_and_restored_after():
    import gc

    from qprof.profile.loop import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
