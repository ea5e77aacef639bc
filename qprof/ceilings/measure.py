"""Measure a card's ceilings on the GPU: streaming-read and copy bandwidth, fp16/bf16 tensor-core GEMM rate.

Each figure is timed with CUDA events around one launch or torch call (the read: READ_LAUNCHES_PER_SAMPLE
launches back to back), WARMUP untimed runs first, then REPEATS timed ones; the figure is the median of the
repeats and the fastest is kept beside it as `best`. The read buffer is at least READ_L2_MULTIPLE times the L2,
so the loads come from HBM, not from the cache a real decode step cannot rely on either.
"""

from __future__ import annotations

import ctypes
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from qprof.ceilings.card import Card
from qprof.ceilings.store import TIME_FORMAT, Ceilings
from qprof.errors import QprofError

READ_L2_MULTIPLE = 8  # the read buffer is at least this many times the L2
READ_MIN_BYTES = 1 << 30  # and at least 1 GiB, so one launch lasts long enough (~0.2 ms at 5 TB/s) to time well
READ_THREADS = 256  # CEIL_READ_THREADS in kernels/ceiling.cu: any multiple of 32 up to 1024
READ_BLOCKS_PER_SM = 8  # enough resident warps to keep every SM's loads in flight
# Launches of the read back to back in one timed sample: the card is busy from the first to the last event, as
# in a decode step, rather than starting each sample idle after the host's synchronize. On the H200 (2026-12-01,
# tests/gpu/bench_read.py over 1 GiB) 1 launch a sample read 3,980 GB/s, 4 read 4,347 and 16 read 4,455.
READ_LAUNCHES_PER_SAMPLE = 16
FREE_MEMORY_SHARE = 0.5  # use at most this share of the free device memory
BUFFER_ALIGN = 1 << 20
BANDWIDTH_REPEATS = 20
GEMM_SIZE = 8192  # M = N = K: large enough for the tensor cores to reach their steady rate
GEMM_REPEATS = 10
WARMUP = 3


@dataclass(frozen=True)
class Rate:
    median: float  # work per second from the median time
    best: float  # from the fastest repeat
    samples_ms: tuple[float, ...]


def rate_of(samples_ms: list[float], work: float) -> Rate:
    """Work units per second for the median and the fastest of several timed repeats."""
    if not samples_ms or min(samples_ms) <= 0:
        raise QprofError(f"timing gave no usable samples ({samples_ms}); the GPU may be busy or the timer broken")
    return Rate(work / (statistics.median(samples_ms) * 1e-3), work / (min(samples_ms) * 1e-3), tuple(samples_ms))


