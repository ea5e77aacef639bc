"""Events timing's per-op gate, with a fake device clock and gate: the order of waits, markers and
releases, no reads or syncs inside the run, the empty-pair correction, and ops that sync inside."""

from __future__ import annotations

import pytest

from qprof.annotate import Annotator
from qprof.profile import event_calibration as ec
from qprof.profile import timing_events as te


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
    DISPATCH_NS = 500  # what a kernel costs the fake GPU beyond its own length

    def __init__(self, log: list, clock: FakeClock) -> None:
        self.log, self.clock, self.seq, self.launched = log, clock, 0, 0
        self.gave_up: dict[int, bool | None] = {}  # seq -> the gate's outcome (default: held)

    def close(self) -> int:
        self.seq += 1
        self.launched += 1
        self.log.append(("close", self.seq))
        return self.seq

    def launches(self) -> int:
        return self.launched

    def kernel(self, ns: int) -> None:
        """An op's kernel: its length plus the dispatch the fake GPU adds."""
        self.launched += 1
        self.clock.advance(ns + self.DISPATCH_NS)

    def release(self, seq: int) -> None:
        self.log.append(("release", seq))

    def timed_out(self, seq: int) -> bool | None:
        assert self.clock.synced, "a gate outcome was read before the run was over"
        return self.gave_up.get(seq, False)

    def empty(self) -> None:
        self.log.append(("empty",))
        self.kernel(0)

    def copy(self) -> None:
        self.log.append(("copy",))
        self.clock.advance(2000)


@pytest.fixture()
def rig():
    log: list = []
    clock = FakeClock(log)
    gate = FakeGate(log, clock)
    timer = te.OpTimer("cuda", device_clock=clock, device_gate=gate,
                       calibrator=lambda rig: ec.fallback(rig, "a fake GPU has no CUPTI"))
    return log, clock, timer, Annotator(nvtx_enabled=False, listeners=(timer,))


def two_ops(ann: Annotator, gate: FakeGate, work_ns: int = 5000) -> None:
    """attn_q launches one kernel of work_ns, attention two."""
    with ann.run("run"), ann.phase("decode"), ann.token(0), ann.layer(0):
        for name, kernels in (("blk.0.attn_q", 1), ("blk.0.attention", 2)):
            with ann.op(name, "matvec", "Q4_K"):
                for _ in range(kernels):
                    gate.kernel(work_ns)


def test_each_op_is_gated_and_nothing_is_read_inside_the_run(rig):
    log, _clock, timer, ann = rig
    two_ops(ann, timer.gate)
    run_log = list(log)
    assert ("sync",) not in run_log  # no host sync (and no event read, FakeClock asserts) inside the run
    kinds = [e[0] for e in run_log]
    # run, phase, token, layer markers, then per op: close, start marker, end marker, release
    assert kinds == ["mark"] * 4 + ["close", "mark", "mark", "release"] * 2 + ["mark"] * 4
    assert [e[1] for e in run_log if e[0] in ("close", "release")] == [1, 1, 2, 2]
    df = timer.table()
    assert log.count(("sync",)) >= 1 and sum(e[0] == "close" for e in log) == 2 + ec.PAIRS
    # the fallback calibration: an empty pair spans one marker step (1 µs), taken for base and per kernel
    assert timer.calibration == ec.Calibration(1000, 1000, 1000, 1000, "empty pair", "a fake GPU has no CUPTI")
    ops = df[df["kind"] == "op"].set_index("name")
    # raw spans: the kernels (5.5 µs each with dispatch) and one marker step; less (kernels + 1) x 1 µs
    assert ops.loc["blk.0.attn_q", "dur_ns"] == 5500 + 1000 - 2000
    assert ops.loc["blk.0.attention", "dur_ns"] == 2 * 5500 + 1000 - 3000
    spans = timer.spans().set_index("name")
    assert spans.loc["blk.0.attention", "raw_ns"] == 12000 and spans.loc["blk.0.attention", "kernels"] == 2
    assert (spans["gate"] == "held").all()
    assert timer.gated_ops == 2 and timer.held == 2
    notes = timer.notes()
    assert "gated 2 op ranges" in notes[0]
    assert "1.00 µs + 1.00 µs per kernel + 1.00 µs per copy subtracted" in notes[1]
    assert "a fake GPU has no CUPTI" in notes[1]
    assert len(notes) == 2
    ranges = df[df["kind"] == "range"].set_index("name")
    assert ranges.loc["run", "dur_ns"] > ops["dur_ns"].sum()  # ranges are not corrected


