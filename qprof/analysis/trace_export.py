"""Write the activity table as a Chrome/Perfetto JSON trace that Holistic Trace Analysis can also load.

Chrome trace format: complete events (`ph: X`) with `ts`/`dur` in µs and `pid`/`tid`; Kineto's
categories (kernel, gpu_memcpy, gpu_memset, cuda_runtime, cuda_driver, cuda_sync,
user_annotation, cpu_op) so HTA recognizes them; launch→kernel flow arrows (`ph: s`/`f` with
the correlation id, category ac2g, as Kineto writes them); and a top-level `distributedInfo`.
Open it at ui.perfetto.dev (Open trace file) or chrome://tracing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qprof.errors import QprofError

HOST_PID = 1
GPU_PID = 0  # Kineto puts device activity on pid = device index
OPS_PID = 2  # per-op timings of the events/blocking modes
DEFAULT_STREAM = 7


def _us(ns: int, t0: int) -> float:
    return round((int(ns) - t0) / 1000.0, 3)


def _opt(v):
    return None if v is None or pd.isna(v) else v


def _shape(v) -> list[int] | None:
    v = _opt(v)
    return [int(x) for x in str(v).split(",")] if v else None


def _tid(row) -> int:
    t = _opt(row["tid"])
    # nsys globalTid packs pid << 24 | tid; show the OS thread id
    return int(t) & 0xFFFFFF if t is not None else 1


def _api_category(name: str) -> str:
    return "cuda_driver" if name.startswith("cu") and not name.startswith("cuda") else "cuda_runtime"


def _event(row, t0: int) -> dict | None:
    kind = row["kind"]
    base = {"ph": "X", "name": str(row["name"]), "ts": _us(row["start_ns"], t0),
            "dur": round(int(row["dur_ns"]) / 1000.0, 3)}
    corr = _opt(row["correlation_id"])
    ctx = {k: _opt(row[k]) for k in ("nvtx_range", "token", "phase", "layer") if _opt(row[k]) is not None}
    for k in ("token", "layer"):
        if k in ctx:
            ctx[k] = int(ctx[k])
    stream = int(row["stream"]) if _opt(row["stream"]) is not None else DEFAULT_STREAM
    if kind == "kernel":
        args = {"device": 0, "stream": stream, "correlation": int(corr) if corr is not None else None,
                "family": _opt(row["family"]), "qtype": _opt(row["qtype"]), **ctx}
        if _shape(row["grid"]):
            args["grid"], args["block"] = _shape(row["grid"]), _shape(row["block"])
        if _opt(row["bytes"]) is not None and row["dur_ns"] > 0:
            args["bytes"] = int(row["bytes"])
            args["achieved GB/s"] = round(int(row["bytes"]) / row["dur_ns"], 2)
        return {**base, "cat": "kernel", "pid": GPU_PID, "tid": stream, "args": args}
    if kind in ("memcpy", "memset"):
        nbytes = int(row["bytes"]) if _opt(row["bytes"]) is not None else 0
        args = {"device": 0, "stream": stream, "correlation": int(corr) if corr is not None else None,
                "bytes": nbytes, "memory bandwidth (GB/s)": round(nbytes / max(int(row["dur_ns"]), 1), 3), **ctx}
        name = f"Memcpy {row['copy_kind'] or ''}".strip() if kind == "memcpy" else "Memset (Device)"
        return {**base, "name": name, "cat": "gpu_memcpy" if kind == "memcpy" else "gpu_memset", "pid": GPU_PID,
                "tid": stream, "args": args}
    if kind == "api":
        return {**base, "cat": _api_category(str(row["name"])), "pid": HOST_PID, "tid": _tid(row),
                "args": {"correlation": int(corr) if corr is not None else None, **ctx}}
    if kind == "sync":
        return {**base, "cat": "cuda_sync", "pid": HOST_PID, "tid": _tid(row),
                "args": {"correlation": int(corr) if corr is not None else None, **ctx}}
    if kind == "range":
        return {**base, "cat": "user_annotation", "pid": HOST_PID, "tid": _tid(row),
                "args": {"level": _opt(row["level"]), "path": _opt(row["nvtx_path"]), **ctx}}
    if kind == "op":
        return {**base, "cat": "gpu_user_annotation", "pid": OPS_PID, "tid": 0,
                "args": {"family": _opt(row["family"]), "qtype": _opt(row["qtype"]), **ctx}}
    if kind == "cpu_op":
        return {**base, "cat": "cpu_op", "pid": HOST_PID, "tid": _tid(row), "args": ctx}
    return None


def _flows(df: pd.DataFrame, t0: int) -> list[dict]:
    """Launch → device work arrows, keyed by correlation id (Kineto's ac2g flow)."""
    api = df[(df["kind"] == "api") & df["correlation_id"].notna()].drop_duplicates("correlation_id")
    dev = df[df["kind"].isin(["kernel", "memcpy", "memset"]) & df["correlation_id"].notna()]
    dev = dev.drop_duplicates("correlation_id").set_index("correlation_id")
    out = []
    for _, a in api.iterrows():
        corr = int(a["correlation_id"])
        if corr not in dev.index:
            continue
        d = dev.loc[corr]
        stream = int(d["stream"]) if _opt(d["stream"]) is not None else DEFAULT_STREAM
        out.append({"ph": "s", "id": corr, "pid": HOST_PID, "tid": _tid(a), "ts": _us(a["start_ns"], t0),
                    "cat": "ac2g", "name": "ac2g"})
        out.append({"ph": "f", "id": corr, "pid": GPU_PID, "tid": stream, "ts": _us(d["start_ns"], t0),
                    "cat": "ac2g", "name": "ac2g", "bp": "e"})
    return out


def _metadata(df: pd.DataFrame, device_name: str) -> list[dict]:
    meta = [{"ph": "M", "name": "process_name", "pid": HOST_PID, "tid": 0, "args": {"name": "qprof host"}},
            {"ph": "M", "name": "process_name", "pid": GPU_PID, "tid": 0, "args": {"name": f"GPU 0 ({device_name})"}},
            {"ph": "M", "name": "process_labels", "pid": GPU_PID, "tid": 0, "args": {"labels": "GPU 0"}}]
    streams = df.loc[df["kind"].isin(["kernel", "memcpy", "memset"]), "stream"].dropna().unique()
    for s in sorted({int(s) for s in streams} or ({DEFAULT_STREAM} if not df.empty else set())):
        meta.append({"ph": "M", "name": "thread_name", "pid": GPU_PID, "tid": s, "args": {"name": f"stream {s}"}})
    if (df["kind"] == "op").any():
        meta.append({"ph": "M", "name": "process_name", "pid": OPS_PID, "tid": 0,
                     "args": {"name": "qprof ops (timed per op)"}})
    return meta


def to_chrome_trace(df: pd.DataFrame, device_name: str = "unknown", trace_name: str = "qprof") -> dict:
    """The table as a Chrome trace dict (timestamps relative to the first row)."""
    t0 = int(df["start_ns"].min()) if not df.empty else 0
    events = _metadata(df, device_name)
    for _, row in df.iterrows():
        ev = _event(row, t0)
        if ev is not None:
            ev["args"] = {k: v for k, v in ev["args"].items() if v is not None}
            events.append(ev)
    events += _flows(df, t0)
    if not df.empty:  # HTA splits a trace into iterations at ProfilerStep annotations; the run is one step
        events.append({"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "pid": HOST_PID,
                       "tid": _tid(df.iloc[0]) if (df["kind"] == "range").any() else 1, "ts": 0.0,
                       "dur": _us(int(df["end_ns"].max()), t0), "args": {}})
    return {
        "schemaVersion": 1,
        "traceName": trace_name,
        "displayTimeUnit": "ms",
        "deviceProperties": [{"id": 0, "name": device_name}],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
        "traceEvents": events,
    }


def write_chrome_trace(df: pd.DataFrame, path: str | Path, device_name: str = "unknown") -> Path:
    path = Path(path)
    if path.suffix != ".json":
        raise QprofError(f"trace file {path} must end in .json (Chrome/Perfetto JSON)")
    if not path.parent.exists():
        raise QprofError(f"directory {path.parent} for the trace file does not exist")
    path.write_text(json.dumps(to_chrome_trace(df, device_name, path.stem)))
    return path
