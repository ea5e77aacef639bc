"""Per-op timing with CUDA events (device clock) or host timers, as an Annotator listener.

On begin of every qprof range the listener records a marker; on end another. With CUDA the
markers are CUDA events on the current stream, so a range's time is the device time between
the stream reaching its start and its end. Left alone that includes the time the GPU sits
idle inside an op waiting for the host to launch the op's next kernel (or its end event), and
a launch-bound eager decode is mostly that: ~40 µs of Python per launch against kernels of a
few µs.

So every op range is gated. On begin the timer queues `hold_until` (kernels/profile_hold.cu),
a one-thread kernel that spins until a host-mapped page-locked word reaches the op's sequence
number, then the op's start event; on end it queues the end event and only then writes the
sequence number into that word. The GPU therefore starts an op only once the whole op (every
kernel and its end event) is queued, and runs it back to back: start to end is the op's device
work. The waiting happens between ops, outside every op's span. Nothing inside the run reads
an event or synchronizes: elapsed times are read once, after the run, in `table()`.

Why a gate per op rather than one hold per forward: the launch queue of a stream is finite
(on the order of a thousand entries) and a forward with two events per op is longer than that,
so a host that queues a whole forward behind a held stream blocks on the full queue and the
hold collapses (on the H100 the earlier per-forward hold was lost on both prefill and decode).
A per-op gate keeps at most one op queued behind it. Why not graph replay: only the decode step
can be captured, prefill and the fault switches would still be eager, and a replay is another
execution than the eager one torch.profiler and nsys see.

Two corrections, both stated in the notes:
- An op that synchronizes inside itself (sample's `.item()`, any blocking copy) would have the
  host wait for the stream while the stream waits for the host. The gate's spin gives up after
  GATE_TIMEOUT_NS, so nothing deadlocks; an op whose host time reached that timeout UNGATE_AFTER
  times is not gated again (matched by its name without the `blk.N.` prefix, so one layer
  teaches all), and its span then includes the host's wait. These are listed.
- Each gated op's span has the cost of an empty event pair subtracted: the median span of
  CALIBRATION_PAIRS gated start/end pairs with nothing between them, measured after the run.
tok/s in this mode include the gates (the GPU waits for the host at every op).
What remains in a span that CUPTI-based modes (torch, nsys) do not count as kernel time: the
GPU's own dispatch gap before each kernel of the op (not measured here; up to about a µs). That
is noise on a 10-30 µs matvec but a visible share of a 1-2 µs elementwise op, so small ops agree
less well than the big ones and the total.

Without a GPU (or in the launch-blocking child) the markers are host perf_counter_ns readings,
not gated.

The result is the activity table with one `op` row per op range (timed as a whole) and one
`range` row per run/phase/token/layer range, all on one clock starting at the first marker.
"""

from __future__ import annotations

import ctypes
import re
import statistics
import threading
import time
from typing import Protocol

import pandas as pd

from qprof.errors import QprofError
from qprof.profile.activity import context_of, empty_table, make_table, validate
from qprof.profile.ranges import RangeInfo

CLOCKS = ("cuda", "host")
GATE_TIMEOUT_NS = 2_000_000  # longer than any op takes the host to queue (a few launches, < 0.5 ms)
CALIBRATION_PAIRS = 64
UNGATE_AFTER = 2  # outlasting the gate once can be a host hiccup (GC); twice is a sync inside the op
_LAYER_PREFIX = re.compile(r"^blk\.\d+\.")


class Gate(Protocol):
    """Device-side wait before an op's first event, released by the host after its last."""

    timeout_ns: int

    def close(self) -> int: ...  # queue a wait for the next sequence number; return that number

    def release(self, seq: int) -> None: ...  # host: write seq (no CUDA call, no sync)


class Clock(Protocol):
    """Markers on the device stream, and how to read them after the run."""

    def mark(self) -> object: ...

    def elapsed_ns(self, start: object, end: object) -> int: ...

    def synchronize(self) -> None: ...


