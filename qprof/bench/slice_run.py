"""Run one plan slice in this process (a pinned worker or a Ray task) and report it as a stream of events.

Events are plain dicts, so they cross a pipe as JSON lines or come back from Ray as objects:
  start {host, gpu_index, gpu_uuid, gpu_name}   once, when the worker knows where it runs
  log {text} / warn {text}                      lines for the driver's stderr
  load {model}                                  the slice's model is being loaded (once per slice)
  step {label}                                  one repetition or warm-up done (the progress bar)
  row {row}                                     one finished row
  done {} / error {message}                     exactly one of them, last
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from qprof.bench.gpus import current_gpu, host_name, placement_fields
from qprof.bench.slices import GpuInfo, SliceJob
from qprof.errors import QprofError

TERMINAL = ("done", "error")
Emit = Callable[[dict], None]


@contextlib.contextmanager
def workload_lock(spec: str) -> Iterator[None]:
    """Workers on one host that need the same workload take turns, so it is made once, not once per GPU.

    (Files appear by atomic rename either way; the lock only saves the duplicate work.)
    """
    if Path(spec).expanduser().exists():
        yield
        return
    from qprof.workloads.resolve import cache_root

    folder = cache_root() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", spec) + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def pinned_gpu(asked: GpuInfo | None, seen: GpuInfo | None) -> GpuInfo | None:
    """The GPU this worker really has: what CUDA shows, checked against what the driver pinned it to."""
    if asked and seen and asked.uuid and seen.uuid and asked.uuid != seen.uuid:
        raise QprofError(f"worker was pinned to {asked.label()} [{asked.uuid}] but CUDA device 0 is "
                         f"{seen.label()} [{seen.uuid}]; is CUDA_VISIBLE_DEVICES overridden?")
    return seen or asked


def _run(job: SliceJob, emit: Emit) -> None:
    from qprof.bench.record import collect_environment
    from qprof.bench.runner import BenchRunner, load_spec
    from qprof.bench.telemetry import Sampler, open_reader
    from qprof.ceilings.choose import run_ceilings
    from qprof.commands.bench import ceilings_lines, pick_device

    dev, why = pick_device(job.device)
    if dev == "cuda":
        import torch

        reader, source = open_reader(torch.cuda.current_device())
    else:
        reader, source = None, "none: CPU run"
    nvml_info = reader.info() if reader else {}
    env = collect_environment(dev, nvml_info)
    gpu = pinned_gpu(job.gpu, current_gpu(dev, reader))
    where = placement_fields(gpu)
    emit({"kind": "start", **where, "gpu_name": env.gpu_name or (gpu.name if gpu else None)})
    runtime = "CUDA runtime" if dev == "cuda" else "CPU reference runtime"

    def log(text: str) -> None:
        emit({"kind": "log", "text": text})

    log(f"device {dev} ({why}): {runtime}; telemetry {source}")
    ceilings = run_ceilings(dev, job.bandwidth, job.tflops, nvml_info, log=log)  # this worker's own card
    for line in ceilings_lines(ceilings):
        log(line)

    def load(spec: str):
        emit({"kind": "load", "model": spec})
        with workload_lock(spec):
            return load_spec(spec, log=log)

    runner = BenchRunner(job.params, env, ceilings, Sampler(reader, source), load=load,
                         on_step=lambda label: emit({"kind": "step", "label": label}),
                         warn=lambda text: emit({"kind": "warn", "text": text}), groups=list(job.slice.groups))
    for row in runner.rows():
        emit({"kind": "row", "row": {**row, **where}})


def run_slice(job: SliceJob, emit: Emit) -> None:
    """Run the slice; every failure becomes one `error` event with a one-line message, never an exception."""
    try:
        _run(job, emit)
    except QprofError as exc:
        emit({"kind": "error", "message": str(exc)})
    except MemoryError:
        emit({"kind": "error", "message": "out of host memory"})
    except Exception as exc:  # noqa: BLE001 -- a bug or a library failure: traceback to stderr, one line out
        traceback.print_exc(file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0]
        emit({"kind": "error", "message": f"{type(exc).__name__}: {first}" if first else type(exc).__name__})
    else:
        emit({"kind": "done"})


def one_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text (for errors raised by a remote worker's framework)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]) if lines else type(exc).__name__


def host_label(event: dict) -> str:
    """'vm GPU 1' from a start event."""
    gpu = f" GPU {event['gpu_index']}" if event.get("gpu_index") is not None else ""
    return f"{event.get('host') or host_name()}{gpu}"
