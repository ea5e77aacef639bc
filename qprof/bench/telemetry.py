"""GPU telemetry through NVML (pynvml): a thread samples clocks, power, heat and throttling during a test.

NVML calls go through ctypes, which drops the GIL, and the thread wakes only every
`interval` seconds, so the sampling barely touches the host thread that launches kernels.
Without pynvml or a driver, telemetry is off and every row says why instead of failing.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field

# NVML clocks-event (formerly "throttle") reason bits; stable across NVML versions.
REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Reasons that mean the clocks were pulled below what was asked: these skew a benchmark.
# (Idle, application-clock settings and sync boost are normal states, not throttling.)
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x200 | 0x400
THROTTLE_NAMES = frozenset(name for bit, name in REASON_BITS.items() if bit & THROTTLE_MASK)
METRICS = ("sm_clock_mhz", "mem_clock_mhz", "power_w", "temp_c", "mem_used_mib")
SUMMARY_FIELDS = tuple(f"{m}_{s}" for m in METRICS for s in ("min", "mean", "max")) + (
    "throttle_reasons", "throttled", "throttled_samples", "telemetry_samples", "telemetry_source")


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in REASON_BITS.items() if mask & bit]


@dataclass
class Sample:
    t_ns: int
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    power_w: float | None = None
    temp_c: float | None = None
    mem_used_mib: float | None = None
    reasons: int | None = None


def _errors(nvml) -> tuple[type[BaseException], ...]:
    return (getattr(nvml, "NVMLError", OSError), OSError)


def _try(nvml, fn, *args):
    """One NVML query; a metric the board does not support reads as None rather than stopping the rest."""
    try:
        return fn(*args)
    except _errors(nvml):
        return None


class NvmlReader:
    """One GPU's NVML handle. `nvml` is the pynvml module (tests pass a fake)."""

    def __init__(self, nvml, handle):
        self.nvml = nvml
        self.handle = handle
        # the newer name first; drivers older than 535 know only the "throttle" one
        self._reasons_fns = [f for f in (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None),
                                         getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)) if f]

    def read(self) -> Sample:
        n, h = self.nvml, self.handle
        s = Sample(t_ns=time.perf_counter_ns())
        s.sm_clock_mhz = _try(n, n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM)
        s.mem_clock_mhz = _try(n, n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM)
        mw = _try(n, n.nvmlDeviceGetPowerUsage, h)
        s.power_w = mw / 1000.0 if mw is not None else None
        s.temp_c = _try(n, n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)
        mem = _try(n, n.nvmlDeviceGetMemoryInfo, h)
        s.mem_used_mib = mem.used / 2**20 if mem is not None else None
        for fn in self._reasons_fns:
            s.reasons = _try(n, fn, h)
            if s.reasons is not None:
                break
        return s

    def info(self) -> dict:
        """Driver, CUDA driver API version, board name and peak memory bandwidth where NVML knows them."""
        n, h = self.nvml, self.handle
        out: dict = {}
        driver = _try(n, n.nvmlSystemGetDriverVersion)
        if driver is not None:
            out["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        cuda = _try(n, n.nvmlSystemGetCudaDriverVersion)
        if cuda:
            out["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        name = _try(n, n.nvmlDeviceGetName, h)
        if name is not None:
            out["gpu_name"] = name.decode() if isinstance(name, bytes) else str(name)
        mem_mhz = _try(n, n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_MEM)
        bus_bits = _try(n, n.nvmlDeviceGetMemoryBusWidth, h)
        if mem_mhz:
            out["max_mem_clock_mhz"] = int(mem_mhz)
        if mem_mhz and bus_bits:
            # double data rate: two transfers per memory clock, bus_bits/8 bytes each
            out["peak_bandwidth_GBps"] = round(2 * mem_mhz * 1e6 * bus_bits / 8 / 1e9, 1)
        return out


def cuda_uuid(device_index: int) -> str | None:
    try:
        import torch

        uuid = torch.cuda.get_device_properties(device_index).uuid
    except (RuntimeError, AttributeError, AssertionError):  # no CUDA, or a torch without .uuid
        return None
    text = str(uuid)
    return text if text.startswith("GPU-") else f"GPU-{text}"


def _nvml_index(device_index: int) -> int | None:
    """torch's index -> NVML's, through CUDA_VISIBLE_DEVICES when it lists plain indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return device_index
    items = [v.strip() for v in visible.split(",") if v.strip()]
    if device_index < len(items) and items[device_index].isdigit():
        return int(items[device_index])
    return None


def open_reader(device_index: int = 0, nvml=None) -> tuple[NvmlReader | None, str]:
    """(reader, source) on success, (None, reason) when NVML can't be used."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None, "none: pynvml not installed (pip install nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except _errors(nvml) as exc:
        return None, f"none: NVML unavailable ({type(exc).__name__}: {exc})"
    handle = None
    uuid = cuda_uuid(device_index)
    if uuid:  # the UUID names the same board whatever CUDA_VISIBLE_DEVICES does to indices
        handle = _try(nvml, nvml.nvmlDeviceGetHandleByUUID, uuid)
    if handle is None:
        index = _nvml_index(device_index)
        if index is not None:
            handle = _try(nvml, nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return None, f"none: no NVML device matches CUDA device {device_index}"
    return NvmlReader(nvml, handle), "pynvml"


@dataclass
class Sampler:
    """Samples on a background thread between start() and stop(); one sample at each end at least."""

    reader: NvmlReader | None
    source: str
    interval: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = []
        if self.reader is None:
            return
        self._stop.clear()
        self.samples.append(self.reader.read())
        self._thread = threading.Thread(target=self._loop, name="qprof-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.reader.read())

    def stop(self) -> dict:
        if self.reader is not None:
            self.close()
            self.samples.append(self.reader.read())
        return summarize(self.samples, self.source)

    def close(self) -> None:
        """Stop the thread without a summary (after an error or Ctrl-C)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def summarize(samples: list[Sample], source: str) -> dict:
    """Flat min/mean/max per metric, plus which throttle reasons were seen and in how many samples."""
    out: dict = dict.fromkeys(SUMMARY_FIELDS)
    out["telemetry_source"] = source
    out["telemetry_samples"] = len(samples)
    for metric in METRICS:
        values = [getattr(s, metric) for s in samples if getattr(s, metric) is not None]
        if values:
            out[f"{metric}_min"] = round(float(min(values)), 2)
            out[f"{metric}_mean"] = round(float(statistics.fmean(values)), 2)
            out[f"{metric}_max"] = round(float(max(values)), 2)
    masks = [s.reasons for s in samples if s.reasons is not None]
    if masks:
        seen = 0
        for m in masks:
            seen |= m
        out["throttle_reasons"] = ",".join(reason_names(seen)) or "none"
        out["throttled_samples"] = sum(1 for m in masks if m & THROTTLE_MASK)
        out["throttled"] = out["throttled_samples"] > 0
    return out


def throttle_warning(summary: dict, what: str) -> str | None:
    """A one-line warning when the clocks were held down during the test, else None."""
    if not summary.get("throttled"):
        return None
    reasons = [r for r in str(summary.get("throttle_reasons") or "").split(",") if r in THROTTLE_NAMES]
    return (f"warning: GPU throttled during {what}: {', '.join(reasons)} in "
            f"{summary['throttled_samples']} of {summary['telemetry_samples']} samples; numbers may be low")
