"""The one normalized activity table (pandas) that every timing mode produces, and its helpers.

One row is one thing that took time:

    kind      kernel | memcpy | memset | sync | api     what the device or the CUDA API did
              op                                         one op timed as a whole (events / blocking modes)
              range                                      one NVTX range (run/phase/token/layer/op)
              cpu_op                                     a torch CPU op seen by the torch profiler
    name      kernel or API name, copy label, range message
    family    op family ("matvec", "rmsnorm", "cublas_gemm", "torch", "copy", ...)
    qtype     quant type ("Q4_K") or float type ("F32") when known
    start_ns, end_ns, dur_ns                 one clock per table (nsys: session clock; others: run-relative)
    stream    CUDA stream of device rows
    bytes     bytes copied / set; for matvec/dequant kernels the weight bytes they read
    copy_kind HtoD | DtoH | DtoD | HtoH (memcpy rows)
    correlation_id                           links an api row to the device row it launched
    nvtx_range, nvtx_path                    innermost qprof range and the whole path ("run/decode/token 3/blk.2/blk.2.attn_q")
                                             device rows get the range that LAUNCHED them
    token, phase, layer                      parsed from the path
    level     range rows: run|phase|token|layer|op
    tid       host thread of api / range rows
    grid, block                              kernel launch shape "x,y,z" where the source records it
    graph_node                               the CUDA graph node a device row ran as (nsys node tracing);
                                             every node of one graph launch shares the launch's correlation id
    engine                                   who wrote a kernel (llama.cpp, cuBLAS, PyTorch, ...) where the family
                                             table knows its name

Kernel families come from qprof.analysis.families (a table of name patterns per engine).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from qprof.errors import QprofError

KINDS = ("kernel", "memcpy", "memset", "sync", "api", "op", "range", "cpu_op")
DEVICE_KINDS = ("kernel", "memcpy", "memset")
COPY_KINDS = ("HtoD", "DtoH", "DtoD", "HtoH")
LEVELS = ("run", "phase", "token", "layer", "op")

# column -> pandas dtype; nullable integer types so "unknown" is NA, not 0
SCHEMA: dict[str, str] = {
    "kind": "object",
    "name": "object",
    "family": "object",
    "qtype": "object",
    "start_ns": "int64",
    "end_ns": "int64",
    "dur_ns": "int64",
    "stream": "Int64",
    "bytes": "Int64",
    "copy_kind": "object",
    "correlation_id": "Int64",
    "nvtx_range": "object",
    "nvtx_path": "object",
    "token": "Int64",
    "phase": "object",
    "layer": "Int64",
    "level": "object",
    "tid": "Int64",
    "grid": "object",
    "block": "object",
    "graph_node": "Int64",
    "engine": "object",
}
COLUMNS: tuple[str, ...] = tuple(SCHEMA)
REQUIRED = ("kind", "name", "start_ns", "end_ns")

def copy_kind_from_label(label: str) -> str | None:
    """HtoD/DtoH/DtoD/HtoH from 'Memcpy HtoD (Pageable -> Device)', 'CUDA_MEMCPY_OPER_HTOD', 'Host-to-Device'."""
    up = label.upper().replace("-", "").replace(" ", "").replace("_", "")
    table = (("HTOD", "HtoD"), ("DTOH", "DtoH"), ("DTOD", "DtoD"), ("HTOH", "HtoH"),
             ("HOSTTODEVICE", "HtoD"), ("DEVICETOHOST", "DtoH"), ("DEVICETODEVICE", "DtoD"),
             ("HOSTTOHOST", "HtoH"), ("PTOP", "DtoD"), ("PEERTOPEER", "DtoD"))
    for needle, kind in table:
        if needle in up:
            return kind
    return None


# --------------------------------------------------------------------------- building and checking


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in SCHEMA.items()})


def make_table(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """A table in the schema from dict rows (or a frame): missing columns become NA, dur_ns = end - start."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        return empty_table()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise QprofError(f"activity rows lack required column(s): {', '.join(missing)}")
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df["dur_ns"] = df["end_ns"].astype("int64") - df["start_ns"].astype("int64")
    for col, dtype in SCHEMA.items():
        if dtype == "object":
            df[col] = df[col].astype(object).where(df[col].notna(), None)
        else:
            df[col] = pd.to_numeric(df[col], errors="raise").astype(dtype)
    return df[list(COLUMNS)].sort_values(["start_ns", "end_ns"], kind="stable").reset_index(drop=True)


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Raise QprofError naming the first way `df` breaks the schema; return it unchanged otherwise."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise QprofError(f"activity table lacks column(s): {', '.join(missing)}")
    bad_kind = sorted(set(df["kind"].dropna()) - set(KINDS))
    if bad_kind or df["kind"].isna().any():
        raise QprofError(f"activity table has unknown kind(s) {bad_kind or ['<missing>']}; expected {', '.join(KINDS)}")
    if (df["end_ns"] < df["start_ns"]).any():
        row = df[df["end_ns"] < df["start_ns"]].iloc[0]
        raise QprofError(f"activity row {row['name']!r} ends before it starts ({row['start_ns']} > {row['end_ns']})")
    if ((df["end_ns"] - df["start_ns"]) != df["dur_ns"]).any():
        raise QprofError("activity table: dur_ns differs from end_ns - start_ns")
    copies = df[df["kind"] == "memcpy"]
    bad_copy = sorted(set(copies["copy_kind"].dropna()) - set(COPY_KINDS))
    if bad_copy:
        raise QprofError(f"activity table has unknown copy kind(s) {bad_copy}; expected {', '.join(COPY_KINDS)}")
    levels = set(df.loc[df["kind"] == "range", "level"].dropna()) - set(LEVELS)
    if levels:
        raise QprofError(f"activity table has unknown range level(s) {sorted(levels)}")
    return df