def test_a_gate_that_timed_out_is_read_from_the_gate_not_guessed(rig):
    _log, _clock, timer, ann = rig
    timer.gate.gave_up[2] = True  # attention's gate gave up (a long host pause): host time in its span
    two_ops(ann, timer.gate)
    ops = timer.table().query("kind == 'op'").set_index("name")
    assert ops.loc["blk.0.attn_q", "dur_ns"] == 4500 and ops.loc["blk.0.attention", "dur_ns"] == 12000  # as is
    assert timer.held == 1 and timer.timed_out == {"attention": 1}
    assert timer.spans().set_index("name").loc["blk.0.attention", "gate"] == "timed out"
    assert any("gate timed out on 1 op(s): attention (1x)" in n for n in timer.notes())


def test_a_gate_with_no_outcome_is_counted(rig):
    _, _clock, timer, ann = rig
    timer.gate.gave_up[1] = None
    two_ops(ann, timer.gate)
    timer.table()
    assert timer.unknown == 1 and timer.held == 2
    assert any("1 gated op(s) have no gate outcome" in n for n in timer.notes())


def test_the_token_read_back_is_a_gated_copy_and_its_wait_a_sync_row(rig):
    log, clock, timer, ann = rig
    with ann.op("sample", "sample"):
        timer.gate.kernel(3000)
    with ann.op("token_readback", "copy"):
        clock.advance(1500)  # a copy through torch: no kernel of ours
    with ann.op("token_wait", "sync", syncs=True):
        clock.advance(40_000)  # the GPU idles until the host wakes from the sync
    assert [e for e in log if e[0] in ("close", "release")] == [("close", 1), ("release", 1), ("close", 2),
                                                               ("release", 2)]
    df = timer.table().set_index("name")
    assert df.loc["token_wait", "kind"] == "sync" and df.loc["token_wait", "dur_ns"] == 41_000  # not corrected
    # a copy op: no kernels, one copy: 1.5 µs + the 1 µs marker step, less base (1 µs) + one copy (1 µs)
    assert df.loc["token_readback", "kind"] == "op" and df.loc["token_readback", "dur_ns"] == 500
    assert timer.declared == {"token_wait"}
    assert any(n.startswith("not gated: token_wait: they synchronize inside") for n in timer.notes())


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

    op("blk.0.scalar_upload", 25_000_000)  # the host waited in a sync: the spin timed out
    assert timer.ungated == {}  # once may be a host hiccup
    op("blk.1.scalar_upload", 25_000_000)
    assert timer.ungated == {"scalar_upload": 25_000_000}  # keyed without the layer prefix
    closes = sum(e[0] == "close" for e in log)
    op("blk.2.scalar_upload", 25_000_000)
    op("blk.2.attn_q", 10_000)
    assert sum(e[0] == "close" for e in log) == closes + 1  # only attn_q was gated
    timer.gate.gave_up.update({1: True, 2: True})  # what the real gate records for the two waits
    timer.table()
    assert any("not gated: scalar_upload (25.0 ms on the host)" in n and "timeout twice" in n for n in timer.notes())
    assert timer.gated_ops == 3 and timer.held == 1 and timer.timed_out == {"scalar_upload": 2}


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
