"""Diagnosis rules for any program's decode steps, from the trace alone (no NVTX op ranges needed).

Each finding names the cause, how often it happens per decode step, and its cost as a share of
the step. A host call costs the GPU only while the GPU has nothing to run, so the cost of a copy
call, a sync or a launch is the GPU-idle time during which the host was inside it (its overlap
with the gaps of the decode window); a sync that waits while the GPU works is the host waiting
for the step, not a cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qprof.analysis.attribution import gaps, time_by_category, window_ns
from qprof.analysis.findings import SYNCS_PER_STEP_MAX, TOKEN_INPUT_MAX_BYTES, Finding
from qprof.analysis.units import api_name, count, plural, size

HOST_BOUND_SHARE = 0.5  # the GPU idle (launch and idle gaps) for at least half of decode
BOUNDARY_IDLE_SHARE = 0.05  # GPU idle between steps worth a line: at least this share of a step
READ_SYNC_SLACK_NS = 50_000  # a sync entered this soon after a copy finished still waits for it
_API_SHOWN = 3


def _steps(df: pd.DataFrame) -> int:
    dec = df[(df["phase"] == "decode") & df["token"].notna()]
    return int(dec["token"].nunique())


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def _us(ns: float) -> str:
    return f"{ns / 1e3:.1f} µs"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _sizes(nbytes: pd.Series) -> str:
    vals = nbytes.dropna().astype("int64")
    if vals.empty:
        return "size unknown"
    lo, hi = int(vals.min()), int(vals.max())
    return f"{size(lo)} each" if lo == hi else f"{size(lo)}–{size(hi)}"


def host_memory(copy_name: str) -> str | None:
    """'pageable' or 'pinned' from a copy's name ("Memcpy HtoD (Pageable -> Device)"), else None."""
    low = str(copy_name).lower()
    for kind in ("pageable", "pinned"):
        if f"({kind}" in low or f"-> {kind}" in low:
            return kind
    return None


class Idle:
    """The GPU's idle intervals in the decode window, and how much of any host interval falls in them."""

    def __init__(self, df: pd.DataFrame) -> None:
        g = gaps(df, "decode")
        self.gaps = g
        self.starts = g["start_ns"].to_numpy(dtype=np.int64) if not g.empty else np.zeros(0, np.int64)
        self.ends = g["end_ns"].to_numpy(dtype=np.int64) if not g.empty else np.zeros(0, np.int64)
        self._before = np.concatenate([[0], np.cumsum(self.ends - self.starts)])

    def _covered(self, t: np.ndarray) -> np.ndarray:
        """Idle ns up to each time in t."""
        i = np.searchsorted(self.starts, t, side="right") - 1
        j = np.maximum(i, 0)
        part = np.minimum(t, self.ends[j]) - self.starts[j]
        return np.where(i >= 0, self._before[j] + part, 0)

    def overlap(self, rows: pd.DataFrame) -> np.ndarray:
        """Per row, ns of its [start, end] during which the GPU was idle."""
        if rows.empty or not len(self.starts):
            return np.zeros(len(rows), dtype=np.int64)
        s = rows["start_ns"].to_numpy(dtype=np.int64)
        e = rows["end_ns"].to_numpy(dtype=np.int64)
        return self._covered(e) - self._covered(s)


def _context(df: pd.DataFrame) -> tuple[int, int, float] | None:
    steps, decode_ns = _steps(df), window_ns(df, "decode")
    if steps == 0 or decode_ns == 0:
        return None
    return steps, decode_ns, decode_ns / steps