# --------------------------------------------------------------------------- NVTX context

_TOKEN = re.compile(r"^token (\d+)$")
_LAYER = re.compile(r"^blk\.(\d+)$")
_PHASES = ("prefill", "decode")


def level_of(message: str, category: str | None) -> str:
    """Which LEVEL an NVTX range is, from its category (the Annotator sets it) or else its message."""
    if category in ("run", "phase", "token", "layer"):
        return category
    if category:
        return "op"
    if message in _PHASES:
        return "phase"
    if _TOKEN.match(message):
        return "token"
    if _LAYER.match(message):
        return "layer"
    if message in ("run", "warmup"):
        return "run"
    return "op"


def context_of(stack: Sequence[str]) -> dict:
    """nvtx_range, nvtx_path, token, phase and layer for a stack of range messages, outermost first."""
    ctx: dict = {"nvtx_range": stack[-1] if stack else None, "nvtx_path": "/".join(stack) if stack else None,
                 "token": None, "phase": None, "layer": None}
    for msg in stack:
        if msg in _PHASES:
            ctx["phase"] = msg
        elif (m := _TOKEN.match(msg)) is not None:
            ctx["token"] = int(m.group(1))
        elif (m := _LAYER.match(msg)) is not None:
            ctx["layer"] = int(m.group(1))
    return ctx


def op_context(stack: Sequence[str], family: str | None, qtype: str | None) -> dict:
    """context_of plus the family/qtype of the innermost op range (for rows timed per op)."""
    ctx = context_of(stack)
    ctx["family"], ctx["qtype"] = family, qtype
    return ctx


def family_of_category(category: str | None) -> tuple[str | None, str | None]:
    """'matvec/Q4_K' -> ('matvec', 'Q4_K'); 'rmsnorm' -> ('rmsnorm', None)."""
    if not category or category in ("run", "phase", "token", "layer"):
        return None, None
    family, _, qtype = category.partition("/")
    return family, (qtype or None)


_CTX_COLS = ["nvtx_range", "nvtx_path", "token", "phase", "layer"]


def _sweep(ranges: pd.DataFrame, points: pd.DataFrame, names: pd.Series) -> dict[int, dict]:
    """Context of each point (by its start) and each range, over one thread's nested ranges."""
    found: dict[int, dict] = {}
    # (time, order, tie, what, index): ends before starts at one instant, outer starts before
    # inner ones, and a host call at a range's first nanosecond falls inside it
    events: list[tuple[int, int, int, int, int]] = []
    for idx, s, e in zip(ranges.index, ranges["start_ns"], ranges["end_ns"]):
        events.append((int(s), 1, -int(e), 1, idx))
        events.append((int(e), 0, 0, 0, idx))
    for idx, s in zip(points.index, points["start_ns"]):
        events.append((int(s), 2, 0, 2, idx))
    events.sort()
    stack: list[int] = []  # NVTX push/pop ranges nest, so a stack follows the open ones
    for _, _, _, what, idx in events:
        if what == 1:
            stack.append(idx)
            found[idx] = context_of([names[i] for i in stack])
        elif what == 0:
            if idx in stack:
                stack.remove(idx)
        elif stack:
            found[idx] = found[stack[-1]]
    return found


def _set_context(df: pd.DataFrame, found: dict[int, dict]) -> None:
    if found:
        ctx = pd.DataFrame.from_dict(found, orient="index")
        for col in _CTX_COLS:
            df.loc[ctx.index, col] = ctx[col].to_numpy()


