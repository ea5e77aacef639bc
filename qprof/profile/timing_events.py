"""Per-op timing with CUDA events (device clock) or host timers, as an Annotator listener.

On begin of every qprof range the listener records a marker; on end another. With CUDA the
markers are CUDA events on the current stream, so a range's time is the device time between
the stream reaching its start and its end. That includes any time the GPU sat idle inside the
range waiting for the host to launch the next kernel, and a launch-bound decode is mostly that.
So by default (`hold`) the timer stalls the stream at the start of every phase range (prefill,
each decode step) with a sleep kernel a little longer than the host needs to queue that
forward: the host runs ahead, the GPU then executes the queued work back to back, and each
op's events measure its device time. The hold length follows the previous forward of the same
phase; holding stops for a phase whose forward blocks on the GPU (a sync inside it), since the
host could not run ahead anyway. tok/s measured in this mode include the holds.
Without a GPU (or in the launch-blocking child) the markers are host perf_counter_ns readings.

The result is the activity table with one `op` row per op range (timed as a whole) and one
`range` row per run/phase/token/layer range, all on one clock starting at the first marker.
"""

from __future__ import annotations

import threading
import time

import pandas as pd

from qprof.profile.activity import context_of, empty_table, make_table, validate
from qprof.profile.ranges import RangeInfo

CLOCKS = ("cuda", "host")
FIRST_HOLD_NS = 60_000_000  # before a phase's host time is known
MAX_HOLD_NS = 250_000_000
HOLD_MARGIN = 1.5
BLOCKED = 0.8  # a forward whose host time reaches this fraction of its hold waited for the GPU


def stall_stream(ns: int) -> None:
    """Queue a kernel that spins for at least `ns` on the current stream (torch.cuda._sleep counts cycles)."""
    import torch

    torch.cuda._sleep(int(ns * 2))  # 2 cycles per ns covers clocks up to 2 GHz (H100: 1.98 GHz at most)


class PhaseHold:
    """How long to stall the stream before each phase: the last host time of that phase, with margin."""

    def __init__(self, sleeper=stall_stream) -> None:
        self._sleep = sleeper
        self._last_host: dict[str, int] = {}
        self._given: dict[str, int] = {}
        self.stopped: set[str] = set()  # phases whose forward waits for the GPU: no holding helps
        self.total_ns = 0
        self._t0 = 0

    def before(self, phase: str) -> None:
        if phase in self.stopped:
            return
        ns = self._last_host.get(phase)
        ns = FIRST_HOLD_NS if ns is None else int(min(max(ns * HOLD_MARGIN, 1_000_000), MAX_HOLD_NS))
        self._sleep(ns)
        self._given[phase] = ns
        self.total_ns += ns
        self._t0 = time.perf_counter_ns()

    def after(self, phase: str) -> None:
        if phase in self.stopped or phase not in self._given:
            return
        host = time.perf_counter_ns() - self._t0
        if host >= BLOCKED * self._given[phase]:
            self.stopped.add(phase)
        self._last_host[phase] = host


class OpTimer:
    """Annotator listener that times every range with CUDA events ("cuda") or host timers ("host")."""

    def __init__(self, clock: str = "cuda", hold: bool = True, sleeper=stall_stream) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}")
        self.clock = clock
        self.hold = PhaseHold(sleeper) if hold and clock == "cuda" else None
        self._stack: list[tuple[RangeInfo, object]] = []
        self._first = None  # the earliest marker: time zero of the table
        self._done: list[tuple[RangeInfo, tuple[str, ...], object, object]] = []
        self._tid = threading.get_native_id()
        if clock == "cuda":
            import torch

            self._event = lambda: torch.cuda.Event(enable_timing=True)
        else:
            self._event = None

    def _mark(self):
        if self._event is None:
            return time.perf_counter_ns()
        ev = self._event()
        ev.record()
        return ev

    def begin(self, info: RangeInfo) -> None:
        if self.hold is not None and info.level == "phase":
            self.hold.before(info.message)  # before the phase's first marker, so the phase excludes it
        mark = self._mark()
        if self._first is None:
            self._first = mark
        self._stack.append((info, mark))

    def end(self, info: RangeInfo) -> None:
        end = self._mark()
        path = tuple(i.message for i, _ in self._stack)
        started_info, start = self._stack.pop()
        self._done.append((started_info, path, start, end))
        if self.hold is not None and info.level == "phase":
            self.hold.after(info.message)

    def notes(self) -> list[str]:
        """What the reader of the numbers must know about how they were taken."""
        if self.hold is None:
            return []
        out = [(f"events timing held the GPU back {self.hold.total_ns / 1e6:.1f} ms in all, at the start of each "
               "forward, so each op's events time its device work rather than the host's launches; tok/s in this "
               "mode include those holds")]
        if self.hold.stopped:
            out.append(f"no hold for {', '.join(sorted(self.hold.stopped))}: its forward waits for the GPU (a sync "
                       "inside it), so those op times include launch gaps")
        return out

    def reset(self) -> None:
        self._stack.clear()
        self._done.clear()
        self._first = None

    def _to_ns(self, marks: list) -> list[int]:
        if self._event is None:
            return [int(m - self._first) for m in marks]
        import torch

        torch.cuda.synchronize()
        return [round(self._first.elapsed_time(ev) * 1e6) for ev in marks]

    def table(self) -> pd.DataFrame:
        """The activity table of everything timed so far (ops as `op` rows, the rest as `range` rows)."""
        if not self._done:
            return empty_table()
        marks = [m for _, _, s, e in self._done for m in (s, e)]
        ns = self._to_ns(marks)
        rows = []
        for k, (info, path, _, _) in enumerate(self._done):
            start, end = ns[2 * k], ns[2 * k + 1]
            ctx = context_of(path)
            if info.level == "op":
                rows.append({"kind": "op", "name": info.message, "family": info.meta.get("family"),
                             "qtype": info.meta.get("qtype"), "start_ns": start, "end_ns": max(end, start),
                             "bytes": info.meta.get("bytes"), "tid": self._tid, **ctx})
            else:
                rows.append({"kind": "range", "name": info.message, "level": info.level, "start_ns": start,
                             "end_ns": max(end, start), "tid": self._tid, **ctx})
        return validate(make_table(rows))
