"""What a gated CUDA-event pair adds to an op's device time, measured after the run.

Model: a held op (qprof.profile.timing_events) spans its own device work plus a fixed cost:
`base_ns` for the pair (the end event: the front end waits for the stream to go idle, then writes
its timestamp), `per_kernel_ns` for each kernel (the launch latency before it starts) and
`per_copy_ns` for each copy (a copy runs on a copy engine; the hand-over costs more than a
launch). CUPTI-based modes (torch, nsys) count only the kernels' and copies' own durations. On the
H100 (see results/profile/diagnostics/) a held one-kernel decode op spanned 2.37-2.46 µs more than
its kernel, whatever the kernel's length (1-35 µs), and a second kernel added 1.0-1.3 µs.

Two ways to get the three numbers, both from gated pairs after the run:
- `cupti`: under torch.profiler, PAIRS pairs each around one empty kernel, two empty kernels and one
  4-byte device-to-host copy, interleaved so drift hits all alike. A pair's span less its work's
  CUPTI durations is its cost; the medians give base + per_kernel, base + 2 per_kernel and
  base + per_copy. This lines the events clock up with CUPTI's.
- `empty pair` (no CUPTI in this process: under nsys, or the profiler failed): all three are the
  span of an empty pair. On the H100 that over-corrects by ~0.15 µs per kernel.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qprof.errors import QprofError

PAIRS = 128
EMPTY_KERNEL = "empty_kernel"
SOURCES = ("cupti", "empty pair")
SHAPES = ((1, 0), (2, 0), (0, 1))  # (kernels, copies) inside the calibration pairs, in launch order


class PairRig(Protocol):
    """What calibration needs: gated event pairs around empty kernels or a small copy, read after a sync."""

    def pair(self, kernels: int, copies: int = 0) -> tuple[object, object]: ...  # queue it; return its markers

    def synchronize(self) -> None: ...

    def elapsed_ns(self, start: object, end: object) -> int: ...


@dataclass(frozen=True)
class Calibration:
    base_ns: int  # what a held op spans beyond its work, less per_kernel_ns / per_copy_ns for each
    per_kernel_ns: int
    per_copy_ns: int
    empty_pair_ns: int  # an empty gated pair's span (the fallback's one number)
    source: str  # one of SOURCES
    why: str = ""  # why the fallback was used

    def correction_ns(self, kernels: int, copies: int = 0) -> int:
        """What a held op of `kernels` kernels and `copies` copies spans beyond their own durations."""
        return self.base_ns + max(kernels, 0) * self.per_kernel_ns + max(copies, 0) * self.per_copy_ns

    def describe(self) -> str:
        how = (f"measured against CUPTI's durations of empty kernels and a 4-byte copy ({PAIRS} pairs of each "
               "shape, after the run)" if self.source == "cupti" else
               f"the span of an empty event pair taken for all three ({self.why})")
        return (f"each held op's time has {self.base_ns / 1e3:.2f} µs + {self.per_kernel_ns / 1e3:.2f} µs per kernel "
                f"+ {self.per_copy_ns / 1e3:.2f} µs per copy subtracted: what an event pair, each kernel's launch "
                f"and each copy's hand-over add to the work's own time, {how}; an empty pair spans "
                f"{self.empty_pair_ns / 1e3:.2f} µs")


def _median_span(rig: PairRig, pairs: list) -> int:
    return int(statistics.median(rig.elapsed_ns(s, e) for s, e in pairs))


def fallback(rig: PairRig, why: str, n: int = PAIRS) -> Calibration:
    """Every cost = the empty pair's span."""
    empty = [rig.pair(0) for _ in range(n)]
    rig.synchronize()
    e = _median_span(rig, empty)
    return Calibration(e, e, e, e, "empty pair", why)


def from_cupti(rig: PairRig, pairs: list[tuple[tuple[int, int], tuple]], kernel_durations_ns: list[int],
               copy_durations_ns: list[int], empty_pair_ns: int) -> Calibration:
    """Fit the costs from pairs ((kernels, copies), markers) in launch order and their work's CUPTI durations
    (also in launch order)."""
    want_k, want_c = sum(k for (k, _), _ in pairs), sum(c for (_, c), _ in pairs)
    if (len(kernel_durations_ns), len(copy_durations_ns)) != (want_k, want_c):
        raise QprofError(f"CUPTI saw {len(kernel_durations_ns)} {EMPTY_KERNEL} kernels and {len(copy_durations_ns)} "
                         f"copies, expected {want_k} and {want_c}")
    kernels, copies = iter(kernel_durations_ns), iter(copy_durations_ns)
    cost: dict[tuple[int, int], list[int]] = {}
    for shape, (s, e) in pairs:
        work = sum(next(kernels) for _ in range(shape[0])) + sum(next(copies) for _ in range(shape[1]))
        cost.setdefault(shape, []).append(rig.elapsed_ns(s, e) - work)
    c1, c2, cc = (statistics.median(cost[shape]) for shape in SHAPES)
    per_kernel = int(c2 - c1)
    base = int(c1) - per_kernel
    per_copy = int(cc) - base
    if min(per_kernel, base, per_copy) <= 0:
        raise QprofError(f"implausible fit (base {base} ns, per kernel {per_kernel} ns, per copy {per_copy} ns)")
    return Calibration(base, per_kernel, per_copy, empty_pair_ns, "cupti")


def calibrate(rig: PairRig, n: int = PAIRS) -> Calibration:
    """Against CUPTI where this process can run torch.profiler; else the stated fallback."""
    from qprof.analysis.kineto_json import read_kineto_trace
    from qprof.profile.kineto import kineto_capture, under_nsys

    if under_nsys():
        return fallback(rig, "no CUPTI of our own under nsys", n)
    empty = [rig.pair(0) for _ in range(n)]
    rig.synchronize()
    empty_ns = _median_span(rig, empty)
    try:
        with tempfile.TemporaryDirectory(prefix="qprof-calibration-") as tmp:
            trace = Path(tmp) / "calibration.json"
            with kineto_capture("cuda", trace):
                pairs = [(shape, rig.pair(*shape)) for _ in range(n) for shape in SHAPES]
                rig.synchronize()
            df = read_kineto_trace(trace).sort_values("start_ns")
        kernels = df.loc[(df["kind"] == "kernel") & (df["name"] == EMPTY_KERNEL), "dur_ns"]
        copies = df.loc[(df["kind"] == "memcpy") & (df["copy_kind"] == "DtoH"), "dur_ns"]
        return from_cupti(rig, pairs, [int(d) for d in kernels], [int(d) for d in copies], empty_ns)
    except (QprofError, RuntimeError, OSError, ValueError) as exc:
        return Calibration(empty_ns, empty_ns, empty_ns, empty_ns, "empty pair", f"CUPTI calibration failed: {exc}")
