"""Run a workload under Nsight Systems and turn its SQLite export into the activity table.

Capture: `nsys profile -t cuda,nvtx` around a child `python -m qprof.profile.workload`, then
`nsys export --type sqlite`. The .nsys-rep and .sqlite stay as artifacts. When nsys is missing,
or cannot write its report (a known cause: libdw.so.1 not on the library path), NsysUnavailable
says exactly that and how to fix it; the caller falls back to `events` timing.

Parse: CUPTI_ACTIVITY_KIND_KERNEL / _MEMCPY / _MEMSET / _SYNCHRONIZATION / _RUNTIME, NVTX_EVENTS,
StringIds and ENUM_CUDA_MEMCPY_OPER; every time is in ns on nsys's one session clock.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qprof.errors import QprofError
from qprof.profile.activity import (
    assign_ranges,
    classify_kernel,
    copy_kind_from_label,
    empty_table,
    family_of_category,
    level_of,
    make_table,
    validate,
)
from qprof.profile.ranges import DOMAIN

# NVTX_EVENTS.eventType values (ENUM_NSYS_EVENT_TYPE); read from the file when it has the enum table
_EVENT_TYPES = {"NvtxCategory": 33, "NvtxPushPopRange": 59, "NvtxStartEndRange": 60,
                "NvtxtPushPopRange": 70, "NvtxDomainCreate": 75}


class NsysUnavailable(QprofError):
    """nsys is missing or could not produce a report; the message says why and how to fix it."""


# --------------------------------------------------------------------------- finding nsys


def _nsys_info():
    from qprof.doctor import find_nsys as doctor_find

    return doctor_find()


def find_nsys() -> str | None:
    """Path of the nsys executable (`qprof doctor`'s search), or None."""
    return _nsys_info().path


def require_nsys() -> str:
    info = _nsys_info()
    if info.path is None:
        raise NsysUnavailable(info.reason)
    return info.path


# --------------------------------------------------------------------------- capture


@dataclass
class NsysCapture:
    report: Path  # .nsys-rep
    sqlite: Path
    log: Path


def _explain_failure(output: str, what: str) -> str:
    low = output.lower()
    if "libdw" in low:
        from qprof.doctor import LIBDW_FIX

        return f"nsys could not {what}: libdw.so.1 is missing from the library path; {LIBDW_FIX}"
    tail = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    return f"nsys could not {what}: {tail[:300]}"


def capture(child_argv: list[str], out_dir: Path, name: str = "qprof", timeout_s: float = 1800,
            nsys: str | None = None, env: dict | None = None) -> NsysCapture:
    """Run `child_argv` (a python command) under nsys; return the report, its SQLite export and the log."""
    nsys = nsys or require_nsys()
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    report = prefix.with_suffix(".nsys-rep")
    sqlite_path = prefix.with_suffix(".sqlite")
    log = out_dir / f"{name}.nsys.log"
    for stale in (report, sqlite_path):
        stale.unlink(missing_ok=True)
    cmd = [nsys, "profile", "-t", "cuda,nvtx", "--sample=none", "--cpuctxsw=none", "--force-overwrite=true",
           "-o", str(prefix), *child_argv]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise NsysUnavailable(f"nsys profile did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise NsysUnavailable(f"nsys at {nsys} could not be started: {exc}") from None
    output = proc.stdout + proc.stderr
    log.write_text(" ".join(cmd) + "\n" + output)
    if proc.returncode != 0 and "Traceback" in output and not report.exists():
        raise QprofError(f"the profiled workload failed under nsys (see {log}): "
                         + _explain_failure(proc.stderr, "run the workload").split(": ", 1)[-1])
    if not report.exists():
        raise NsysUnavailable(_explain_failure(output, f"write its report {report.name}"))
    exp = subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "--output",
                          str(sqlite_path), str(report)], check=False, capture_output=True, text=True,
                         timeout=timeout_s, env=env)
    with log.open("a") as fh:
        fh.write(exp.stdout + exp.stderr)
    if not sqlite_path.exists():
        raise NsysUnavailable(_explain_failure(exp.stdout + exp.stderr, f"export {report.name} to SQLite"))
    return NsysCapture(report, sqlite_path, log)