def _api_of(df: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    api = df[(df["kind"] == "api") & df["correlation_id"].isin(rows["correlation_id"].dropna())]
    return api.drop_duplicates("correlation_id")


def _syncs_after(df: pd.DataFrame, copies: pd.DataFrame) -> pd.DataFrame:
    """Host syncs that wait for one of `copies`: the first sync the host entered after issuing the copy, if it
    began before the copy finished or within READ_SYNC_SLACK_NS after."""
    syncs = df[(df["kind"] == "sync") & (df["phase"] == "decode")].sort_values("start_ns")
    if syncs.empty or copies.empty:
        return syncs.iloc[0:0]
    issued = copies["correlation_id"].map(_api_of(df, copies).set_index("correlation_id")["start_ns"])
    issued = issued.fillna(copies["start_ns"]).to_numpy(dtype=np.int64)
    starts = syncs["start_ns"].to_numpy(dtype=np.int64)
    first = np.searchsorted(starts, issued, side="left")
    ok = first < len(starts)
    late = copies["end_ns"].to_numpy(dtype=np.int64) + READ_SYNC_SLACK_NS
    ok &= starts[np.minimum(first, len(starts) - 1)] <= late
    return syncs.iloc[np.unique(first[ok])]


def readbacks(df: pd.DataFrame) -> list[Finding]:
    """Device→host reads every decode step, the syncs they force, and the GPU idle those cost."""
    ctx = _context(df)
    if ctx is None:
        return []
    steps, decode_ns, step_ns = ctx
    reads = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "DtoH") & (df["phase"] == "decode")]
    if reads.empty:
        return []
    per_step = len(reads) / steps
    syncs = _syncs_after(df, reads)
    idle = Idle(df)
    cost_ns = int(idle.overlap(_api_of(df, reads)).sum() + idle.overlap(syncs).sum())
    wait_ns = int(syncs["dur_ns"].sum())
    memory = {host_memory(n) for n in reads["name"]} - {None}
    into = f" into {'/'.join(sorted(memory))} memory" if memory else ""
    calls = ", ".join(f"{api_name(n)} ×{count(c / steps)}"
                      for n, c in syncs["name"].value_counts().head(_API_SHOWN).items())
    waits = "waits" if len(syncs) == steps else "wait"
    forced = (f"{plural(len(syncs) / steps, 'host sync')} per step {waits} for {'it' if per_step == 1 else 'them'} "
              f"({calls}, {_us(wait_ns / steps)} per step)") if len(syncs) else \
        "no host sync waits for them"
    msg = (f"{plural(per_step, 'device→host read')} per decode step ({_sizes(reads['bytes'])}{into}): {forced}; "
           f"the GPU sat idle {_us(cost_ns / steps)} per step while the host was in these reads and waits, "
           f"{_pct(cost_ns / decode_ns)} of the {_ms(step_ns)} mean step")
    severity = "fault" if per_step > 1 else "advice"
    if per_step > 1:
        msg += "; keep what the loop checks on the device and read back once per step"
    return [Finding("readbacks_per_step", severity, msg,
                    {"reads": len(reads), "per_step": per_step, "syncs": len(syncs), "host_wait_ns": wait_ns,
                     "cost_ns": cost_ns, "share_of_step": cost_ns / decode_ns, "step_ns": step_ns})]


def _beside_uploads(df: pd.DataFrame, syncs: pd.DataFrame, uploads: pd.DataFrame, within_ns: int = 20_000) -> int:
    """How many syncs sit right before or after a host→device copy call (within `within_ns`)."""
    calls = _api_of(df, uploads)
    if calls.empty or syncs.empty:
        return 0
    starts = np.sort(calls["start_ns"].to_numpy(dtype=np.int64))
    ends = np.sort(calls["end_ns"].to_numpy(dtype=np.int64))
    s0 = syncs["start_ns"].to_numpy(dtype=np.int64)
    s1 = syncs["end_ns"].to_numpy(dtype=np.int64)
    after = np.searchsorted(ends, s0, side="right") - 1
    near_after = (after >= 0) & (s0 - ends[np.maximum(after, 0)] <= within_ns)
    before = np.searchsorted(starts, s1, side="left")
    near_before = (before < len(starts)) & (starts[np.minimum(before, len(starts) - 1)] - s1 <= within_ns)
    return int((near_after | near_before).sum())