class CudaClock:
    """CUDA events on the current stream."""

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def mark(self):
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def elapsed_ns(self, start, end) -> int:
        return round(start.elapsed_time(end) * 1e6)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize()


class DeviceGate:
    """hold_until on the current stream against one page-locked, device-mapped word."""

    def __init__(self, timeout_ns: int = GATE_TIMEOUT_NS) -> None:
        from qprof.runtime.cuda.driver import KernelLibrary, _driver, check

        self.timeout_ns = timeout_ns
        self._seq = 0  # monotonic for the life of the word, so a later timer never sees an open gate
        self._lib = KernelLibrary.get()  # makes torch's context current for the driver calls below
        self._kernel = self._lib.kernel("profile_hold", "hold_until")
        drv = _driver()
        flags = drv.CU_MEMHOSTALLOC_DEVICEMAP | drv.CU_MEMHOSTALLOC_PORTABLE
        self._host = int(check(drv.cuMemHostAlloc(4, flags), "cuMemHostAlloc(profiler gate)"))
        self._word = ctypes.c_uint32.from_address(self._host)
        self._word.value = 0
        dptr = check(drv.cuMemHostGetDevicePointer(self._host, 0), "cuMemHostGetDevicePointer(profiler gate)")
        self._dptr = ctypes.c_uint64(int(dptr))
        self._timeout = ctypes.c_uint64(timeout_ns)
        self._lib.launch(self._kernel, (1,), (1,), self._dptr, ctypes.c_uint32(0), self._timeout)  # load it now

    @classmethod
    def shared(cls) -> DeviceGate:
        """One gate per process: its word is page-locked memory, allocated once."""
        global _SHARED_GATE
        if _SHARED_GATE is None:
            _SHARED_GATE = cls()
        return _SHARED_GATE

    def close(self) -> int:
        self._seq += 1
        self._lib.launch(self._kernel, (1,), (1,), self._dptr, ctypes.c_uint32(self._seq), self._timeout)
        return self._seq

    def release(self, seq: int) -> None:
        self._word.value = seq  # a plain store to mapped host memory: the spinning kernel sees it


class HostClock:
    """perf_counter_ns markers (CPU runtime, launch-blocking child)."""

    def mark(self) -> int:
        return time.perf_counter_ns()

    def elapsed_ns(self, start: int, end: int) -> int:
        return int(end - start)

    def synchronize(self) -> None:
        pass


_SHARED_GATE: DeviceGate | None = None


def op_key(name: str) -> str:
    """An op's name without its layer prefix: what the ungated set is keyed on."""
    return _LAYER_PREFIX.sub("", name)


