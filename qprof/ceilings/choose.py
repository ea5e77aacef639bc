"""The ceilings a bench or profile run reads its numbers against, and where each came from.

In order: a --bandwidth / --tflops override; the figures measured on this card (from the cache,
or measured now on first use); NVML's theoretical memory bandwidth as a labelled fallback when
measuring failed; else unknown, said in words. On the CPU no GPU's figure applies: unknown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from qprof.ceilings.card import Card
from qprof.ceilings.store import Ceilings
from qprof.errors import QprofError


@dataclass(frozen=True)
class Ceiling:
    value: float | None  # GB/s for bandwidth, TFLOP/s for GEMM; None when unknown
    source: str


@dataclass(frozen=True)
class RunCeilings:
    bandwidth: Ceiling  # streaming-read GB/s: the decode floor and kernels' % of peak
    gemm: Ceiling  # fp16 tensor-core TFLOP/s: the prefill roofline (qprof's prefill matmuls are fp16)
    # measured on this card: the read at the size of one launch, {bytes: GB/s} (read_sizes.py); empty if unknown
    read_by_size: dict = field(default_factory=dict)


def check_override(value: float | None, option: str) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise QprofError(f"{option} must be a positive number, got {value:g}")
    return value


def measured_source(c: Ceilings, what: str) -> str:
    return f"measured on this GPU {c.measured_at[:10]} ({what})"


def from_measured(c: Ceilings) -> RunCeilings:
    from qprof.ceilings.read_sizes import curve_of

    return RunCeilings(Ceiling(c.read_GBps, measured_source(c, "streaming read")),
                       Ceiling(c.gemm_fp16_TFLOPS, measured_source(c, "fp16 GEMM")), curve_of(c.read_by_size_GBps))


def overridden(found: RunCeilings, bandwidth: float | None, tflops: float | None) -> RunCeilings:
    """--bandwidth / --tflops in place of the measured figures; the read by size is this card's measurement
    and stays (it is read against the kernel's own bytes, not against the override)."""
    return RunCeilings(Ceiling(bandwidth, "--bandwidth") if bandwidth else found.bandwidth,
                       Ceiling(tflops, "--tflops") if tflops else found.gemm, found.read_by_size)


def unmeasured(card_name: str, why: str, nvml_info: dict) -> RunCeilings:
    """The fallback when this card's figures could not be measured: NVML's datasheet bandwidth, labelled so."""
    peak = nvml_info.get("peak_bandwidth_GBps")
    bandwidth = (Ceiling(float(peak), f"NVML theoretical (2 x max memory clock x bus width; not measured: {why})")
                 if peak else Ceiling(None, f"unknown for {card_name}: not measured ({why}) and NVML gives no peak; "
                                            "pass --bandwidth GB/s"))
    return RunCeilings(bandwidth, Ceiling(None, f"unknown: not measured ({why}); pass --tflops TFLOP/s"))


def on_cpu(bandwidth: float | None, tflops: float | None) -> RunCeilings:
    none = RunCeilings(Ceiling(None, "unknown on the CPU: no GPU's figure applies (--bandwidth GB/s sets one)"),
                       Ceiling(None, "unknown on the CPU: no GPU's figure applies (--tflops TFLOP/s sets one)"))
    return overridden(none, bandwidth, tflops)


def card_and_nvml(nvml_info: dict | None) -> tuple[Card, dict]:
    import torch

    from qprof.bench.telemetry import open_reader
    from qprof.ceilings.card import current_card

    index = torch.cuda.current_device()
    if nvml_info is None:
        reader, _ = open_reader(index)
        nvml_info = reader.info() if reader else {}
    return current_card(index, nvml_info), nvml_info


def cached_or_measured(card: Card, log: Callable[[str], None], measure: Callable | None = None,
                       force: bool = False) -> Ceilings:
    """This card's figures from the cache, else measured now and cached (always measured with force)."""
    from qprof.ceilings import store

    found = None if force else store.lookup(card)
    if found is not None:
        return found
    if measure is None:
        from qprof.ceilings.measure import measure_card as measure
    log(f"measuring the ceilings of {card.name} ({'asked' if force else 'first use on this card'}; cached in "
        f"{store.cache_file()})")
    found = measure(card, log=lambda msg: log(f"  {msg}"))
    store.save(found)
    return found


def run_ceilings(device: str, bandwidth: float | None = None, tflops: float | None = None,
                 nvml_info: dict | None = None, log: Callable[[str], None] | None = None,
                 measure: Callable | None = None) -> RunCeilings:
    """What bench and profile read against on this device, each figure with its source."""
    check_override(bandwidth, "--bandwidth")
    check_override(tflops, "--tflops")
    if device != "cuda":
        return on_cpu(bandwidth, tflops)
    if bandwidth and tflops:  # both given: nothing to measure
        return RunCeilings(Ceiling(bandwidth, "--bandwidth"), Ceiling(tflops, "--tflops"))
    log = log or (lambda msg: None)
    card, nvml_info = card_and_nvml(nvml_info)
    try:
        found = from_measured(cached_or_measured(card, log, measure))
    except (QprofError, RuntimeError) as exc:  # a failed measurement is a fallback, not the end of the run
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"warning: could not measure this GPU's ceilings: {why}")
        found = unmeasured(card.name, why, nvml_info)
    return overridden(found, bandwidth, tflops)


def doctor_view(measure: bool, log: Callable[[str], None], measure_fn: Callable | None = None) -> dict:
    """What `qprof doctor` says about ceilings: this card's figures (measured now with measure) and their age,
    or why there are none."""
    import torch

    from qprof.ceilings import store

    if not torch.cuda.is_available():
        if measure:
            raise QprofError("no CUDA GPU available: nothing to measure (on the CPU the decode floor is unknown)")
        return {"status": "none: no CUDA GPU (on the CPU bench and profile say the decode floor is unknown)"}
    card, _ = card_and_nvml(None)
    found = cached_or_measured(card, log, measure_fn, force=True) if measure else store.lookup(card)
    view = {"card": card.key(), "cache": str(store.cache_file())}
    if found is None:
        return {**view, "status": "not measured on this card yet: `qprof doctor --measure` (bench and profile "
                                  "measure on first use)"}
    return {**view, "status": "measured", "age": store.age_text(found.measured_at), "figures": found.as_dict()}