def host_syncs(df: pd.DataFrame) -> list[Finding]:
    """Host synchronizations per decode step, what they sit beside, and the GPU idle they cost."""
    ctx = _context(df)
    if ctx is None:
        return []
    steps, decode_ns, step_ns = ctx
    syncs = df[(df["kind"] == "sync") & (df["phase"] == "decode")]
    per_step = len(syncs) / steps
    if per_step <= SYNCS_PER_STEP_MAX:
        return []
    dec = df[df["phase"] == "decode"]
    uploads = dec[(dec["kind"] == "memcpy") & (dec["copy_kind"] == "HtoD")]
    after_reads = len(_syncs_after(df, dec[(dec["kind"] == "memcpy") & (dec["copy_kind"] == "DtoH")]))
    beside = _beside_uploads(df, syncs, uploads)
    cost_ns = int(Idle(df).overlap(syncs).sum())
    calls = ", ".join(f"{api_name(n)} ×{count(c / steps)}"
                      for n, c in syncs["name"].value_counts().head(_API_SHOWN).items())
    where = [f"{count(after_reads / steps)} wait for a device→host read"] if after_reads else []
    if beside:
        where.append(f"{count(beside / steps)} sit beside host→device copies")
    msg = (f"{count(per_step)} host syncs per decode step ({calls})" + (f": {', '.join(where)}" if where else "")
           + f"; the GPU sat idle {_us(cost_ns / steps)} per step with the host in them, {_pct(cost_ns / decode_ns)} "
           f"of the {_ms(step_ns)} mean step; a stream-ordered copy needs no sync")
    return [Finding("syncs_per_step", "fault", msg,
                    {"syncs": len(syncs), "per_step": per_step, "after_reads": after_reads, "beside_uploads": beside,
                     "cost_ns": cost_ns, "share_of_step": cost_ns / decode_ns, "step_ns": step_ns})]


def uploads(df: pd.DataFrame) -> list[Finding]:
    """Host→device copies every decode step beyond one small token input: sizes, host memory, blocking, cost."""
    ctx = _context(df)
    if ctx is None:
        return []
    steps, decode_ns, step_ns = ctx
    up = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "HtoD") & (df["phase"] == "decode")]
    per_step = len(up) / steps
    per_step_bytes = float(up["bytes"].fillna(0).sum()) / steps
    if per_step < 0.9 or (per_step <= 1 and per_step_bytes <= TOKEN_INPUT_MAX_BYTES):
        return []
    calls = _api_of(df, up)
    ends = up.set_index("correlation_id")["end_ns"]
    blocked = int((calls["end_ns"].to_numpy() >= calls["correlation_id"].map(ends).to_numpy()).sum()) if len(calls) else 0
    idle = Idle(df)
    syncs = _syncs_after(df, up)
    cost_ns = int(idle.overlap(calls).sum() + idle.overlap(syncs).sum())
    memory = sorted({host_memory(n) for n in up["name"]} - {None})
    mem = f"from {'/'.join(memory)} memory" if memory else "host memory kind not recorded"
    block = (f"the host blocked in {count(blocked / steps)} of them per step until the copy finished" if blocked
             else "the host did not block in the copy calls")
    msg = (f"{plural(per_step, 'host→device copy', 'host→device copies')} per decode step ({_sizes(up['bytes'])}, "
           f"{size(per_step_bytes)} per step, {mem}; {block}"
           + (f"; {plural(len(syncs) / steps, 'sync')} per step wait for them" if len(syncs) else "")
           + f"): the GPU sat idle {_us(cost_ns / steps)} per step with the host in these copies and their syncs, "
           f"{_pct(cost_ns / decode_ns)} of the {_ms(step_ns)} mean step; gather the step's inputs into one pinned "
           "buffer and one asynchronous copy")
    return [Finding("uploads_per_step", "fault" if per_step > 1 else "advice", msg,
                    {"copies": len(up), "per_step": per_step, "bytes_per_step": per_step_bytes, "blocked": blocked,
                     "syncs": len(syncs), "cost_ns": cost_ns, "share_of_step": cost_ns / decode_ns, "step_ns": step_ns})]