class OpTimer:
    """Annotator listener that times every range with CUDA events ("cuda") or host timers ("host")."""

    def __init__(self, clock: str = "cuda", gate: bool = True, *, device_clock: Clock | None = None,
                 device_gate: Gate | None = None) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}")
        self.clock = clock
        self.gate: Gate | None = None
        self.gate_error: str | None = None
        if clock == "host":
            self._clock: Clock = HostClock()
        else:
            self._clock = device_clock or CudaClock()
            if gate:
                try:
                    self.gate = device_gate or DeviceGate.shared()
                except QprofError as exc:  # stated in notes(): the op times then include launch gaps
                    self.gate_error = str(exc)
        self._stack: list[tuple[RangeInfo, object]] = []
        self._first = None  # the earliest marker: time zero of the table
        self._done: list[tuple[RangeInfo, tuple[str, ...], object, object, bool]] = []
        self._tid = threading.get_native_id()
        self._open: tuple[int, int] | None = None  # (seq, host ns at close) of the gated op in flight
        self._depth = 0  # op ranges open (an op inside an op rides on the outer gate)
        self.ungated: dict[str, int] = {}  # op key -> host ns of the op that last outlasted the gate
        self._outlasted: dict[str, int] = {}  # op key -> how often it outlasted the gate
        self.gated_ops = 0
        self._pair_ns: int | None = None

    def begin(self, info: RangeInfo) -> None:
        is_op = info.level == "op"
        if is_op:
            self._depth += 1
            if self.gate is not None and self._depth == 1 and op_key(info.message) not in self.ungated:
                seq = self.gate.close()  # before the start marker: the wait stays outside the span
                self._open = (seq, time.perf_counter_ns())
        mark = self._clock.mark()
        if self._first is None:
            self._first = mark
        self._stack.append((info, mark))

    def end(self, info: RangeInfo) -> None:
        end = self._clock.mark()
        path = tuple(i.message for i, _ in self._stack)
        started_info, start = self._stack.pop()
        gated = False
        if info.level == "op":
            self._depth -= 1
            if self._depth == 0 and self._open is not None:
                seq, t0 = self._open
                self._open = None
                self.gate.release(seq)  # after the end marker is queued: the whole op runs back to back
                host = time.perf_counter_ns() - t0
                gated = host < self.gate.timeout_ns
                if gated:
                    self.gated_ops += 1
                else:  # the spin may have given up: a sync inside this op?
                    key = op_key(info.message)
                    self._outlasted[key] = self._outlasted.get(key, 0) + 1
                    if self._outlasted[key] >= UNGATE_AFTER:
                        self.ungated[key] = host
        self._done.append((started_info, path, start, end, gated))

    def notes(self) -> list[str]:
        """What the reader of the numbers must know about how they were taken."""
        if self.gate is None:
            if self.gate_error:
                return [(f"events timing without its gate ({self.gate_error}): op times include the GPU's waits for "
                        "the host's launches")]
            return []
        out = [(f"events timing gated {self.gated_ops} op ranges: the GPU starts each op only after the host queued "
                "all of it, so its events time device work, not the host's launches; tok/s in this mode include "
                "the gates")]
        if self._pair_ns is not None:
            out.append(f"each gated op's time has {self._pair_ns / 1e3:.2f} µs subtracted: the median span of an "
                       f"empty start/end event pair on this GPU ({CALIBRATION_PAIRS} pairs after the run)")
        if self.ungated:
            names = ", ".join(f"{k} ({v / 1e6:.1f} ms on the host)" for k, v in sorted(self.ungated.items()))
            out.append(f"not gated: {names}: the host took longer than the gate's {self.gate.timeout_ns / 1e6:.0f} "
                       "ms timeout (a sync inside the op), so those times include the host's wait")
        return out

    def reset(self) -> None:
        self._stack.clear()
        self._done.clear()
        self._first = None

    def _calibrate(self) -> int:
        """Median span of an empty gated event pair: the cost of the markers themselves."""
        pairs = []
        for _ in range(CALIBRATION_PAIRS):
            seq = self.gate.close()
            start = self._clock.mark()
            end = self._clock.mark()
            self.gate.release(seq)
            pairs.append((start, end))
        self._clock.synchronize()
        return int(statistics.median(self._clock.elapsed_ns(s, e) for s, e in pairs))

    def table(self) -> pd.DataFrame:
        """The activity table of everything timed so far (ops as `op` rows, the rest as `range` rows)."""
        if not self._done:
            return empty_table()
        if self.gate is not None and self._pair_ns is None:
            self._pair_ns = self._calibrate()
        self._clock.synchronize()  # after the run: the only place an event is read
        pair = self._pair_ns or 0
        rows = []
        for info, path, s, e, gated in self._done:
            start = self._clock.elapsed_ns(self._first, s)
            end = max(self._clock.elapsed_ns(self._first, e), start)
            ctx = context_of(path)
            if info.level == "op":
                if gated:
                    end = max(end - pair, start)
                rows.append({"kind": "op", "name": info.message, "family": info.meta.get("family"),
                             "qtype": info.meta.get("qtype"), "start_ns": start, "end_ns": end,
                             "bytes": info.meta.get("bytes"), "tid": self._tid, **ctx})
            else:
                rows.append({"kind": "range", "name": info.message, "level": info.level, "start_ns": start,
                             "end_ns": end, "tid": self._tid, **ctx})
        return validate(make_table(rows))
