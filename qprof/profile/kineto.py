"""In-process capture with torch.profiler (Kineto/CUPTI); qprof.analysis.kineto_json reads what it writes.

Kineto does not see NVTX, so a listener mirrors each qprof range as a torch `record_function`
(named by kineto_json.encode_range). Only one CUPTI client can be active in a process: under
nsys this mode refuses to start.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from qprof.analysis.kineto_json import encode_range
from qprof.annotate import RangeInfo
from qprof.errors import QprofError
from qprof.profile.native_stderr import drop_native_lines


class RecordFunctionListener:
    """Annotator listener: mirrors each qprof range as a torch.profiler record_function."""

    def __init__(self) -> None:
        import torch

        self._record_function = torch.autograd.profiler.record_function
        self._stack: list = []

    def begin(self, info: RangeInfo) -> None:
        rf = self._record_function(encode_range(info))
        rf.__enter__()
        self._stack.append(rf)

    def end(self, info: RangeInfo) -> None:
        if self._stack:
            self._stack.pop().__exit__(None, None, None)


def under_nsys() -> bool:
    """True inside a process that nsys launched (its CUPTI injection is loaded)."""
    inj = os.environ.get("CUDA_INJECTION64_PATH", "")
    return any(k.startswith("NSYS_") for k in os.environ) or "nsys" in inj.lower() or "ToolsInjection" in inj


@contextmanager
def kineto_capture(device: str, trace_path: Path):
    """torch.profiler around the block; the Chrome trace is written to trace_path on exit."""
    if under_nsys():
        raise QprofError("--timing torch cannot run under nsys: only one CUPTI client may be active in a process; "
                         "use --timing nsys or run qprof outside nsys")
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    kwargs: dict = {}
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
        try:
            from torch.profiler import _ExperimentalConfig

            kwargs["experimental_config"] = _ExperimentalConfig(enable_cuda_sync_events=True)
        except (ImportError, TypeError):  # older torch: the synchronize API calls still mark the syncs
            pass
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof = profile(activities=activities, **kwargs)
    with drop_native_lines():  # Kineto's "USDT: ... profiler_start" line
        prof.start()
    try:
        yield prof
    finally:
        with drop_native_lines():  # and its "profiler_stop"
            prof.stop()
    prof.export_chrome_trace(str(trace_path))
