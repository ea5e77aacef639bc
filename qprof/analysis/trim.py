"""Small copies of real traces for test fixtures: only what the parsers read, in the source's own schema.

`trim_sqlite` keeps the nsys tables qprof reads, created with the export's own CREATE TABLE
statements (so the schema is nsys's), optionally only inside qprof's "run" range, optionally
without the API calls that launched nothing and waited for nothing (cuKernelGetName, cudaMalloc);
a destination ending in .xz or .gz is compressed. `slim_trace` does the same for a Kineto trace.
"""

from __future__ import annotations

import gzip
import json
import lzma
import sqlite3
import tempfile
from pathlib import Path

from qprof.analysis.kineto_json import _CATEGORIES, PREFIX, load_trace

# tables a trimmed nsys fixture keeps
PARSED_TABLES = ("StringIds", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                 "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER",
                 "NVTX_EVENTS", "ENUM_CUDA_MEMCPY_OPER", "ENUM_CUPTI_SYNC_TYPE", "ENUM_NSYS_EVENT_TYPE",
                 "ENUM_CUDA_MEM_KIND", "TARGET_INFO_GPU")
_DEVICE_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                  "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION")
_API_TABLES = ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER")
# API calls a trimmed trace keeps even when no device row shares their correlation id
_KEEP_CALLS = ("Synchronize", "Memcpy", "Memset", "GraphLaunch", "Launch")


def _run_window(con: sqlite3.Connection, run_name: str) -> tuple[int, int] | None:
    """Start and end of the qprof NVTX range named run_name (the measured run), if the file has it."""
    row = con.execute(
        "SELECT MIN(n.start), MAX(n.end) FROM NVTX_EVENTS n LEFT JOIN StringIds s ON n.textId = s.id "
        "WHERE n.eventType IN (59, 60, 70) AND n.end IS NOT NULL AND COALESCE(n.text, s.value) = ?",
        (run_name,)).fetchone()
    return (int(row[0]), int(row[1])) if row and row[0] is not None else None


def _drop_unlinked_api(con: sqlite3.Connection, have: set[str]) -> None:
    linked = " UNION ".join(f"SELECT correlationId FROM {t}" for t in _DEVICE_TABLES if t in have)
    for table in _API_TABLES:
        if table not in have:
            continue
        keep_names = " OR ".join("s.value LIKE ?" for _ in _KEEP_CALLS)
        con.execute(f"DELETE FROM {table} WHERE correlationId NOT IN ({linked or 'SELECT NULL'}) AND nameId NOT IN "
                    f"(SELECT s.id FROM StringIds s WHERE {keep_names})", tuple(f"%{c}%" for c in _KEEP_CALLS))


def _compress(db: Path, dst: Path) -> None:
    data = db.read_bytes()
    dst.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME) if dst.suffix == ".xz"
                    else gzip.compress(data, compresslevel=9))


def trim_sqlite(src: str | Path, dst: str | Path, run_name: str | None = "run", drop_unlinked_api: bool = False) -> Path:
    """Copy only the tables the parser reads (a full export carries many more) into a new file.

    With run_name, activity and NVTX ranges outside that range (warm-up, set-up) are dropped too;
    with drop_unlinked_api, API calls that launched, copied and waited for nothing.
    """
    src, dst = Path(src), Path(dst)
    dst.unlink(missing_ok=True)
    compressed = dst.suffix in (".xz", ".gz")
    with tempfile.TemporaryDirectory(prefix="qprof-trim-") as tmp:
        db = Path(tmp) / "trim.sqlite" if compressed else dst
        con = sqlite3.connect(str(db))
        try:
            con.execute("ATTACH DATABASE ? AS src", (str(src),))
            schema = {r[0]: r[1] for r in con.execute("SELECT name, sql FROM src.sqlite_master WHERE type = 'table'")}
            have = {t for t in PARSED_TABLES if t in schema}
            for table in PARSED_TABLES:
                if table in have:
                    con.execute(schema[table])  # the export's own schema
                    con.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table}")
            con.commit()
            con.execute("DETACH DATABASE src")
            window = _run_window(con, run_name) if run_name and {"NVTX_EVENTS", "StringIds"} <= have else None
            if window is not None:
                lo, hi = window
                for table in have:
                    if table.startswith("CUPTI_ACTIVITY_KIND_"):
                        con.execute(f"DELETE FROM {table} WHERE start < ? OR start > ?", (lo, hi))
                con.execute("DELETE FROM NVTX_EVENTS WHERE eventType IN (59, 60, 70) AND (start < ? OR start > ?)",
                            (lo, hi))
            if drop_unlinked_api:
                _drop_unlinked_api(con, have)
            con.commit()
            con.execute("VACUUM")
        finally:
            con.close()
        if compressed:
            _compress(db, dst)
    return dst


_KEEP_ARGS = ("correlation", "stream", "bytes", "grid", "block", "device", "graph node id")


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
    out = {"schemaVersion": data.get("schemaVersion", 1), "traceEvents": keep}
    if "deviceProperties" in data:
        out["deviceProperties"] = data["deviceProperties"]
    text = json.dumps(out, separators=(",", ":"))
    dest = Path(dest)
    dest.write_bytes(gzip.compress(text.encode()) if dest.suffix == ".gz" else text.encode())
    return dest
