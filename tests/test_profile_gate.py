"""Events timing's per-op gate, with a fake device clock and gate: the order of waits, markers and
releases, no reads or syncs inside the run, the empty-pair correction, and ops that sync inside."""

from __future__ import annotations

import pytest

from qprof.profile import timing_events as te
from qprof.profile.ranges import Annotator


class FakeClock:
    """Markers are fake device timestamps; reading one before synchronize() is a test failure."""

    def __init__(self, log: list) -> None:
        self.log, self.t, self.synced = log, 0, False

    def advance(self, ns: int) -> None:
        self.t += ns

    def mark(self) -> int:
        self.t += 1000
        self.log.append(("mark", self.t))
        return self.t

    def elapsed_ns(self, start: int, end: int) -> int:
        assert self.synced, "an event was read before the run was over"
        return end - start

    def synchronize(self) -> None:
        self.synced = True
        self.log.append(("sync",))


class FakeGate:
    timeout_ns = te.GATE_TIMEOUT_NS

    def __init__(self, log: list) -> None:
        self.log, self.seq = log, 0

    def close(self) -> int:
        self.seq += 1
        self.log.append(("close", self.seq))
        return self.seq

    def release(self, seq: int) -> None:
        self.log.append(("release", seq))


@pytest.fixture()
def rig():
    log: list = []
    clock, gate = FakeClock(log), FakeGate(log)
    timer = te.OpTimer("cuda", device_clock=clock, device_gate=gate)
    return log, clock, timer, Annotator(nvtx_enabled=False, listeners=(timer,))


def test_each_op_is_gated_and_nothing_is_read_inside_the_run(rig):
    log, clock, timer, ann = rig
    with ann.run("run"), ann.phase("decode"), ann.token(0), ann.layer(0):
        for name in ("blk.0.attn_q", "blk.0.attn_k"):
            with ann.op(name, "matvec", "Q4_K"):
                clock.advance(5000)  # the op's device work
    run_log = list(log)
    assert ("sync",) not in run_log  # no host sync (and no event read, FakeClock asserts) inside the run
    kinds = [e[0] for e in run_log]
    # run, phase, token, layer markers, then per op: close, start marker, end marker, release
    assert kinds == ["mark"] * 4 + ["close", "mark", "mark", "release"] * 2 + ["mark"] * 4
    assert [e[1] for e in run_log if e[0] in ("close", "release")] == [1, 1, 2, 2]
    df = timer.table()
    assert log.count(("sync",)) >= 1 and sum(e[0] == "close" for e in log) == 2 + te.CALIBRATION_PAIRS
    ops = df[df["kind"] == "op"].set_index("name")
    # 5 µs of work plus one marker step (1 µs), less the 1 µs an empty calibration pair spans
    assert ops.loc["blk.0.attn_q", "dur_ns"] == 5000 and ops.loc["blk.0.attn_k", "dur_ns"] == 5000
    assert timer.gated_ops == 2
    notes = timer.notes()
    assert "gated 2 op ranges" in notes[0] and "1.00 µs subtracted" in notes[1] and len(notes) == 2
    ranges = df[df["kind"] == "range"].set_index("name")
    assert ranges.loc["run", "dur_ns"] > ops["dur_ns"].sum()  # ranges are not corrected


def test_an_op_inside_an_op_rides_on_the_outer_gate(rig):
    log, _, _, ann = rig
    with ann.op("sample", "sample"), ann.op("argmax", "sample"):
        pass
    assert [e for e in log if e[0] != "mark"] == [("close", 1), ("release", 1)]


def test_an_op_that_syncs_inside_is_ungated_after_it_outlasts_the_gate_twice(rig, monkeypatch):
    log, _, timer, ann = rig
    now = [0]
    monkeypatch.setattr(te.time, "perf_counter_ns", lambda: now[0])

    def op(name: str, host_ns: int) -> None:
        with ann.op(name, "copy"):
            now[0] += host_ns

    op("blk.0.scalar_upload", 3_000_000)  # the host waited in a sync: the spin timed out
    assert timer.ungated == {}  # once may be a host hiccup
    op("blk.1.scalar_upload", 3_000_000)
    assert timer.ungated == {"scalar_upload": 3_000_000}  # keyed without the layer prefix
    closes = sum(e[0] == "close" for e in log)
    op("blk.2.scalar_upload", 3_000_000)
    op("blk.2.attn_q", 10_000)
    assert sum(e[0] == "close" for e in log) == closes + 1  # only attn_q was gated
    timer.table()
    assert any("not gated: scalar_upload (3.0 ms on the host)" in n for n in timer.notes())
    assert timer.gated_ops == 1


def test_host_clock_has_no_gate():
    timer = te.OpTimer("host")
    assert timer.gate is None and timer.notes() == []
    assert te.OpTimer("cuda", gate=False, device_clock=FakeClock([])).gate is None


def test_op_key_strips_the_layer():
    assert te.op_key("blk.12.attn_q") == "attn_q" and te.op_key("sample") == "sample"
    assert te.op_key("output_norm") == "output_norm"


def test_the_gate_kernel_source_is_there():
    from qprof.runtime.cuda.driver import KERNEL_DIR

    src = (KERNEL_DIR / "profile_hold.cu").read_text()
    assert 'extern "C" __global__ void hold_until' in src and "%%globaltimer" in src


def test_a_gate_that_cannot_be_made_is_stated(monkeypatch):
    from qprof.errors import QprofError

    def broken():
        raise QprofError("cuMemHostAlloc(profiler gate) failed: CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(te.DeviceGate, "shared", staticmethod(broken))
    timer = te.OpTimer("cuda", device_clock=FakeClock([]))
    assert timer.gate is None
    assert timer.notes() == [("events timing without its gate (cuMemHostAlloc(profiler gate) failed: "
                             "CUDA_ERROR_OUT_OF_MEMORY): op times include the GPU's waits for the host's launches")]