def read_buffer_bytes(l2_bytes: int, free_bytes: int) -> int:
    """Bytes to read: max(READ_L2_MULTIPLE x L2, READ_MIN_BYTES), within FREE_MEMORY_SHARE of the free memory."""
    need = READ_L2_MULTIPLE * l2_bytes
    size = min(max(need, READ_MIN_BYTES), int(free_bytes * FREE_MEMORY_SHARE)) // BUFFER_ALIGN * BUFFER_ALIGN
    if size < need:
        raise QprofError(f"not enough free GPU memory to measure read bandwidth: need {need / 2**20:.0f} MiB "
                         f"({READ_L2_MULTIPLE} x the {l2_bytes / 2**20:.0f} MiB L2), "
                         f"{free_bytes / 2**20:.0f} MiB free")
    return size


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = WARMUP) -> list[float]:
    """Milliseconds per call on the device, one CUDA event pair around each timed call."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(float(start.elapsed_time(end)))
    return out


def l2_bytes(device_index: int) -> int:
    import torch

    size = getattr(torch.cuda.get_device_properties(device_index), "L2_cache_size", None)
    if size:
        return int(size)
    from qprof.runtime.cuda.driver import _driver, check

    drv = _driver()
    dev = check(drv.cuDeviceGet(device_index), "cuDeviceGet")
    return int(check(drv.cuDeviceGetAttribute(drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev),
                     "cuDeviceGetAttribute(L2_CACHE_SIZE)"))


class StreamRead:
    """kernels/ceiling.cu:stream_read_sum, ready to launch on torch's current stream: read(buf, n_bytes) reads the
    first n_bytes (whole 16-byte vectors) of a CUDA tensor, each CTA's sum of the words into .sums, which the
    next launch overwrites (check_block_sums reads the last)."""

    def __init__(self, sm_count: int) -> None:
        import torch

        from qprof.runtime.cuda.driver import KernelLibrary

        self._lib = KernelLibrary.get()
        self._kernel = self._lib.kernel("ceiling", "stream_read_sum")
        self._grid = (sm_count * READ_BLOCKS_PER_SM,)
        self.sums = torch.zeros(self._grid[0], dtype=torch.int32, device="cuda")

    def __call__(self, buf, n_bytes: int) -> None:
        self._lib.launch(self._kernel, self._grid, (READ_THREADS,), buf, ctypes.c_longlong(n_bytes // 16), self.sums)


def measure_read(n_bytes: int, sm_count: int, launches: int = READ_LAUNCHES_PER_SAMPLE) -> Rate:
    """Bytes/s of kernels/ceiling.cu:stream_read_sum over n_bytes, `launches` launches back to back a timed
    sample, checked: the last launch's block sums must add up to the buffer's sum, i.e. every word was read
    exactly once."""
    import torch

    buf = torch.randint(-(2**31), 2**31 - 1, (n_bytes // 4,), dtype=torch.int32, device="cuda")
    read = StreamRead(sm_count)

    def sample():
        for _ in range(launches):
            read(buf, n_bytes)

    samples = time_ms(sample, BANDWIDTH_REPEATS)
    check_block_sums(buf, read.sums, "the buffer")
    return rate_of(samples, launches * n_bytes)


def check_block_sums(buf, sums, what: str) -> None:
    """stream_read_sum's block sums of its last launch must add up (mod 2^32) to the sum of `buf`, the buffer
    it read: every word read exactly once, or its bandwidth is not a measurement."""
    import torch

    want = int(buf.sum(dtype=torch.int64).item()) & 0xFFFFFFFF
    got = int(sums.to(torch.int64).sum().item()) & 0xFFFFFFFF
    if got != want:
        raise QprofError(f"stream_read_sum read {what} wrongly (block sums add to {got:#x}, the buffer sums to "
                         f"{want:#x}): its bandwidth is not a measurement")


def read_by_size(sm_count: int, l2: int) -> tuple[dict[str, float], str]:
    """read_sizes.measure_read_sizes, or none with the reason: the other figures stand without it (measure_card
    empties the allocator's cache after it either way)."""
    from qprof.ceilings.read_sizes import measure_read_sizes

    try:
        return measure_read_sizes(sm_count, l2, l2_multiple=READ_L2_MULTIPLE)
    except (QprofError, RuntimeError) as exc:  # a CUDA error or out of memory too (torch raises RuntimeError)
        return {}, f"not measured: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def measure_copy(n_bytes: int) -> Rate:
    """Bytes/s moved by a device-to-device copy of n_bytes / 2 (read + written: n_bytes per copy)."""
    import torch

    half = n_bytes // 2
    src = torch.empty(half, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return rate_of(time_ms(lambda: dst.copy_(src), BANDWIDTH_REPEATS), 2 * half)


def measure_gemm(dtype, size: int = GEMM_SIZE) -> Rate:
    """FLOP/s of torch.mm on two size x size matrices of normal values (2 size^3 FLOPs a call)."""
    import torch

    a = torch.randn(size, size, dtype=dtype, device="cuda")
    b = torch.randn(size, size, dtype=dtype, device="cuda")
    c = torch.empty(size, size, dtype=dtype, device="cuda")
    return rate_of(time_ms(lambda: torch.mm(a, b, out=c), GEMM_REPEATS), 2.0 * size**3)


def measure_card(card: Card, device_index: int | None = None, log: Callable[[str], None] | None = None) -> Ceilings:
    """Every figure on the CUDA device (default: torch's current one); buffers are freed between measurements."""
    import torch

    from qprof.bench.record import qprof_version
    from qprof.runtime.cuda.driver import require_cuda

    require_cuda()
    log = log or (lambda msg: None)
    device_index = torch.cuda.current_device() if device_index is None else device_index
    torch.cuda.set_device(device_index)
    props = torch.cuda.get_device_properties(device_index)
    l2 = l2_bytes(device_index)
    free, _ = torch.cuda.mem_get_info(device_index)
    n_bytes = read_buffer_bytes(l2, free)
    stat = f"median of {BANDWIDTH_REPEATS} CUDA-event-timed runs after {WARMUP} warm-ups"
    try:
        log(f"streaming read of {n_bytes / 2**20:.0f} MiB ({n_bytes / l2:.0f}x the {l2 / 2**20:.0f} MiB L2) ...")
        read = measure_read(n_bytes, props.multi_processor_count)
        torch.cuda.empty_cache()
        log("streaming read by launch size ...")
        by_size, by_size_how = read_by_size(props.multi_processor_count, l2)
        torch.cuda.empty_cache()
        log("device-to-device copy ...")
        copy = measure_copy(n_bytes)
        torch.cuda.empty_cache()
        log(f"fp16 and bf16 GEMM {GEMM_SIZE}^3 ...")
        fp16 = measure_gemm(torch.float16)
        bf16 = measure_gemm(torch.bfloat16)
    except torch.cuda.OutOfMemoryError:
        raise QprofError("out of GPU memory while measuring the ceilings (another process holds it?)") from None
    finally:
        torch.cuda.empty_cache()
    gemm_stat = f"median of {GEMM_REPEATS} CUDA-event-timed calls after {WARMUP} warm-ups"
    return Ceilings(
        card=card,
        measured_at=datetime.now(timezone.utc).strftime(TIME_FORMAT),
        read_GBps=read.median / 1e9, copy_GBps=copy.median / 1e9,
        gemm_fp16_TFLOPS=fp16.median / 1e12, gemm_bf16_TFLOPS=bf16.median / 1e12,
        best={"read_GBps": read.best / 1e9, "copy_GBps": copy.best / 1e9,
              "gemm_fp16_TFLOPS": fp16.best / 1e12, "gemm_bf16_TFLOPS": bf16.best / 1e12},
        read_by_size_GBps=by_size,
        method={
            "read": f"kernels/ceiling.cu stream_read_sum over {n_bytes / 2**20:.0f} MiB "
                    f"({n_bytes / l2:.0f}x the {l2 / 2**20:.0f} MiB L2), {READ_LAUNCHES_PER_SAMPLE} launches "
                    f"back to back a sample, sum checked; {stat}",
            "read by size": by_size_how,
            "copy": f"torch copy_ of {n_bytes // 2 / 2**20:.0f} MiB device to device, bytes read + written; {stat}",
            "gemm": f"torch.mm {GEMM_SIZE}x{GEMM_SIZE}x{GEMM_SIZE}, 2*M*N*K FLOPs; {gemm_stat}",
        },
        qprof_version=qprof_version(),
    )
