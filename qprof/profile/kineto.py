"""In-process capture with torch.profiler (Kineto/CUPTI), and its Chrome trace parsed into the activity table.

Kineto records every kernel launched in the process, ours included (they go through the CUDA
driver API, which CUPTI sees), plus copies, memsets and runtime/driver API calls with
correlation ids. It does not see NVTX, so a listener mirrors each qprof range as a torch
`record_function` whose name encodes level, category and message. Only one CUPTI client can
be active in a process: under nsys this mode refuses to start.
"""

from __future__ import annotations

import gzip
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from qprof.errors import QprofError
from qprof.profile.activity import (
    assign_ranges,
    classify_kernel,
    copy_kind_from_label,
    empty_table,
    family_of_category,
    make_table,
    validate,
)
from qprof.profile.native_stderr import drop_native_lines
from qprof.profile.ranges import RangeInfo

PREFIX = "qprof|"
_CATEGORIES = {
    "kernel": "kernel",
    "gpu_memcpy": "memcpy",
    "gpu_memset": "memset",
    "cuda_runtime": "api",
    "cuda_driver": "api",
    "cuda_sync": "sync",
    "cpu_op": "cpu_op",
}
# Sync points: CUPTI's synchronization records (cat cuda_sync, enabled below) and the host's
# synchronize API calls (cudaStreamSynchronize, cudaDeviceSynchronize, cuCtxSynchronize, ...). Kineto
# keeps few driver API calls, so cuCtxSynchronize shows up only as a cuda_sync record; a runtime
# call usually shows up as both, joined by correlation id and counted once.
_SYNC_CALLS = ("Synchronize",)
_NOT_HOST_SYNC = ("Stream Wait Event",)  # a device-side dependency, not the host waiting


def encode_range(info: RangeInfo) -> str:
    return f"{PREFIX}{info.level}|{info.category}|{info.message}"


def decode_range(name: str) -> tuple[str, str | None, str] | None:
    """(level, category, message) of a name made by encode_range; None for other annotations."""
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX):].split("|", 2)
    if len(parts) != 3:
        return None
    level, category, message = parts
    return level, (category or None), message


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


def _ns(us) -> int:
    return round(float(us) * 1000.0)


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _tid(v) -> int | None:
    """Kineto writes host thread ids as ints, sometimes as strings."""
    got = _int_or_none(v)
    if got is None and v is not None:
        digits = "".join(ch for ch in str(v) if ch.isdigit())
        got = int(digits) if digits else None
    return got


def _shape(v) -> str | None:
    if isinstance(v, (list, tuple)) and v:
        return ",".join(str(int(x)) for x in v)
    return None


def _row(ev: dict) -> dict | None:
    cat = str(ev.get("cat", "")).lower()
    name = str(ev.get("name", ""))
    args = ev.get("args") or {}
    start = _ns(ev["ts"])
    end = start + _ns(ev.get("dur", 0))
    if cat == "user_annotation":
        decoded = decode_range(name)
        if decoded is None:
            return None
        level, category, message = decoded
        family, qtype = family_of_category(category) if level == "op" else (None, None)
        return {"kind": "range", "name": message, "level": level, "family": family, "qtype": qtype,
                "start_ns": start, "end_ns": end, "tid": _tid(ev.get("tid"))}
    kind = _CATEGORIES.get(cat)
    if kind is None:
        return None
    row = {"kind": kind, "name": name, "start_ns": start, "end_ns": end,
           "correlation_id": _int_or_none(args.get("correlation"))}
    if kind in ("kernel", "memcpy", "memset"):
        row["stream"] = _int_or_none(args.get("stream", ev.get("tid")))
    if kind == "kernel":
        row["family"], row["qtype"] = classify_kernel(name)
        row["grid"], row["block"] = _shape(args.get("grid")), _shape(args.get("block"))
    elif kind == "memcpy":
        row.update(family="copy", copy_kind=copy_kind_from_label(name), bytes=_int_or_none(args.get("bytes")))
    elif kind == "memset":
        row.update(family="memset", bytes=_int_or_none(args.get("bytes")))
    elif kind == "sync":
        if args.get("cuda_sync_kind") in _NOT_HOST_SYNC or name in _NOT_HOST_SYNC:
            return None
        stream = _int_or_none(args.get("stream"))
        row.update(family="sync", stream=stream if stream is not None and stream >= 0 else None)
    elif kind == "api":
        row.update(family="cuda_api", tid=_tid(ev.get("tid")))
    else:  # cpu_op
        row.update(family="torch", tid=_tid(ev.get("tid")))
    return row


def load_trace(source: str | Path | dict) -> dict:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.exists():
        raise QprofError(f"trace file {path} does not exist")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise QprofError(f"{path.name} is not a JSON trace ({exc})") from None
    if isinstance(data, list):  # the bare-array Chrome trace form
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise QprofError(f"{path.name} has no traceEvents list; not a Chrome/Kineto trace")
    return data


def read_kineto_trace(source: str | Path | dict) -> pd.DataFrame:
    """The activity table of a torch.profiler Chrome trace, GPU work charged to the range that launched it."""
    data = load_trace(source)
    rows = []
    for ev in data["traceEvents"]:
        if not isinstance(ev, dict) or ev.get("ph") != "X" or "ts" not in ev:
            continue
        row = _row(ev)
        if row is not None:
            rows.append(row)
    recorded = {r["correlation_id"] for r in rows if r["kind"] == "sync"}
    rows += [{**r, "kind": "sync", "family": "sync"} for r in rows
             if r["kind"] == "api" and any(s in r["name"] for s in _SYNC_CALLS) and r["correlation_id"] not in recorded]
    if not rows:
        return empty_table()
    return validate(assign_ranges(make_table(rows)))


_KEEP_ARGS = ("correlation", "stream", "bytes", "grid", "block", "device")


def slim_trace(source: str | Path | dict, dest: str | Path, keep_cpu_ops: bool = False) -> Path:
    """Write only what read_kineto_trace uses (gzip when dest ends in .gz): small enough for a test fixture."""
    data = load_trace(source)
    keep = []
    for ev in data["traceEvents"]:
        if not isinstance(ev, dict) or ev.get("ph") != "X":
            continue
        cat = str(ev.get("cat", "")).lower()
        if cat == "user_annotation" and not str(ev.get("name", "")).startswith(PREFIX):
            continue
        if (cat not in _CATEGORIES and cat != "user_annotation") or (cat == "cpu_op" and not keep_cpu_ops):
            continue
        args = {k: v for k, v in (ev.get("args") or {}).items() if k in _KEEP_ARGS}
        keep.append({k: ev[k] for k in ("ph", "cat", "name", "pid", "tid", "ts", "dur") if k in ev} | {"args": args})
    text = json.dumps({"schemaVersion": data.get("schemaVersion", 1), "traceEvents": keep}, separators=(",", ":"))
    dest = Path(dest)
    dest.write_bytes(gzip.compress(text.encode()) if dest.suffix == ".gz" else text.encode())
    return dest
