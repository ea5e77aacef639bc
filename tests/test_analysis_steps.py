"""Phases and decode steps found from a trace's rhythm (no NVTX), and the per-step rules on small synthetic traces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qprof.analysis.activity import make_table
from qprof.analysis.diagnosis import diagnose
from qprof.analysis.step_rules import Idle, host_memory
from qprof.analysis.steps import LOAD_MIN_BYTES, find_steps


class Trace:
    """A host thread launching kernels one by one (or as one graph launch) and reading back each step."""

    def __init__(self) -> None:
        self.t, self.corr, self.rows = 1_000_000, 0, []

    def _api(self, name: str, dur: int) -> int:
        self.corr += 1
        self.rows.append({"kind": "api", "name": name, "start_ns": self.t, "end_ns": self.t + dur, "tid": 1,
                          "correlation_id": self.corr})
        self.t += dur
        return self.corr

    def kernels(self, names: list[str], graph: bool = False, dur: int = 5_000) -> None:
        corr = self._api("cudaGraphLaunch", 20_000) if graph else None
        for i, name in enumerate(names):
            c = corr if graph else self._api("cudaLaunchKernel", 3_000)
            start = self.t + (i * (dur + 1_000) if graph else 1_000)
            self.rows.append({"kind": "kernel", "name": name, "start_ns": start, "end_ns": start + dur, "stream": 7,
                              "correlation_id": c, "graph_node": ((4 << 32) | i) if graph else None})
            if not graph:
                self.t = start + dur
        if graph:
            self.t += len(names) * (dur + 1_000)

    def copy(self, kind: str, nbytes: int, memory: str = "Pinned", sync: bool = True) -> None:
        corr = self._api("cudaMemcpyAsync", 2_000)
        label = f"Memcpy {kind} ({memory} -> Device)" if kind == "HtoD" else f"Memcpy {kind} (Device -> {memory})"
        self.rows.append({"kind": "memcpy", "name": label, "copy_kind": kind, "bytes": nbytes, "start_ns": self.t,
                          "end_ns": self.t + 1_000 + nbytes // 10_000, "stream": 7, "correlation_id": corr})
        self.t += 1_000 + nbytes // 10_000
        if sync:
            c = self._api("cudaStreamSynchronize", 4_000)
            self.rows.append({"kind": "sync", "name": "cudaStreamSynchronize", "start_ns": self.t - 4_000,
                              "end_ns": self.t, "correlation_id": c})

    def idle(self, ns: int) -> None:
        self.t += ns

    def table(self) -> pd.DataFrame:
        return make_table(self.rows)


DECODE = ["rms_norm_f32", "mul_mat_vec_q", "mul_mat_vec_q", "flash_attn_ext_vec", "mul_mat_vec_q"]
PREFILL = ["rms_norm_f32", "mul_mat_q", "mul_mat_q_stream_k_fixup", "mul_mat_q", "flash_attn_ext_f16", "mul_mat_q"]


def _llama_like(steps: int = 6, load: bool = True) -> pd.DataFrame:
    tr = Trace()
    if load:
        for _ in range(4):
            tr.copy("HtoD", LOAD_MIN_BYTES // 2, memory="Pageable")
    tr.kernels(PREFILL)
    tr.copy("DtoH", 128_000)
    tr.idle(200_000)
    tr.kernels(DECODE)  # eager, before the graph exists
    tr.copy("DtoH", 128_000)
    for _ in range(steps):
        tr.copy("HtoD", 4)
        tr.copy("HtoD", 512)
        tr.kernels(DECODE, graph=True)
        tr.copy("DtoH", 128_000)
        tr.idle(50_000)
    return tr.table()


def test_llama_like_rhythm():
    df, steps = find_steps(_llama_like())
    assert steps.method == "read-backs" and steps.step_mode == "graph" and steps.step_kernels == len(DECODE)
    assert steps.counts == {"load": 1, "prefill": 1, "warmup": 1, "decode": 6}
    assert sorted(df.loc[df["phase"] == "decode", "token"].unique()) == list(range(6))
    load = df[df["phase"] == "load"]
    assert (load["kind"] == "memcpy").sum() == 4 and not (load["kind"] == "kernel").any()
    assert "6 decode steps repeat one set of 5 kernels (launched as one CUDA graph)" in steps.how
    assert "model load (4 host→device copies" in steps.how and "1 warm-up step with the same kernels" in steps.how


def test_a_small_upload_before_the_first_kernel_is_no_model_load():
    _df, steps = find_steps(_llama_like(load=False))
    assert "load" not in steps.counts and "model load" not in steps.how


def test_two_read_backs_per_step_make_a_period_two_step():
    tr = Trace()
    tr.kernels(["setup_kernel"])
    tr.copy("DtoH", 1)
    tr.kernels(PREFILL * 3)
    tr.copy("DtoH", 1)
    for _ in range(5):
        tr.kernels(["check_a", "check_b"])
        tr.copy("DtoH", 1)
        tr.kernels(DECODE * 3)
        tr.copy("DtoH", 1)
    df, steps = find_steps(tr.table())
    assert steps.segments_per_step == 2 and steps.counts["decode"] == 5 and steps.counts["prefill"] == 1
    assert steps.counts["setup"] == 1 and steps.step_mode == "eager"
    assert "2 device→host reads (1 B)" in steps.how
    per_step = df[(df["phase"] == "decode") & (df["kind"] == "kernel")].groupby("token").size()
    assert (per_step == 17).all()


def test_no_read_backs_falls_back_to_syncs_and_then_to_no_steps():
    tr = Trace()
    for _ in range(4):
        tr.kernels(DECODE)
        tr.copy("HtoD", 4)  # each followed by a sync: the syncs mark the steps
    _, steps = find_steps(tr.table())
    assert steps.method == "syncs" and steps.counts["decode"] >= 3
    lone = Trace()
    lone.kernels(DECODE)
    df, steps = find_steps(lone.table())
    assert steps.method == "none" and "no steps found" in steps.how and df["phase"].isna().all()


def test_nvtx_phases_win():
    df = make_table([{"kind": "kernel", "name": "k", "start_ns": i, "end_ns": i + 1, "phase": "decode", "token": i}
                     for i in range(3)])
    _, steps = find_steps(df)
    assert steps.method == "nvtx" and steps.counts == {"decode": 3}


def test_idle_overlap_counts_only_gpu_idle_time():
    df = make_table([
        {"kind": "kernel", "name": "a", "start_ns": 0, "end_ns": 100, "phase": "decode", "token": 0},
        {"kind": "kernel", "name": "b", "start_ns": 300, "end_ns": 400, "phase": "decode", "token": 0},
        {"kind": "kernel", "name": "c", "start_ns": 1000, "end_ns": 1100, "phase": "decode", "token": 1},
    ])
    idle = Idle(df)
    calls = pd.DataFrame({"start_ns": [50, 150, 350, 0], "end_ns": [250, 900, 360, 1100]})
    assert list(idle.overlap(calls)) == [150, 150 + 500, 0, 200 + 600]
    assert host_memory("Memcpy HtoD (Pageable -> Device)") == "pageable"
    assert host_memory("Memcpy DtoH (Device -> Pinned)") == "pinned" and host_memory("Memcpy DtoD") is None


def test_rules_on_a_llama_like_trace():
    df, _ = find_steps(_llama_like())
    by_rule = {f.rule: f for f in diagnose(df)}
    up = by_rule["uploads_per_step"]
    assert up.severity == "fault" and up.numbers["per_step"] == 2 and up.numbers["bytes_per_step"] == 516
    assert "from pinned memory" in up.message and "2 syncs per step wait for them" in up.message
    syncs = by_rule["syncs_per_step"]
    assert syncs.numbers["per_step"] == 3 and syncs.numbers["after_reads"] == 6 and syncs.numbers["beside_uploads"] == 12
    read = by_rule["readbacks_per_step"]
    assert read.severity == "advice" and read.numbers["per_step"] == 1 and "128.0 kB each" in read.message
    idle = by_rule["step_boundary_idle"]
    assert idle.numbers["boundaries"] == 5 and "cudaGraphLaunch" in idle.message
    assert idle.message.endswith("(greedy sampling on the device: --decode-loop in-flight in qprof bench and profile)")
    for f in by_rule.values():
        share = f.numbers.get("share_of_step")
        assert share is None or 0 <= share < 1


def test_readbacks_beyond_one_per_step_are_a_fault_with_their_cost():
    tr = Trace()
    tr.kernels(PREFILL)
    tr.copy("DtoH", 1)
    for _ in range(4):
        tr.kernels(DECODE)
        tr.copy("DtoH", 1, memory="Pageable")
        tr.kernels(["k_bin_bcast"])
        tr.copy("DtoH", 1, memory="Pageable")
    df, _steps = find_steps(tr.table())
    (read,) = [f for f in diagnose(df) if f.rule == "readbacks_per_step"]
    assert read.severity == "fault" and read.numbers["per_step"] == 2 and read.numbers["syncs"] == 8
    assert "into pageable memory" in read.message and read.numbers["cost_ns"] > 0
    assert np.isclose(read.numbers["share_of_step"] * read.numbers["step_ns"] * 4, read.numbers["cost_ns"])


@pytest.mark.parametrize("graph", [True, False])
def test_untraced_graph_launches_are_named(graph):
    tr = Trace()
    tr._api("cudaGraphLaunch", 10_000)  # a launch whose nodes nsys did not trace
    tr.kernels(DECODE, graph=graph)
    rules = {f.rule for f in diagnose(tr.table())}
    assert "graph_not_traced" in rules