def python_child(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --------------------------------------------------------------------------- parsing


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


def _kernels(con, strings: dict[int, str]) -> list[dict]:
    rows = []
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_KERNEL")
    name_col = "shortName" if "shortName" in cols else "demangledName"
    shape = all(c in cols for c in ("gridX", "blockX"))
    q = (f"SELECT start, end, streamId, correlationId, {name_col}"
         + (", gridX, gridY, gridZ, blockX, blockY, blockZ" if shape else "") + " FROM CUPTI_ACTIVITY_KIND_KERNEL")
    for r in con.execute(q):
        name = strings.get(r[4], str(r[4]))
        family, qtype = classify_kernel(name)
        row = {"kind": "kernel", "name": name, "family": family, "qtype": qtype, "start_ns": r[0], "end_ns": r[1],
               "stream": r[2], "correlation_id": r[3]}
        if shape:
            row["grid"] = f"{r[5]},{r[6]},{r[7]}"
            row["block"] = f"{r[8]},{r[9]},{r[10]}"
        rows.append(row)
    return rows


def _copies(con, copy_kinds: dict[int, str]) -> list[dict]:
    rows = []
    for s, e, stream, corr, nbytes, ck in con.execute(
            "SELECT start, end, streamId, correlationId, bytes, copyKind FROM CUPTI_ACTIVITY_KIND_MEMCPY"):
        kind = copy_kind_from_label(copy_kinds.get(ck, "")) if ck is not None else None
        rows.append({"kind": "memcpy", "name": f"Memcpy {kind or 'unknown'}", "family": "copy", "start_ns": s,
                     "end_ns": e, "stream": stream, "correlation_id": corr, "bytes": nbytes, "copy_kind": kind})
    return rows


def _memsets(con) -> list[dict]:
    return [{"kind": "memset", "name": "Memset", "family": "memset", "start_ns": s, "end_ns": e, "stream": stream,
             "correlation_id": corr, "bytes": nbytes}
            for s, e, stream, corr, nbytes in con.execute(
                "SELECT start, end, streamId, correlationId, bytes FROM CUPTI_ACTIVITY_KIND_MEMSET")]


def _syncs(con, sync_types: dict[int, str]) -> list[dict]:
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION")
    stype = "syncType" if "syncType" in cols else "NULL"
    rows = []
    for s, e, stream, corr, st in con.execute(
            f"SELECT start, end, streamId, correlationId, {stype} FROM CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"):
        label = sync_types.get(st, "synchronize") if st is not None else "synchronize"
        rows.append({"kind": "sync", "name": label, "family": "sync", "start_ns": s, "end_ns": e,
                     "stream": stream if stream is not None and stream >= 0 else None, "correlation_id": corr})
    return rows


def _api(con, table: str, strings: dict[int, str]) -> list[dict]:
    return [{"kind": "api", "name": strings.get(nid, str(nid)), "family": "cuda_api", "start_ns": s, "end_ns": e,
             "tid": tid, "correlation_id": corr}
            for s, e, tid, corr, nid in con.execute(
                f"SELECT start, end, globalTid, correlationId, nameId FROM {table}")]


def _nvtx(con, strings: dict[int, str], types: dict[str, int], domain: str) -> list[dict]:
    cols = _columns(con, "NVTX_EVENTS")
    text = "text" if "text" in cols else "NULL"
    text_id = "textId" if "textId" in cols else "NULL"
    dom_col = "domainId" if "domainId" in cols else "0"
    cat_col = "category" if "category" in cols else "NULL"
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
        if domains and dom not in ours:  # other tools' or libraries' ranges are not our hierarchy
            continue
        message = txt if txt is not None else strings.get(tid_, "")
        category = categories.get((dom, cat)) if cat else None
        level = level_of(message, category)
        family, qtype = family_of_category(category) if level == "op" else (None, None)
        rows.append({"kind": "range", "name": message, "level": level, "family": family, "qtype": qtype,
                     "start_ns": s, "end_ns": e, "tid": tid})
    return rows


def read_nsys_sqlite(path: str | Path, domain: str = DOMAIN) -> pd.DataFrame:
    """The activity table of an nsys SQLite export, with NVTX context charged to launching ranges."""
    path = Path(path)
    if not path.exists():
        raise QprofError(f"nsys SQLite file {path} does not exist")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        raise QprofError(f"{path.name} is not an SQLite database ({exc})") from None
    try:
        if "StringIds" not in tables:
            raise QprofError(f"{path.name} is not an nsys SQLite export (no StringIds table)")
        strings = {int(i): str(v) for i, v in con.execute("SELECT id, value FROM StringIds")}
        rows: list[dict] = []
        if "CUPTI_ACTIVITY_KIND_KERNEL" in tables:
            rows += _kernels(con, strings)
        if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
            rows += _copies(con, _enum(con, tables, "ENUM_CUDA_MEMCPY_OPER"))
        if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
            rows += _memsets(con)
        if "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION" in tables:
            rows += _syncs(con, _enum(con, tables, "ENUM_CUPTI_SYNC_TYPE"))
        for table in ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER"):
            if table in tables:
                rows += _api(con, table, strings)
        if "NVTX_EVENTS" in tables:
            rows += _nvtx(con, strings, _event_types(con, tables), domain)
    except sqlite3.DatabaseError as exc:
        raise QprofError(f"{path.name}: unreadable nsys export ({exc})") from None
    finally:
        con.close()
    if not rows:
        return empty_table()
    return validate(assign_ranges(make_table(rows)))


# tables a trimmed fixture keeps (see tests/gpu/capture_fixtures.py)
PARSED_TABLES = ("StringIds", "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
                 "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS",
                 "ENUM_CUDA_MEMCPY_OPER", "ENUM_CUPTI_SYNC_TYPE", "ENUM_NSYS_EVENT_TYPE")


def _run_window(con: sqlite3.Connection, run_name: str) -> tuple[int, int] | None:
    """Start and end of the qprof NVTX range named run_name (the measured run), if the file has it."""
    row = con.execute(
        "SELECT MIN(n.start), MAX(n.end) FROM NVTX_EVENTS n LEFT JOIN StringIds s ON n.textId = s.id "
        "WHERE n.eventType IN (59, 60, 70) AND n.end IS NOT NULL AND COALESCE(n.text, s.value) = ?",
        (run_name,)).fetchone()
    return (int(row[0]), int(row[1])) if row and row[0] is not None else None


def trim_sqlite(src: str | Path, dst: str | Path, run_name: str | None = "run") -> Path:
    """Copy only the tables the parser reads (a full export carries many more) into a new file.

    With run_name, activity and NVTX ranges outside that range (warm-up, set-up) are dropped too.
    """
    src, dst = Path(src), Path(dst)
    dst.unlink(missing_ok=True)
    con = sqlite3.connect(str(dst))
    try:
        con.execute("ATTACH DATABASE ? AS src", (str(src),))
        have = {r[0] for r in con.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
        for table in PARSED_TABLES:
            if table in have:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
        con.commit()
        con.execute("DETACH DATABASE src")
        window = _run_window(con, run_name) if run_name and {"NVTX_EVENTS", "StringIds"} <= have else None
        if window is not None:
            lo, hi = window
            for table in PARSED_TABLES:
                if table.startswith("CUPTI_ACTIVITY_KIND_") and table in have:
                    con.execute(f"DELETE FROM {table} WHERE start < ? OR start > ?", (lo, hi))
            con.execute("DELETE FROM NVTX_EVENTS WHERE eventType IN (59, 60, 70) AND (start < ? OR start > ?)",
                        (lo, hi))
            con.commit()
        con.execute("VACUUM")
    finally:
        con.close()
    return dst
