"""Where the time went: pure functions over the activity table (no I/O, no device).

Work is the device activity (kernels, copies, memsets) when the timing mode captured it, else
the per-op timings. Inside a window (a phase, or the whole run) the GPU timeline splits into
the work by category plus the gaps between work, and each gap is named:

    sync wait   the host was blocked in a synchronize when the GPU drained: the pipeline bubble a sync costs
    graph gap   between two nodes of one CUDA graph launch: the GPU's own node-to-node latency, no host in it
    launch gap  a short gap (< LAUNCH_GAP_MAX_NS): the GPU waited for the next launch
    idle gap    a longer gap: the host was doing something else (sampling, Python, set-up)

Kernels that overlap (programmatic dependent launch, several streams) make the categories' time
add up to more than the window: `overlap_ns` says by how much.

GPU work is charged to the NVTX range that launched it (see activity.assign_ranges).
"""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np
import pandas as pd

from qprof.analysis.activity import device_rows, work_rows
from qprof.analysis.units import api_name
from qprof.ceilings.read_sizes import read_at

LAUNCH_GAP_MAX_NS = 100_000
GAP_CATEGORIES = ("sync wait", "graph gap", "launch gap", "idle gap")
_LAYER_PREFIX = re.compile(r"^blk\.\d+\.")
_LAYER_RANGE = re.compile(r"^blk\.\d+$")
_TOKEN_RANGE = re.compile(r"^token \d+$")


def _label(family, qtype) -> str:
    family = family if isinstance(family, str) and family else "other"
    return f"{family} {qtype}" if isinstance(qtype, str) and qtype else family


def categories(work: pd.DataFrame, by: str = "category") -> pd.Series:
    """A category per work row: kernels/ops by family+qtype (or family, or qtype), copies by direction."""
    out = []
    for kind, family, qtype, ck in zip(work["kind"], work["family"], work["qtype"], work["copy_kind"]):
        if kind == "memcpy":
            out.append(f"copy {ck or 'unknown'}")
        elif kind == "memset":
            out.append("memset")
        elif by == "family":
            out.append(_label(family, None))
        elif by == "qtype":
            out.append(f"{qtype} kernels" if isinstance(qtype, str) and qtype else "unquantized/other kernels")
        else:
            out.append(_label(family, qtype))
    return pd.Series(out, index=work.index, dtype=object)


def op_type(range_name) -> str:
    """'blk.3.attn_q' -> 'attn_q': one name per op across layers (and '(decode step)' for work between ops)."""
    if not isinstance(range_name, str):
        return "(outside ranges)"
    if _TOKEN_RANGE.match(range_name):
        return "(decode step, outside ops)"
    if _LAYER_RANGE.match(range_name):
        return "(layer, outside ops)"
    if range_name in ("prefill", "decode"):
        return f"({range_name}, outside ops)"
    return _LAYER_PREFIX.sub("", range_name)


# --------------------------------------------------------------------------- windows and gaps


def window(df: pd.DataFrame, phase: str | None = None) -> tuple[int, int] | None:
    """[first start, last end] of the work in `phase` (all work when None)."""
    work = work_rows(df)
    if phase is not None:
        work = work[work["phase"] == phase]
    if work.empty:
        return None
    return int(work["start_ns"].min()), int(work["end_ns"].max())


