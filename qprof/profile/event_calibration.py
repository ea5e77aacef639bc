"""What a gated CUDA-event pair adds to an op's device time, measured after the run.

Model: a held op (qprof.profile.timing_events) spans its kernels' own durations plus a fixed cost,
`base_ns` for the pair (the end event: the front end waits for the stream to go idle, then writes
its timestamp) plus `per_kernel_ns` for each kernel (the launch latency before the kernel starts).
CUPTI-based modes (torch, nsys) count only the kernels' durations. On the H100 (see
results/profile/diagnostics/) a held one-kernel decode op spanned 2.37-2.46 µs more than its
kernel, whatever the kernel's length (1-35 µs), and a second kernel added 1.25 µs.

Two ways to get base and per_kernel, both from PAIRS gated pairs after the run:
- `cupti`: under torch.profiler, pairs around one empty kernel and pairs around two. A pair's span
  less its kernels' CUPTI durations is its cost; the medians give base + per_kernel and
  base + 2 per_kernel. This is the events clock lined up with CUPTI's kernel clock.
- `empty pair` (no CUPTI in this process: under nsys, or the profiler failed): base = per_kernel =
  the span of an empty pair. On the H100 that over-corrects by ~0.15 µs per op.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qprof.errors import QprofError

PAIRS = 64
EMPTY_KERNEL = "empty_kernel"
SOURCES = ("cupti", "empty pair")


class PairRig(Protocol):
    """What calibration needs: a gated event pair around n empty kernels, read after a sync."""

    def pair(self, kernels: int) -> tuple[object, object]: ...  # queue it; return its markers

    def synchronize(self) -> None: ...

    def elapsed_ns(self, start: object, end: object) -> int: ...


@dataclass(frozen=True)
class Calibration:
    base_ns: int  # what a held op spans beyond its kernels, less per_kernel_ns for each kernel
    per_kernel_ns: int
    empty_pair_ns: int  # an empty gated pair's span (the fallback's one number)
    source: str  # one of SOURCES
    why: str = ""  # why the fallback was used

    def correction_ns(self, kernels: int) -> int:
        """What a held op of `kernels` kernels spans beyond its kernels' own durations."""
        return self.base_ns + max(kernels, 0) * self.per_kernel_ns

    def describe(self) -> str:
        how = (f"measured against CUPTI's durations of empty kernels ({PAIRS} pairs around one and around two, "
               "after the run)" if self.source == "cupti" else
               f"the span of an empty event pair taken for both ({self.why})")
        return (f"each held op's time has {self.base_ns / 1e3:.2f} µs + {self.per_kernel_ns / 1e3:.2f} µs per kernel "
                f"subtracted: what an event pair and each kernel's launch add to the kernels' own time, {how}; "
                f"an empty pair spans {self.empty_pair_ns / 1e3:.2f} µs")


def _median_span(rig: PairRig, pairs: list) -> int:
    return int(statistics.median(rig.elapsed_ns(s, e) for s, e in pairs))


def fallback(rig: PairRig, why: str, n: int = PAIRS) -> Calibration:
    """base = per_kernel = the empty pair's span."""
    empty = [rig.pair(0) for _ in range(n)]
    rig.synchronize()
    e = _median_span(rig, empty)
    return Calibration(e, e, e, "empty pair", why)


def from_cupti(rig: PairRig, kernel_durations_ns: list[int], one: list, two: list, empty_pair_ns: int) -> Calibration:
    """Fit base and per_kernel from pairs around one and two kernels and the kernels' CUPTI durations
    (in launch order: one's kernels, then two's)."""
    if len(kernel_durations_ns) != len(one) + 2 * len(two):
        raise QprofError(f"CUPTI saw {len(kernel_durations_ns)} {EMPTY_KERNEL} kernels, expected "
                         f"{len(one) + 2 * len(two)}")
    durs = iter(kernel_durations_ns)
    c1 = statistics.median(rig.elapsed_ns(s, e) - next(durs) for s, e in one)
    c2 = statistics.median(rig.elapsed_ns(s, e) - next(durs) - next(durs) for s, e in two)
    per_kernel = int(c2 - c1)
    base = int(c1) - per_kernel
    if per_kernel <= 0 or base <= 0:
        raise QprofError(f"implausible fit (base {base} ns, per kernel {per_kernel} ns)")
    return Calibration(base, per_kernel, empty_pair_ns, "cupti")


def calibrate(rig: PairRig, n: int = PAIRS) -> Calibration:
    """Against CUPTI where this process can run torch.profiler; else the stated fallback."""
    from qprof.profile.kineto import kineto_capture, read_kineto_trace, under_nsys

    if under_nsys():
        return fallback(rig, "no CUPTI of our own under nsys", n)
    empty = [rig.pair(0) for _ in range(n)]
    rig.synchronize()
    empty_ns = _median_span(rig, empty)
    try:
        with tempfile.TemporaryDirectory(prefix="qprof-calibration-") as tmp:
            trace = Path(tmp) / "calibration.json"
            with kineto_capture("cuda", trace):
                one = [rig.pair(1) for _ in range(n)]
                two = [rig.pair(2) for _ in range(n)]
                rig.synchronize()
            df = read_kineto_trace(trace)
        k = df[(df["kind"] == "kernel") & (df["name"] == EMPTY_KERNEL)].sort_values("start_ns")
        return from_cupti(rig, [int(d) for d in k["dur_ns"]], one, two, empty_ns)
    except (QprofError, RuntimeError, OSError, ValueError) as exc:
        return Calibration(empty_ns, empty_ns, empty_ns, "empty pair", f"CUPTI calibration failed: {exc}")
