"""The streaming read at the size of one launch: what a kernel that only reads n bytes reaches, by n.

A decode step is many launches of a few to a hundred MB each (a 4096 x 4096 Q4_K matrix is 9.4 MB). Each
pays a launch, a ramp until enough loads are in flight, and a tail; a read of 1 GiB (the card's read
ceiling) pays them once. So a small matvec at 40% of the card's read may be at 70% of what any kernel
reading its bytes in one launch reaches. qprof measures the read at a few sizes: one launch of
kernels/ceiling.cu's stream_read_sum per buffer, the buffers cycled through a working set several times
the L2 (as a decode step reads each matrix once), the launches captured in a CUDA graph as the decode
step is. read_at interpolates between the sizes; the profile report and the diagnosis read each kernel
against the read at its bytes per launch.
"""

from __future__ import annotations

import itertools
import math

READ_SIZES = tuple(mib << 20 for mib in (2, 8, 32, 128))  # bytes per launch
GRAPH_REPLAYS = 5  # replays of the whole cycle per timed sample


def curve_of(figures: dict) -> dict[int, float]:
    """{bytes per launch: GB/s} from a stored record's {str(bytes): GB/s} (JSON keys are strings)."""
    out = {}
    for k, v in (figures or {}).items():
        try:
            n, gbps = int(k), float(v)
        except (TypeError, ValueError):
            continue
        if n > 0 and math.isfinite(gbps) and gbps > 0:
            out[n] = gbps
    return dict(sorted(out.items()))


def read_at(curve: dict[int, float], n_bytes: float) -> float | None:
    """GB/s of a pure read of n_bytes in one launch: linear in log(size) between the measured sizes, the
    nearest size's figure beyond them; None without a curve or a size."""
    if not curve or not n_bytes > 0:  # NaN too: a kernel whose bytes are unknown
        return None
    sizes = sorted(curve)
    if n_bytes <= sizes[0]:
        return curve[sizes[0]]
    if n_bytes >= sizes[-1]:
        return curve[sizes[-1]]
    for lo, hi in itertools.pairwise(sizes):
        if lo <= n_bytes <= hi:
            f = (math.log(n_bytes) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return curve[lo] + f * (curve[hi] - curve[lo])
    return None  # unreachable: sizes cover [first, last]


def describe_curve(figures: dict) -> str:
    """One line: each size's read, e.g. '2 MiB 1,210 · 8 MiB 2,460 · ... GB/s'."""
    curve = curve_of(figures)
    return " · ".join(f"{n / 2**20:g} MiB {g:,.0f}" for n, g in curve.items()) + " GB/s" if curve else "not measured"


def measure_read_sizes(sm_count: int, l2_bytes: int, sizes: tuple[int, ...] = READ_SIZES,
                       l2_multiple: int = 8) -> tuple[dict[str, float], str]:
    """{str(bytes): GB/s} of stream_read_sum at each size, and how it was measured, in words. Each size's
    buffers (at least l2_multiple x the L2 together) are read one launch each, in a CUDA graph replayed
    GRAPH_REPLAYS times per sample; the median sample counts. The last buffer's block sums are checked."""
    import torch

    from qprof.ceilings.measure import BANDWIDTH_REPEATS, StreamRead, check_block_sums, rate_of, time_ms

    read = StreamRead(sm_count)
    figures = {}
    for size in sizes:
        copies = max(2, -(-l2_multiple * l2_bytes // size))
        words = size // 4
        buf = torch.randint(-(2**31), 2**31 - 1, (copies * words,), dtype=torch.int32, device="cuda")
        parts = [buf[c * words:(c + 1) * words] for c in range(copies)]

        def cycle(parts=parts, size=size):
            for p in parts:
                read(p, size)

        cycle()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            cycle()

        def replays(graph=graph):
            for _ in range(GRAPH_REPLAYS):
                graph.replay()

        samples = time_ms(replays, BANDWIDTH_REPEATS)
        check_block_sums(parts[-1], read.sums, f"a {size >> 20} MiB buffer")  # the graph's last launch read it
        figures[str(size)] = rate_of(samples, size * copies * GRAPH_REPLAYS).median / 1e9
        del graph, buf, parts
        torch.cuda.empty_cache()
    how = (f"kernels/ceiling.cu stream_read_sum, one launch a buffer of each size, the buffers cycled over >= "
           f"{l2_multiple}x the {l2_bytes / 2**20:.0f} MiB L2 in a CUDA graph; median of {BANDWIDTH_REPEATS} "
           f"samples of {GRAPH_REPLAYS} replays; the last buffer's sum checked")
    return figures, how
