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

What the notes state, and how each op's span is corrected:
- An op that synchronizes inside itself (the wait for the token, the scalar-upload fault) would have
  the host wait for the stream while the stream waits for the host. Such ops say so when they
  open (`syncs=True` in the range's meta) and are never gated. For one that does not say so, the
  gate's spin gives up after GATE_TIMEOUT_NS, so nothing deadlocks; an op whose host time reached
  that timeout UNGATE_AFTER times is not gated again (matched by its name without the `blk.N.`
  prefix, so one layer teaches all). An ungated op's span includes the host's wait.
- Whether each gate held is not guessed: the gate kernel writes its outcome (held, or timed out)
  into host-mapped memory, read after the run. A gate that timed out (the host took longer than
  GATE_TIMEOUT_NS to queue the op: a sync, a GC pause) leaves host time in that op's span; those
  ops are counted in the notes.
- Each held op's span has what the event pair and its kernels' launches add to it subtracted:
  base + per_kernel x the kernels the op launched (counted at the launches) + per_copy for an op of
  family "copy" (the runtimes' copy ops make one copy each, through torch), calibrated after the
  run against CUPTI's clock, or from an empty pair where CUPTI is not available
  (qprof.profile.event_calibration says how and what it measured). Kernels launched by libraries
  (cuBLAS in prefill) are not counted; those ops are long.
- An op of family "sync" (the wait for the token read-back) is device idle time, not device work:
  its span becomes a `sync` row, as torch and nsys report a synchronize.
tok/s in this mode include the gates (the GPU waits for the host at every op).

Without a GPU (or in the launch-blocking child) the markers are host perf_counter_ns readings,
not gated.

The result is the activity table with one `op` row per op range (timed as a whole) and one
`range` row per run/phase/token/layer range, all on one clock starting at the first marker.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from qprof.analysis.activity import context_of, empty_table, make_table, validate
from qprof.annotate import RangeInfo
from qprof.errors import QprofError
from qprof.profile import event_calibration
from qprof.profile.event_calibration import Calibration, PairRig

CLOCKS = ("cuda", "host")
# An op takes the host well under 0.5 ms to queue, but a busy host (on the H100 machine, inside a long
# pytest process) now and then took 2-2.5 ms: a 2 ms gate let those hiccups into the spans. 20 ms
# holds through them; an op that syncs without saying so costs 2 x 20 ms before it is ungated.
GATE_TIMEOUT_NS = 20_000_000
OUTCOME_SLOTS = 1 << 17  # gate outcomes kept (a 7B pp512+tg32 run gates ~16k ops); 1 MiB page-locked
SYNC_FAMILY = "sync"
COPY_FAMILY = "copy"
UNGATE_AFTER = 2  # outlasting the gate once can be a host hiccup (GC); twice is a sync inside the op
_LAYER_PREFIX = re.compile(r"^blk\.\d+\.")


class Gate(Protocol):
    """Device-side wait before an op's first event, released by the host after its last."""

    timeout_ns: int

    def close(self) -> int: ...  # queue a wait for the next sequence number; return that number

    def release(self, seq: int) -> None: ...  # host: write seq (no CUDA call, no sync)

    def timed_out(self, seq: int) -> bool | None: ...  # after a sync: did gate seq time out (None: unknown)

    def empty(self) -> None: ...  # queue one empty kernel (calibration)

    def copy(self) -> None: ...  # queue one 4-byte device-to-host copy (calibration)

    def launches(self) -> int: ...  # kernels launched through qprof so far (the gate's own included)


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
        self._empty = self._lib.kernel("profile_hold", "empty_kernel")
        drv = _driver()
        flags = drv.CU_MEMHOSTALLOC_DEVICEMAP | drv.CU_MEMHOSTALLOC_PORTABLE

        def mapped(n_bytes: int, what: str) -> tuple[int, ctypes.c_uint64]:
            host = int(check(drv.cuMemHostAlloc(n_bytes, flags), f"cuMemHostAlloc({what})"))
            ctypes.memset(host, 0, n_bytes)
            dptr = check(drv.cuMemHostGetDevicePointer(host, 0), f"cuMemHostGetDevicePointer({what})")
            return host, ctypes.c_uint64(int(dptr))

        host, self._dptr = mapped(4, "profiler gate")
        self._word = ctypes.c_uint32.from_address(host)
        host, self._outcome_dptr = mapped(8 * OUTCOME_SLOTS, "profiler gate outcomes")
        self._outcomes = (ctypes.c_uint64 * OUTCOME_SLOTS).from_address(host)
        self._timeout = ctypes.c_uint64(timeout_ns)
        self._slots = ctypes.c_uint32(OUTCOME_SLOTS)
        import torch

        self._copy_from = torch.zeros(1, dtype=torch.int32, device="cuda")  # the size of the token read-back
        self._copy_to = torch.zeros(1, dtype=torch.int32).pin_memory()
        self.empty()  # loads the module now, outside any run

    @classmethod
    def shared(cls) -> DeviceGate:
        """One gate per process: its word is page-locked memory, allocated once."""
        global _SHARED_GATE
        if _SHARED_GATE is None:
            _SHARED_GATE = cls()
        return _SHARED_GATE

    def close(self) -> int:
        self._seq += 1
        self._lib.launch(self._kernel, (1,), (1,), self._dptr, ctypes.c_uint32(self._seq), self._timeout,
                         self._outcome_dptr, self._slots)
        return self._seq

    def release(self, seq: int) -> None:
        self._word.value = seq  # a plain store to mapped host memory: the spinning kernel sees it

    def timed_out(self, seq: int) -> bool | None:
        value = self._outcomes[seq % OUTCOME_SLOTS]
        return bool(value & 1) if value >> 1 == seq else None  # another seq there: overwritten or never ran

    def launches(self) -> int:
        return self._lib.launch_count

    def empty(self) -> None:
        self._lib.launch(self._empty, (1,), (1,))

    def copy(self) -> None:
        self._copy_to.copy_(self._copy_from, non_blocking=True)


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


@dataclass
class _Timed:
    info: RangeInfo
    path: tuple[str, ...]
    start: object
    end: object
    seq: int = 0  # the gate's sequence number; 0: not gated, negative: its gate timed out
    host_ns: int = 0  # host time from the gate's close to its release
    kernels: int = 0  # kernels the op launched through qprof (gated ops only)


class OpTimer:
    """Annotator listener that times every range with CUDA events ("cuda") or host timers ("host")."""

    def __init__(self, clock: str = "cuda", gate: bool = True, *, device_clock: Clock | None = None,
                 device_gate: Gate | None = None,
                 calibrator: Callable[[PairRig], Calibration] = event_calibration.calibrate) -> None:
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
        self._done: list[_Timed] = []
        self._tid = threading.get_native_id()
        self._open: tuple[int, int, int] | None = None  # (seq, host ns, launches) at the open gate's close
        self._depth = 0  # op ranges open (an op inside an op rides on the outer gate)
        self.ungated: dict[str, int] = {}  # op key -> host ns of the op that last outlasted the gate
        self.declared: set[str] = set()  # op keys that said they sync inside (never gated)
        self._outlasted: dict[str, int] = {}  # op key -> how often it outlasted the gate
        self.calibration: Calibration | None = None
        self._calibrator = calibrator
        self.held = 0  # gated ops whose gate held (from the gate's own outcome, after the run)
        self.timed_out: dict[str, int] = {}  # op key -> gated ops of that key whose gate gave up
        self.unknown = 0  # gated ops with no outcome (more gated ops than OUTCOME_SLOTS)

    def begin(self, info: RangeInfo) -> None:
        if info.level == "op":
            self._depth += 1
            if self.gate is not None and self._depth == 1:
                key = op_key(info.message)
                if info.meta.get("syncs"):
                    self.declared.add(key)
                elif key not in self.ungated:
                    seq = self.gate.close()  # before the start marker: the wait stays outside the span
                    self._open = (seq, time.perf_counter_ns(), self.gate.launches())
        mark = self._clock.mark()
        if self._first is None:
            self._first = mark
        self._stack.append((info, mark))

    def end(self, info: RangeInfo) -> None:
        end = self._clock.mark()
        path = tuple(i.message for i, _ in self._stack)
        started_info, start = self._stack.pop()
        timed = _Timed(started_info, path, start, end)
        if info.level == "op":
            self._depth -= 1
            if self._depth == 0 and self._open is not None:
                timed.seq, t0, launches = self._open
                self._open = None
                self.gate.release(timed.seq)  # after the end marker is queued: the whole op runs back to back
                timed.host_ns = time.perf_counter_ns() - t0
                timed.kernels = self.gate.launches() - launches
                if timed.host_ns >= self.gate.timeout_ns:  # the spin may have given up: a sync inside this op?
                    key = op_key(info.message)
                    self._outlasted[key] = self._outlasted.get(key, 0) + 1
                    if self._outlasted[key] >= UNGATE_AFTER:
                        self.ungated[key] = timed.host_ns
        self._done.append(timed)

    @property
    def gated_ops(self) -> int:
        return sum(1 for t in self._done if t.seq)

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
        if self.calibration is not None:
            out.append(self.calibration.describe())
        if self.timed_out:
            names = ", ".join(f"{k} ({n}x)" for k, n in sorted(self.timed_out.items()))
            out.append(f"gate timed out on {sum(self.timed_out.values())} op(s): {names}: the host took longer than "
                       f"{self.gate.timeout_ns / 1e6:.0f} ms to queue them, so their times include the host's wait")
        if self.unknown:
            out.append(f"{self.unknown} gated op(s) have no gate outcome (more than {OUTCOME_SLOTS} gated ops): "
                       "counted as held")
        if self.declared:
            out.append(f"not gated: {', '.join(sorted(self.declared))}: they synchronize inside (the host waits "
                       "for the GPU), so their times include that round trip")
        if self.ungated:
            names = ", ".join(f"{k} ({v / 1e6:.1f} ms on the host)" for k, v in sorted(self.ungated.items()))
            out.append(f"not gated: {names}: the host took longer than the gate's {self.gate.timeout_ns / 1e6:.0f} "
                       "ms timeout twice (a sync inside the op), so their later times include the host's wait")
        return out

    def reset(self) -> None:
        self._stack.clear()
        self._done.clear()
        self._first = None

    def pair(self, kernels: int, copies: int = 0) -> tuple[object, object]:
        """A gated start/end pair around `kernels` empty kernels and `copies` small copies (for the calibration)."""
        seq = self.gate.close()
        start = self._clock.mark()
        for _ in range(kernels):
            self.gate.empty()
        for _ in range(copies):
            self.gate.copy()
        end = self._clock.mark()
        self.gate.release(seq)
        return start, end

    def synchronize(self) -> None:
        self._clock.synchronize()

    def elapsed_ns(self, start, end) -> int:
        return self._clock.elapsed_ns(start, end)

    def _outcomes(self) -> None:
        """Which gates held, from the gate kernel's own record (read after a sync)."""
        self.held, self.unknown = 0, 0
        self.timed_out = {}
        for t in self._done:
            if not t.seq:
                continue
            gave_up = self.gate.timed_out(t.seq)
            if gave_up:
                key = op_key(t.info.message)
                self.timed_out[key] = self.timed_out.get(key, 0) + 1
                t.seq = -t.seq  # spans with host time in them are not corrected
            else:
                self.held += 1
                self.unknown += gave_up is None

    def _read_after_run(self) -> None:
        """Sync, then (once) the gates' outcomes and the calibration: the only place an event is read."""
        self._clock.synchronize()
        if self.gate is not None and self.calibration is None:
            self._outcomes()
            self.calibration = self._calibrator(self)

    def table(self) -> pd.DataFrame:
        """The activity table of everything timed so far (ops as `op` rows, the rest as `range` rows)."""
        if not self._done:
            return empty_table()
        self._read_after_run()
        rows = []
        for t in self._done:
            info = t.info
            start = self._clock.elapsed_ns(self._first, t.start)
            end = max(self._clock.elapsed_ns(self._first, t.end), start)
            ctx = context_of(t.path)
            if info.level == "op":
                family = info.meta.get("family")
                if t.seq > 0 and self.calibration is not None:
                    copies = 1 if family == COPY_FAMILY else 0  # the runtimes' copy ops each make one copy
                    end = max(end - self.calibration.correction_ns(t.kernels, copies), start)
                rows.append({"kind": "sync" if family == SYNC_FAMILY else "op", "name": info.message,
                             "family": family, "qtype": info.meta.get("qtype"), "start_ns": start, "end_ns": end,
                             "bytes": info.meta.get("bytes"), "tid": self._tid, **ctx})
            else:
                rows.append({"kind": "range", "name": info.message, "level": info.level, "start_ns": start,
                             "end_ns": end, "tid": self._tid, **ctx})
        return validate(make_table(rows))

    def spans(self) -> pd.DataFrame:
        """Every op's raw span (before correction), kernels counted and gate outcome: for checking the correction."""
        self._read_after_run()
        return pd.DataFrame([{"name": t.info.message, "start_ns": self._clock.elapsed_ns(self._first, t.start),
                              "raw_ns": self._clock.elapsed_ns(t.start, t.end), "kernels": t.kernels,
                              "gate": "not gated" if t.seq == 0 else "held" if t.seq > 0 else "timed out"}
                             for t in self._done if t.info.level == "op"])