def assign_ranges(df: pd.DataFrame) -> pd.DataFrame:
    """Give every row the qprof NVTX context that was open when it was issued on the host.

    Range rows must carry `tid`. API and cpu_op rows get the innermost range open on their thread
    at their start; device rows (kernel/memcpy/memset/sync) get the context of the API call with
    the same correlation id, so GPU work is charged to the range that LAUNCHED it, not the one
    that happened to be open when it ran. A sync whose API call was not recorded (Kineto keeps
    few driver calls) is placed by its host-side start on the one thread that holds qprof ranges.
    """
    df = df.copy()
    ranges = df[df["kind"] == "range"]
    # host-side rows: API calls, CPU ops, and sync waits that carry their own thread instead of a launch id
    hostish = df["kind"].isin(["api", "cpu_op"]) | ((df["kind"] == "sync") & df["correlation_id"].isna())
    host = df[hostish & df["tid"].notna()]
    names = df["name"].astype(str)
    for tid, rr in ranges.groupby("tid"):
        _set_context(df, _sweep(rr, host[host["tid"] == tid], names))
    # device rows inherit from their launching API row
    api = df[(df["kind"] == "api") & df["correlation_id"].notna() & df["nvtx_path"].notna()]
    by_corr = api.drop_duplicates("correlation_id").set_index("correlation_id")[_CTX_COLS]
    dev = df["kind"].isin(["kernel", "memcpy", "memset", "sync"]) & df["correlation_id"].notna()
    if dev.any() and not by_corr.empty:
        joined = by_corr.reindex(df.loc[dev, "correlation_id"].astype("int64").to_numpy())
        for col in _CTX_COLS:
            vals = joined[col].to_numpy()
            have = pd.notna(vals)
            target = df.index[dev][have]
            df.loc[target, col] = vals[have]
    orphans = df[(df["kind"] == "sync") & df["nvtx_path"].isna()]
    threads = ranges["tid"].dropna().unique()
    if not orphans.empty and len(threads) == 1:
        _set_context(df, _sweep(ranges, orphans, names))
    return make_table(df)


def restrict_to_run(df: pd.DataFrame, run_name: str = "run") -> pd.DataFrame:
    """Keep only rows issued inside the NVTX range `run_name` (drops warm-up and set-up work)."""
    runs = df[(df["kind"] == "range") & (df["level"] == "run") & (df["name"] == run_name)]
    if runs.empty:
        return df
    keep = df["nvtx_path"].fillna("").str.startswith(run_name)
    # device rows that could not be joined to a launch keep their place if they ran inside the run window
    lo, hi = int(runs["start_ns"].min()), int(runs["end_ns"].max())
    loose = df["nvtx_path"].isna() & (df["start_ns"] >= lo) & (df["start_ns"] <= hi)
    return df[keep | loose].reset_index(drop=True)


def device_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["kind"].isin(DEVICE_KINDS)]


def work_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that carry measured work: device activity where captured, else per-op timings."""
    dev = device_rows(df)
    if not dev.empty:
        return dev
    return df[df["kind"] == "op"]


def fill_kernel_bytes(df: pd.DataFrame, op_bytes: dict[str, int],
                      families: tuple[str, ...] = ("matvec", "matmul", "dequant", "get_rows")) -> pd.DataFrame:
    """Set `bytes` on weight-reading kernels (or op rows) from the bytes their op reads.

    `op_bytes` maps an op range name (blk.3.attn_q) to the weight bytes it reads; the join goes
    through each row's innermost NVTX range, so it works for any timing mode that has ranges.
    """
    if not op_bytes:
        return df
    df = df.copy()
    sel = df["kind"].isin(["kernel", "op"]) & df["family"].isin(families) & df["bytes"].isna()
    vals = df.loc[sel, "nvtx_range"].map(op_bytes)
    have = vals.notna()
    df.loc[vals.index[have], "bytes"] = vals[have].astype("int64").to_numpy()
    df["bytes"] = df["bytes"].astype("Int64")
    return df


def concat(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    tables = [t for t in tables if not t.empty]
    if not tables:
        return empty_table()
    return make_table(pd.concat(tables, ignore_index=True))


def to_records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe rows (NA -> None, numpy ints -> int)."""
    out = []
    for row in df.to_dict(orient="records"):
        out.append({k: (None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA
                        else int(v) if isinstance(v, (np.integer,)) else v) for k, v in row.items()})
    return out


def from_records(rows: list[dict]) -> pd.DataFrame:
    return validate(make_table(rows))
