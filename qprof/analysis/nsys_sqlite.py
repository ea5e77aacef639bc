"""An nsys SQLite export turned into the activity table (any program's capture, qprof's included).

Reads CUPTI_ACTIVITY_KIND_KERNEL / _MEMCPY / _MEMSET / _SYNCHRONIZATION / _RUNTIME / _DRIVER,
NVTX_EVENTS, StringIds, the ENUM_* label tables and TARGET_INFO_GPU; every time is in ns on
nsys's one session clock. Kernel names are shown short (shortName) and classified from the
demangled name, which carries template arguments (llama.cpp's quant type). A copy is named as
CUPTI names it ("Memcpy HtoD (Pageable -> Device)"), a sync after the API call that waited.
Under `--cuda-graph-trace=node` every kernel of a graph launch has its graphNodeId.

NVTX: every range of qprof's domain, and, from any domain, ranges whose message is a phase
("prefill", "decode") or a step ("token N"), so a program annotated with those names gets the
same hierarchy. Other libraries' ranges (CCCL, cuDNN) are not ours.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
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
from qprof.analysis.families import classify
from qprof.annotate import DOMAIN
from qprof.errors import QprofError

# NVTX_EVENTS.eventType values (ENUM_NSYS_EVENT_TYPE); read from the file when it has the enum table
_EVENT_TYPES = {"NvtxCategory": 33, "NvtxPushPopRange": 59, "NvtxStartEndRange": 60,
                "NvtxtPushPopRange": 70, "NvtxDomainCreate": 75}
_MEM_KINDS = {0: "Pageable", 1: "Pinned", 2: "Device", 3: "Array", 4: "Managed", 5: "Device Static",
              6: "Managed Static"}  # ENUM_CUDA_MEM_KIND when the file lacks it


@dataclass(frozen=True)
class Card:
    """The GPU a trace names, and the bandwidth it records (theoretical, from the driver)."""

    name: str | None = None
    bandwidth_Bps: float | None = None


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def _enum(con: sqlite3.Connection, tables: set[str], table: str) -> dict[int, str]:
    if table not in tables:
        return {}
    cols = _columns(con, table)
    label = "label" if "label" in cols else "name"
    return {int(i): str(v) for i, v in con.execute(f"SELECT id, {label} FROM {table}")}


def _event_types(con: sqlite3.Connection, tables: set[str]) -> dict[str, int]:
    found = dict(_EVENT_TYPES)
    if "ENUM_NSYS_EVENT_TYPE" in tables:
        for i, name in con.execute("SELECT id, name FROM ENUM_NSYS_EVENT_TYPE"):
            if name in found:
                found[name] = int(i)
    return found


def _col(cols: set[str], name: str) -> str:
    return name if name in cols else "NULL"


def _kernels(con, strings: dict[int, str]) -> list[dict]:
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_KERNEL")
    short = "shortName" if "shortName" in cols else "demangledName"
    full = "demangledName" if "demangledName" in cols else short
    shape = all(c in cols for c in ("gridX", "blockX"))
    q = (f"SELECT start, end, streamId, correlationId, {short}, {full}, {_col(cols, 'graphNodeId')}"
         + (", gridX, gridY, gridZ, blockX, blockY, blockZ" if shape else "") + " FROM CUPTI_ACTIVITY_KIND_KERNEL")
    rows = []
    for r in con.execute(q):
        name = strings.get(r[4], str(r[4]))
        got = classify(strings.get(r[5], name))
        row = {"kind": "kernel", "name": name, "family": got.family, "qtype": got.qtype, "engine": got.engine,
               "start_ns": r[0], "end_ns": r[1], "stream": r[2], "correlation_id": r[3], "graph_node": r[6]}
        if shape:
            row["grid"] = f"{r[7]},{r[8]},{r[9]}"
            row["block"] = f"{r[10]},{r[11]},{r[12]}"
        rows.append(row)
    return rows


def _copies(con, copy_kinds: dict[int, str], mem_kinds: dict[int, str]) -> list[dict]:
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_MEMCPY")
    rows = []
    for s, e, stream, corr, nbytes, ck, src, dst, node in con.execute(
            f"SELECT start, end, streamId, correlationId, bytes, copyKind, {_col(cols, 'srcKind')}, "
            f"{_col(cols, 'dstKind')}, {_col(cols, 'graphNodeId')} FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
        kind = copy_kind_from_label(copy_kinds.get(ck, "")) if ck is not None else None
        name = f"Memcpy {kind or 'unknown'}"
        if src in mem_kinds and dst in mem_kinds:  # as CUPTI (and so Kineto) names a copy
            name += f" ({mem_kinds[src]} -> {mem_kinds[dst]})"
        rows.append({"kind": "memcpy", "name": name, "family": "copy", "start_ns": s, "end_ns": e, "stream": stream,
                     "correlation_id": corr, "bytes": nbytes, "copy_kind": kind, "graph_node": node})
    return rows


def _memsets(con) -> list[dict]:
    return [{"kind": "memset", "name": "Memset", "family": "memset", "start_ns": s, "end_ns": e, "stream": stream,
             "correlation_id": corr, "bytes": nbytes}
            for s, e, stream, corr, nbytes in con.execute(
                "SELECT start, end, streamId, correlationId, bytes FROM CUPTI_ACTIVITY_KIND_MEMSET")]


def _syncs(con, sync_types: dict[int, str], api_names: dict[int, str]) -> list[dict]:
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION")
    rows = []
    for s, e, stream, corr, st in con.execute(
            f"SELECT start, end, streamId, correlationId, {_col(cols, 'syncType')} "
            "FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"):
        # the API call that waited names the sync best (nsys's syncType labels do not match CUPTI's in every
        # version: cudaStreamSynchronize calls come out as "Stream wait sync")
        label = api_names.get(corr) or (sync_types.get(st, "synchronize") if st is not None else "synchronize")
        rows.append({"kind": "sync", "name": label, "family": "sync", "start_ns": s, "end_ns": e,
                     "stream": stream if stream is not None and stream >= 0 else None, "correlation_id": corr})
    return rows


def _api(con, table: str, strings: dict[int, str]) -> list[dict]:
    return [{"kind": "api", "name": strings.get(nid, str(nid)), "family": "cuda_api", "start_ns": s, "end_ns": e,
             "tid": tid, "correlation_id": corr}
            for s, e, tid, corr, nid in con.execute(
                f"SELECT start, end, globalTid, correlationId, nameId FROM {table}")]


def _ours(message: str, level: str) -> bool:
    """A range from another domain that still names qprof's hierarchy: a phase or a step."""
    return level in ("phase", "token")


