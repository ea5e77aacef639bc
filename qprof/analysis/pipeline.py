"""`qprof analyze`: trace -> activity table -> phases and steps -> attribution -> diagnosis -> report, for any program.

Nothing here knows qprof's runtime: the same functions read a llama.cpp, transformers or plain
torch trace as they read qprof's own. A trace with qprof's NVTX ranges keeps its phases and its
measured "run" range; any other gets its phases and steps from the trace's rhythm
(qprof.analysis.steps).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qprof.analysis import attribution as attr
from qprof.analysis.activity import restrict_to_run, validate
from qprof.analysis.report import summarize_table
from qprof.analysis.sources import Trace, load
from qprof.analysis.step_rules import host_memory
from qprof.analysis.steps import PHASE_ORDER, find_steps


def prepare(trace: Trace) -> tuple[pd.DataFrame, dict]:
    """The table restricted to a measured run where the trace marks one, with phases and steps; and how."""
    table = restrict_to_run(trace.table)
    table, steps = find_steps(table)
    return validate(table), steps.as_dict()


def _phase_facts(t: pd.DataFrame, steps: dict) -> list[dict]:
    out = []
    for phase in PHASE_ORDER:
        rows = t[t["phase"] == phase]
        dev = rows[rows["kind"].isin(["kernel", "memcpy", "memset"])]
        if dev.empty:
            continue
        htod = dev[(dev["kind"] == "memcpy") & (dev["copy_kind"] == "HtoD")]
        per = attr.per_token(t)
        per = per[per["phase"] == phase]
        fact = {"phase": phase, "window_ms": attr.window_ns(t, phase) / 1e6, "count": steps["counts"].get(phase, 1),
                "kernels": int((dev["kind"] == "kernel").sum()), "htod_copies": len(htod),
                "htod_bytes": int(htod["bytes"].fillna(0).sum()), "htod_ms": float(htod["dur_ns"].sum()) / 1e6,
                "htod_memory": {str(m): int(b) for m, b in htod.groupby(htod["name"].map(host_memory))["bytes"].sum()
                                .sort_values(ascending=False).items() if m},
                "span_ms": [float(x) / 1e6 for x in per["span_ns"]] if len(per) else [],
                "busy_ms": [float(x) / 1e6 for x in per["busy_ns"]] if len(per) else []}
        out.append(fact)
    return out


def summarize_trace(trace: Trace, bandwidth_Bps: float | None = None, top: int = 10) -> tuple[dict, pd.DataFrame]:
    """The analyze summary (header + report body) of a loaded trace, and the table it was computed from."""
    table, steps = prepare(trace)
    peak = bandwidth_Bps or trace.card_bandwidth_Bps
    source = ("--bandwidth" if bandwidth_Bps else
              "the trace (the card's theoretical bandwidth, as the driver reports it)" if trace.card_bandwidth_Bps
              else None)
    body = summarize_table(table, peak, top=top)
    kinds = trace.table["kind"].value_counts()
    header = {
        "command": "analyze",
        "file": str(trace.path),
        "source": trace.source,
        "card": trace.card,
        "peak_source": source,
        "counts": {k: int(kinds.get(k, 0)) for k in ("kernel", "memcpy", "memset", "sync", "api", "range")},
        "steps": steps,
        "phase_facts": _phase_facts(table, steps),
        "notes": list(trace.notes) + _graph_notes(table),
        "artifacts": {},
    }
    return {**header, **body}, table


def _graph_notes(t: pd.DataFrame) -> list[str]:
    launches = t[(t["kind"] == "api") & t["name"].astype(str).str.contains("GraphLaunch")]
    if launches.empty:
        return []
    ran = t[t["kind"].isin(["kernel", "memcpy", "memset"]) & t["correlation_id"].isin(launches["correlation_id"])]
    if ran.empty:
        return []
    n = int(launches["correlation_id"].isin(ran["correlation_id"]).sum())
    note = f"{n} CUDA graph launches traced node by node: each replayed kernel is its own row"
    if t["nvtx_range"].notna().any():
        note += (", charged to the NVTX range around its launch (which op added each node at capture is known only "
                 "to the process that captured it; `qprof profile --graphs` records it)")
    return [note]


def analyze_file(path: str | Path, bandwidth_Bps: float | None = None, top: int = 10,
                 work_dir: str | Path | None = None) -> tuple[dict, pd.DataFrame]:
    """Load a trace file (any supported format) and summarize it."""
    return summarize_trace(load(path, work_dir), bandwidth_Bps, top)