def step_boundary_idle(df: pd.DataFrame) -> list[Finding]:
    """GPU idle between one decode step's last work and the next one's first, and what the host did meanwhile."""
    ctx = _context(df)
    if ctx is None:
        return []
    steps, _decode_ns, step_ns = ctx
    dev = df[df["kind"].isin(["kernel", "memcpy", "memset"]) & (df["phase"] == "decode")]
    by_step = dev.groupby("token").agg(first=("start_ns", "min"), last=("end_ns", "max")).sort_index()
    if len(by_step) < 2:
        return []
    lo, hi = by_step["last"].to_numpy()[:-1], by_step["first"].to_numpy()[1:]
    # a step's own first work (its input copies) can start before the next kernel: the boundary ends at the kernel
    k = dev[dev["kind"] == "kernel"].groupby("token")["start_ns"].min().reindex(by_step.index).to_numpy()[1:]
    hi = np.where(np.isnan(k.astype(float)), hi, k)
    idle_ns = np.clip(hi - lo, 0, None)
    total = int(idle_ns.sum())
    if total < BOUNDARY_IDLE_SHARE * step_ns * (steps - 1):
        return []
    windows = pd.DataFrame({"start_ns": lo.astype(np.int64), "end_ns": (lo + idle_ns).astype(np.int64)})
    api = df[(df["kind"] == "api") & (df["phase"] == "decode")]
    spent = []
    if not api.empty:
        starts = api["start_ns"].to_numpy(dtype=np.int64)
        ends = api["end_ns"].to_numpy(dtype=np.int64)
        over = np.zeros(len(api), dtype=np.int64)
        for s, e in zip(windows["start_ns"], windows["end_ns"]):
            over += np.clip(np.minimum(ends, e) - np.maximum(starts, s), 0, None)
        by_call = pd.DataFrame({"call": api["name"].map(api_name).to_numpy(), "ns": over, "hit": over > 0})
        agg = by_call.groupby("call").agg(ns=("ns", "sum"), n=("hit", "sum")).sort_values("ns", ascending=False)
        for call, row in agg[agg["ns"] > 0].head(_API_SHOWN).iterrows():
            spent.append(f"{call} {_us(row['ns'] / (steps - 1))} (×{count(row['n'] / (steps - 1))})")
        outside = total - int(agg["ns"].sum())
    else:
        outside = total
    host = ", ".join(spent) + (", " if spent else "") + f"{_us(max(outside, 0) / (steps - 1))} outside CUDA calls"
    mean = total / (steps - 1)
    msg = (f"the GPU is idle {_us(mean)} at every decode step boundary ({_pct(mean / step_ns)} of the "
           f"{_ms(step_ns)} mean step; {_ms(total)} over {steps - 1} boundaries); per boundary the host spent it in: {host}; "
           "queue the next step before waiting for this one's token (greedy sampling on the device: "
           "--decode-loop in-flight in qprof bench and profile)")
    return [Finding("step_boundary_idle", "advice", msg,
                    {"boundaries": steps - 1, "idle_ns": total, "mean_ns": mean, "share_of_step": mean / step_ns,
                     "step_ns": step_ns, "host": spent})]


def host_bound(df: pd.DataFrame) -> list[Finding]:
    """Decode whose GPU waits for the host most of the time: launch gaps and idle gaps together."""
    ctx = _context(df)
    if ctx is None:
        return []
    steps, decode_ns, step_ns = ctx
    table = time_by_category(df, "decode").set_index("category")
    launch = float(table["time_ns"].get("launch gap", 0))
    idle = float(table["time_ns"].get("idle gap", 0))
    if (launch + idle) / decode_ns < HOST_BOUND_SHARE:
        return []
    dev = df[df["kind"].isin(["kernel", "memcpy", "memset"]) & (df["phase"] == "decode")]
    kernels = int((dev["kind"] == "kernel").sum()) / steps
    msg = (f"decode is host-bound: the GPU waited for the host {_pct((launch + idle) / decode_ns)} of decode time "
           f"(launch gaps {_pct(launch / decode_ns)}, idle gaps over 100 µs {_pct(idle / decode_ns)}); a step is "
           f"{_ms(step_ns)} for {count(kernels)} kernel launches; capture the step as a CUDA graph or fuse kernels")
    return [Finding("host_bound", "advice", msg,
                    {"launch_gap_share": launch / decode_ns, "idle_gap_share": idle / decode_ns,
                     "kernels_per_step": kernels, "step_ns": step_ns})]


def untraced_graphs(df: pd.DataFrame) -> list[Finding]:
    """CUDA graph launches whose kernels are not in the trace (nsys without node-level graph tracing)."""
    launches = df[(df["kind"] == "api") & df["name"].astype(str).str.contains("GraphLaunch")]
    if launches.empty:
        return []
    dev_corr = set(df.loc[df["kind"].isin(["kernel", "memcpy", "memset"]), "correlation_id"].dropna())
    empty = launches[~launches["correlation_id"].isin(dev_corr)]
    if empty.empty:
        return []
    msg = (f"{len(empty)} of {len(launches)} CUDA graph launches left no kernels in the trace: their work is "
           "invisible here (it reads as idle time); capture with `nsys profile --cuda-graph-trace=node` to see it")
    return [Finding("graph_not_traced", "advice", msg, {"launches": len(launches), "untraced": len(empty)})]


RULES = (readbacks, host_syncs, uploads, step_boundary_idle, host_bound, untraced_graphs)
