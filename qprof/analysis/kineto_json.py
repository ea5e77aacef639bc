"""A torch.profiler (Kineto) Chrome trace turned into the activity table, and qprof's range names inside it.

Kineto records every kernel launched in the process (qprof's go through the CUDA driver API,
which CUPTI sees), copies, memsets, CUPTI sync records and runtime/driver API calls, all with
correlation ids, on one µs clock. It does not see NVTX: qprof mirrors each of its ranges as a
torch `record_function` named by encode_range (level, category, message). Any other annotation
whose name is a phase ("prefill", "decode") or a step ("token N") is read as one too. Kernel
names are demangled C++; the table shows them short and classifies the full name.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pandas as pd

from qprof.analysis.activity import (
    assign_ranges,
    copy_kind_from_label,
    empty_table,
    family_of_category,
    level_of,
    make_table,
    validate,
)
from qprof.analysis.families import classify, short_name
from qprof.annotate import RangeInfo
from qprof.errors import QprofError

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
# Sync points: CUPTI's synchronization records (cat cuda_sync) and the host's synchronize API calls
# (cudaStreamSynchronize, cudaDeviceSynchronize, cuCtxSynchronize, ...). Kineto keeps few driver API
# calls, so cuCtxSynchronize shows up only as a cuda_sync record; a runtime call usually shows up as
# both, joined by correlation id and counted once.
_SYNC_CALLS = ("Synchronize",)
_NOT_HOST_SYNC = ("Stream Wait Event",)  # a device-side dependency, not the host waiting
_GRAPH_NODE_ARGS = ("graph node id", "graphNodeId", "graph_node_id")  # where a Kineto build records it


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


def _annotation(name: str, start: int, end: int, tid) -> dict | None:
    decoded = decode_range(name)
    if decoded is None:
        level = level_of(name, None)
        if level not in ("phase", "token"):  # someone else's annotation
            return None
        decoded = (level, None, name)
    level, category, message = decoded
    family, qtype = family_of_category(category) if level == "op" else (None, None)
    return {"kind": "range", "name": message, "level": level, "family": family, "qtype": qtype,
            "start_ns": start, "end_ns": end, "tid": _tid(tid)}


def _row(ev: dict) -> dict | None:
    cat = str(ev.get("cat", "")).lower()
    name = str(ev.get("name", ""))
    args = ev.get("args") or {}
    start = _ns(ev["ts"])
    end = start + _ns(ev.get("dur", 0))
    if cat == "user_annotation":
        return _annotation(name, start, end, ev.get("tid"))
    kind = _CATEGORIES.get(cat)
    if kind is None:
        return None
    row = {"kind": kind, "name": name, "start_ns": start, "end_ns": end,
           "correlation_id": _int_or_none(args.get("correlation"))}
    if kind in ("kernel", "memcpy", "memset"):
        row["stream"] = _int_or_none(args.get("stream", ev.get("tid")))
        row["graph_node"] = next((_int_or_none(args[k]) for k in _GRAPH_NODE_ARGS if k in args), None)
    if kind == "kernel":
        got = classify(name)
        row.update(family=got.family, qtype=got.qtype, engine=got.engine, name=short_name(name))
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
    """The trace as a dict with a traceEvents list, from a .json / .json.gz file (or a dict)."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.exists():
        raise QprofError(f"trace file {path} does not exist")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise QprofError(f"{path.name} is not a JSON trace, or it ends early: truncated? ({exc})") from None
    if isinstance(data, list):  # the bare-array Chrome trace form
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise QprofError(f"{path.name} has no traceEvents list; not a Chrome/Kineto trace")
    return data


def card_name(data: dict) -> str | None:
    """The first GPU's name from Kineto's deviceProperties, if the trace has them."""
    props = data.get("deviceProperties")
    if isinstance(props, list) and props and isinstance(props[0], dict) and props[0].get("name"):
        return str(props[0]["name"])
    return None


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