def _clip(rows: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    rows = rows[(rows["end_ns"] > lo) & (rows["start_ns"] < hi)].copy()
    rows["start_ns"] = rows["start_ns"].clip(lower=lo)
    rows["end_ns"] = rows["end_ns"].clip(upper=hi)
    rows["dur_ns"] = rows["end_ns"] - rows["start_ns"]
    return rows


def _merged(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    order = np.argsort(starts, kind="stable")
    merged: list[tuple[int, int]] = []
    for s, e in zip(starts[order], ends[order]):
        s, e = int(s), int(e)
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def gaps(df: pd.DataFrame, phase: str | None = None, launch_gap_max_ns: int = LAUNCH_GAP_MAX_NS) -> pd.DataFrame:
    """Every interval inside the window where no work ran, named sync wait / launch gap / idle gap."""
    win = window(df, phase)
    cols = ["start_ns", "end_ns", "dur_ns", "gap"]
    if win is None:
        return pd.DataFrame(columns=cols)
    lo, hi = win
    work = _clip(work_rows(df), lo, hi)
    busy = _merged(work["start_ns"].to_numpy(), work["end_ns"].to_numpy())
    # the launch that ran the work ending / starting at each instant: one graph launch runs many nodes
    corr = work["correlation_id"].astype("float64")
    ended = dict(zip(work["end_ns"], corr))
    started = dict(zip(work["start_ns"][::-1], corr[::-1]))
    syncs = df[df["kind"] == "sync"]
    sync_ends = np.sort(syncs["end_ns"].to_numpy(dtype=np.int64))
    sync_starts = syncs["start_ns"].to_numpy(dtype=np.int64)[np.argsort(syncs["end_ns"].to_numpy(), kind="stable")]
    rows = []
    for (_, e0), (s1, _) in pairwise(busy):
        if s1 <= e0:
            continue
        # a sync that began before the GPU went idle and returned inside this gap caused it
        i = np.searchsorted(sync_ends, e0, side="left")
        caused = i < len(sync_ends) and sync_ends[i] <= s1 and sync_starts[i] <= e0
        before, after = ended.get(e0, np.nan), started.get(s1, np.nan)
        if caused:
            name = "sync wait"
        elif before == after:  # NaN never equals NaN: rows without a launch id are never one graph
            name = "graph gap"
        else:
            name = "launch gap" if s1 - e0 < launch_gap_max_ns else "idle gap"
        rows.append((e0, s1, s1 - e0, name))
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- shares


def time_by_category(df: pd.DataFrame, phase: str | None = None, by: str = "category",
                     launch_gap_max_ns: int = LAUNCH_GAP_MAX_NS, gap_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Time and share of the window per category (work by `by`, copies by direction, and the gaps).

    `gap_rows`: the window's gaps when the caller already has them (gaps(df, phase))."""
    cols = ["category", "time_ns", "share", "count"]
    win = window(df, phase)
    if win is None:
        return pd.DataFrame(columns=cols)
    lo, hi = win
    span = max(hi - lo, 1)
    work = _clip(work_rows(df), lo, hi)
    work = work.assign(category=categories(work, by))
    table = work.groupby("category").agg(time_ns=("dur_ns", "sum"), count=("dur_ns", "size")).reset_index()
    g = gaps(df, phase, launch_gap_max_ns) if gap_rows is None else gap_rows
    if not g.empty:
        gt = g.groupby("gap").agg(time_ns=("dur_ns", "sum"), count=("dur_ns", "size")).reset_index()
        table = pd.concat([table, gt.rename(columns={"gap": "category"})], ignore_index=True)
    table["share"] = table["time_ns"] / span
    return table[cols].sort_values("time_ns", ascending=False).reset_index(drop=True)


def overlap_ns(df: pd.DataFrame, phase: str | None = None) -> int:
    """How much the work's summed durations exceed the time it kept the GPU busy (0 when nothing overlaps)."""
    win = window(df, phase)
    if win is None:
        return 0
    work = _clip(work_rows(df), *win)
    busy = sum(e - s for s, e in _merged(work["start_ns"].to_numpy(), work["end_ns"].to_numpy()))
    return max(int(work["dur_ns"].sum()) - busy, 0)


def window_ns(df: pd.DataFrame, phase: str | None = None) -> int:
    win = window(df, phase)
    return 0 if win is None else win[1] - win[0]


def share_of(table: pd.DataFrame, category: str) -> float:
    hit = table[table["category"] == category]
    return float(hit["share"].sum()) if not hit.empty else 0.0


# --------------------------------------------------------------------------- per range / op / token


def _op_meta(df: pd.DataFrame, phase: str | None) -> pd.DataFrame:
    """Family and qtype of each op range name (one op is matmul in prefill and matvec in decode)."""
    ops = df[(df["kind"].isin(["range", "op"])) & ((df["level"] == "op") | (df["kind"] == "op"))]
    if phase is not None:
        ops = ops[ops["phase"] == phase]
    return ops.drop_duplicates("name").set_index("name")[["family", "qtype"]]


def by_range(df: pd.DataFrame, phase: str | None = None, merge_layers: bool = True,
             op_meta: dict[str, tuple[str | None, str | None]] | None = None) -> pd.DataFrame:
    """Work time per launching op range (merged across layers by default: 'attn_q', not 'blk.3.attn_q').

    An op's family and quant type come from its range (or `op_meta`, op name -> (family, qtype), for
    ops whose ranges are not in the table: the nodes of a replayed graph), else from its work."""
    cols = ["op", "family", "qtype", "calls", "time_ns", "mean_ns", "share"]
    work = work_rows(df)
    if phase is not None:
        work = work[work["phase"] == phase]
    if work.empty:
        return pd.DataFrame(columns=cols)
    meta = _op_meta(df, phase)
    if op_meta:
        extra = pd.DataFrame.from_dict(op_meta, orient="index", columns=["family", "qtype"])
        meta = pd.concat([meta, extra[~extra.index.isin(meta.index)]])
    key = work["nvtx_range"].map(op_type) if merge_layers else work["nvtx_range"].fillna("(outside ops)")
    none = pd.Series(None, index=work.index, dtype=object)
    fam = work["nvtx_range"].map(meta["family"]).astype(object) if not meta.empty else none
    qt = work["nvtx_range"].map(meta["qtype"]).astype(object) if not meta.empty else none
    # an op call is one instance of its range: count distinct paths, not kernels
    calls_key = work["nvtx_path"].fillna(work["nvtx_range"]).fillna("")
    frame = pd.DataFrame({"op": key, "family": fam.fillna(work["family"]), "qtype": qt.where(qt.notna(), work["qtype"]),
                          "path": calls_key, "dur_ns": work["dur_ns"]})
    out = frame.groupby("op", dropna=False).agg(
        family=("family", "first"), qtype=("qtype", "first"), calls=("path", "nunique"), time_ns=("dur_ns", "sum"))
    out = out.reset_index()
    out["mean_ns"] = out["time_ns"] / out["calls"].clip(lower=1)
    out["share"] = out["time_ns"] / max(int(out["time_ns"].sum()), 1)
    return out[cols].sort_values("time_ns", ascending=False).reset_index(drop=True)


def per_token(df: pd.DataFrame) -> pd.DataFrame:
    """One row per decode token (and one for the prefill): work time, span, kernels, copies, syncs."""
    cols = ["phase", "token", "busy_ns", "span_ns", "kernels", "copies", "copy_bytes", "syncs"]
    work = work_rows(df)
    work = work[work["phase"].notna()]
    if work.empty:
        return pd.DataFrame(columns=cols)
    key = [work["phase"], work["token"].fillna(-1)]
    g = work.groupby(key)
    out = pd.DataFrame({
        "busy_ns": g["dur_ns"].sum(),
        "span_ns": g["end_ns"].max() - g["start_ns"].min(),
        "kernels": g["kind"].agg(lambda k: int((k.isin(["kernel", "op"])).sum())),
        "copies": g["kind"].agg(lambda k: int((k == "memcpy").sum())),
        "copy_bytes": g.apply(lambda w: int(w.loc[w["kind"] == "memcpy", "bytes"].fillna(0).sum()),
                              include_groups=False),
    })
    syncs = df[(df["kind"] == "sync") & df["phase"].notna()]
    sync_counts = syncs.groupby([syncs["phase"], syncs["token"].fillna(-1)]).size()
    out["syncs"] = sync_counts.reindex(out.index).fillna(0).astype(int)
    out = out.reset_index()
    out.columns = ["phase", "token", *out.columns[2:]]
    out["token"] = out["token"].astype(int)
    order = out["phase"].map({"prefill": 0, "decode": 1}).fillna(2)
    return out.assign(_o=order).sort_values(["_o", "token"]).drop(columns="_o")[cols].reset_index(drop=True)


def copies(df: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """Copies by direction: count, bytes, device time, achieved bandwidth, mean size."""
    cols = ["copy_kind", "count", "bytes", "time_ns", "bandwidth_Bps", "mean_bytes"]
    c = df[df["kind"] == "memcpy"]
    if phase is not None:
        c = c[c["phase"] == phase]
    if c.empty:
        return pd.DataFrame(columns=cols)
    c = c.assign(copy_kind=c["copy_kind"].fillna("unknown"), nbytes=c["bytes"].fillna(0).astype("int64"))
    out = c.groupby("copy_kind").agg(count=("nbytes", "size"), bytes=("nbytes", "sum"), time_ns=("dur_ns", "sum"))
    out = out.reset_index()
    out["bandwidth_Bps"] = out["bytes"] / (out["time_ns"].clip(lower=1) * 1e-9)
    out["mean_bytes"] = out["bytes"] / out["count"]
    return out[cols].sort_values("time_ns", ascending=False).reset_index(drop=True)


def top_kernels(df: pd.DataFrame, n: int = 10, peak_Bps: float | None = None,
                phase: str | None = None, read_by_size: dict[int, float] | None = None) -> pd.DataFrame:
    """Kernels (or timed ops) by total time, with achieved bytes/s, and its share of peak_Bps (the card's measured
    read bandwidth) where both are known. read_by_size ({bytes: GB/s}, qprof.ceilings.read_sizes): also the
    share of what a pure read of the kernel's bytes per launch reaches on this card (pct_of_size_read)."""
    cols = ["name", "family", "qtype", "count", "time_ns", "mean_ns", "bytes", "achieved_Bps", "pct_of_peak",
            "launch_bytes", "size_read_Bps", "pct_of_size_read"]
    dev = device_rows(df)
    rows = dev[dev["kind"] == "kernel"] if not dev.empty else df[df["kind"] == "op"]
    if phase is not None:
        rows = rows[rows["phase"] == phase]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    if dev.empty:  # timed ops: one line per op across layers, like the kernels they stand for
        rows = rows.assign(name=rows["name"].map(op_type))
    known = rows["bytes"].notna()
    rows = rows.assign(kbytes=rows["bytes"].fillna(0).astype("int64"),
                       kdur=rows["dur_ns"].where(known, 0), kknown=known.astype("int64"))
    out = rows.groupby("name").agg(family=("family", "first"), qtype=("qtype", "first"), count=("dur_ns", "size"),
                                   time_ns=("dur_ns", "sum"), bytes=("kbytes", "sum"), timed=("kdur", "sum"),
                                   known=("kknown", "sum"))
    out = out.reset_index()
    out["mean_ns"] = out["time_ns"] / out["count"]
    out["achieved_Bps"] = np.where(out["bytes"] > 0, out["bytes"] / (out["timed"].clip(lower=1) * 1e-9), np.nan)
    out["pct_of_peak"] = 100.0 * out["achieved_Bps"] / peak_Bps if peak_Bps else np.nan
    out["launch_bytes"] = np.where(out["bytes"] > 0, out["bytes"] / out["known"].clip(lower=1), np.nan)
    size_read = [read_at(read_by_size or {}, b) for b in out["launch_bytes"]]
    out["size_read_Bps"] = [g * 1e9 if g else np.nan for g in size_read]
    out["pct_of_size_read"] = 100.0 * out["achieved_Bps"] / out["size_read_Bps"]
    out["bytes"] = out["bytes"].where(out["bytes"] > 0)
    return out[cols].sort_values("time_ns", ascending=False).head(n).reset_index(drop=True)


def syncs(df: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """Sync points grouped by the op range that issued them (by the API call, where no range did): count and host time."""
    cols = ["op", "count", "time_ns"]
    s = df[df["kind"] == "sync"]
    if phase is not None:
        s = s[s["phase"] == phase]
    if s.empty:
        return pd.DataFrame(columns=cols)
    op = s["nvtx_range"].map(op_type).where(s["nvtx_range"].notna(), s["name"].map(api_name))
    out = s.assign(op=op).groupby("op").agg(count=("dur_ns", "size"), time_ns=("dur_ns", "sum"))
    return out.reset_index()[cols].sort_values("count", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------- agreement between modes


def per_op_totals(df: pd.DataFrame, phase: str | None = None) -> pd.Series:
    """Total work time per op type (ms), the quantity the timing modes are compared on."""
    t = by_range(df, phase)
    if t.empty:
        return pd.Series(dtype=float)
    return t.set_index("op")["time_ns"] / 1e6


def agreement(tables: dict[str, pd.DataFrame], phase: str | None = None, reference: str | None = None) -> pd.DataFrame:
    """Per-op totals (ms) side by side for several timing modes, with each mode's deviation from the reference."""
    totals = {mode: per_op_totals(t, phase) for mode, t in tables.items()}
    frame = pd.DataFrame(totals).fillna(0.0)
    if frame.empty:
        return frame
    reference = reference or next(iter(tables))
    ref = frame[reference]
    for mode in tables:
        if mode != reference:
            frame[f"{mode} vs {reference} %"] = 100.0 * (frame[mode] - ref) / ref.where(ref > 0)
    frame = frame.sort_values(reference, ascending=False)
    total = pd.DataFrame({mode: [frame[mode].sum()] for mode in tables}, index=["TOTAL"])
    for mode in tables:
        if mode != reference:
            total[f"{mode} vs {reference} %"] = 100.0 * (total[mode] - total[reference]) / total[reference]
    return pd.concat([frame, total])
