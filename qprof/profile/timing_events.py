"""Per-op timing with CUDA events (device clock) or host timers, as an Annotator listener.

On begin of every qprof range the listener records a marker; on end another. With CUDA the
markers are CUDA events on the current stream, so a range's time is the device time between
the stream reaching its start and its end (including any GPU idle inside it, which is why
events can read higher than the sum of kernel times when launches starve the GPU). Without
a GPU (or in the launch-blocking child) the markers are host perf_counter_ns readings.

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


class OpTimer:
    """Annotator listener that times every range with CUDA events ("cuda") or host timers ("host")."""

    def __init__(self, clock: str = "cuda") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}")
        self.clock = clock
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
        mark = self._mark()
        if self._first is None:
            self._first = mark
        self._stack.append((info, mark))

    def end(self, info: RangeInfo) -> None:
        end = self._mark()
        path = tuple(i.message for i, _ in self._stack)
        started_info, start = self._stack.pop()
        self._done.append((started_info, path, start, end))

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