def _nvtx(con, strings: dict[int, str], types: dict[str, int], domain: str) -> list[dict]:
    cols = _columns(con, "NVTX_EVENTS")
    text, text_id = _col(cols, "text"), _col(cols, "textId")
    dom_col = "domainId" if "domainId" in cols else "0"
    cat_col = _col(cols, "category")
    domains: dict[int, str] = {}
    categories: dict[tuple[int, int], str] = {}
    for dom, cat, txt, tid_ in con.execute(
            f"SELECT {dom_col}, {cat_col}, {text}, {text_id} FROM NVTX_EVENTS WHERE eventType = ?",
            (types["NvtxDomainCreate"],)):
        domains[dom] = txt if txt is not None else strings.get(tid_, "")
    for dom, cat, txt, tid_ in con.execute(
            f"SELECT {dom_col}, {cat_col}, {text}, {text_id} FROM NVTX_EVENTS WHERE eventType = ?",
            (types["NvtxCategory"],)):
        categories[(dom, cat)] = txt if txt is not None else strings.get(tid_, "")
    ours = {d for d, n in domains.items() if n == domain}
    range_types = (types["NvtxPushPopRange"], types["NvtxStartEndRange"], types["NvtxtPushPopRange"])
    rows = []
    q = (f"SELECT start, end, globalTid, {dom_col}, {cat_col}, {text}, {text_id} FROM NVTX_EVENTS "
         f"WHERE eventType IN ({','.join('?' * len(range_types))}) AND end IS NOT NULL")
    for s, e, tid, dom, cat, txt, tid_ in con.execute(q, range_types):
        message = txt if txt is not None else strings.get(tid_, "")
        category = categories.get((dom, cat)) if cat else None
        level = level_of(message, category)
        if domains and dom not in ours and not _ours(message, level):
            continue  # other tools' or libraries' ranges are not our hierarchy
        family, qtype = family_of_category(category) if level == "op" else (None, None)
        rows.append({"kind": "range", "name": message, "level": level, "family": family, "qtype": qtype,
                     "start_ns": s, "end_ns": e, "tid": tid})
    return rows


def _connect(path: Path) -> tuple[sqlite3.Connection, set[str]]:
    if not path.exists():
        raise QprofError(f"nsys SQLite file {path} does not exist")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        with path.open("rb") as fh:
            sqlite_header = fh.read(16) == b"SQLite format 3\x00"
        if sqlite_header:
            raise QprofError(f"{path.name} is an SQLite file that cannot be read ({exc}): truncated or damaged?") from None
        raise QprofError(f"{path.name} is not an SQLite database ({exc})") from None
    if "StringIds" not in tables:
        con.close()
        raise QprofError(f"{path.name} is not an nsys SQLite export (no StringIds table)")
    return con, tables


def read_nsys_sqlite(path: str | Path, domain: str = DOMAIN) -> pd.DataFrame:
    """The activity table of an nsys SQLite export, with NVTX context charged to launching ranges."""
    path = Path(path)
    con, tables = _connect(path)
    try:
        strings = {int(i): str(v) for i, v in con.execute("SELECT id, value FROM StringIds")}
        rows: list[dict] = []
        for table in ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER"):
            if table in tables:
                rows += _api(con, table, strings)
        if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
            rows += _kernels(con, strings)
        if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
            mem_kinds = _enum(con, tables, "ENUM_CUDA_MEM_KIND") or _MEM_KINDS
            rows += _copies(con, _enum(con, tables, "ENUM_CUDA_MEMCPY_OPER"), mem_kinds)
        if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
            rows += _memsets(con)
        if "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION" in tables:
            api_names = {r["correlation_id"]: r["name"] for r in rows if r["kind"] == "api"}
            rows += _syncs(con, _enum(con, tables, "ENUM_CUPTI_SYNC_TYPE"), api_names)
        if "NVTX_EVENTS" in tables:
            rows += _nvtx(con, strings, _event_types(con, tables), domain)
    except sqlite3.DatabaseError as exc:
        raise QprofError(f"{path.name}: unreadable nsys export ({exc}); is the file truncated?") from None
    finally:
        con.close()
    if not rows:
        return empty_table()
    return validate(assign_ranges(make_table(rows)))


def read_card(path: str | Path) -> Card:
    """The GPU named in TARGET_INFO_GPU (the first one), and its memory bandwidth as the driver reports it."""
    con, tables = _connect(Path(path))
    try:
        if "TARGET_INFO_GPU" not in tables:
            return Card()
        cols = _columns(con, "TARGET_INFO_GPU")
        row = con.execute(f"SELECT {_col(cols, 'name')}, {_col(cols, 'memoryBandwidth')} FROM TARGET_INFO_GPU "
                          "ORDER BY id LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return Card()
    finally:
        con.close()
    if row is None:
        return Card()
    return Card(str(row[0]) if row[0] else None, float(row[1]) if row[1] else None)
