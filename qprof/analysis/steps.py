"""Phases and decode steps of any trace: from NVTX ranges when it has them, else from the trace's own rhythm.

Without ranges, a generation loop still leaves a beat in the trace: every step ends with a
device→host read (the logits, the sampled id, a stop flag) and the host's wait for it. So:
1. cut the timeline after every read-back (reads with no kernel between them count as one);
2. give each segment a signature: the multiset of its kernel names and whether they ran as a
   CUDA graph launch or were launched one by one;
3. the decode steps are the longest stretch of segments that repeats with a short period
   (a step can hold more than one read-back: transformers reads twice per step);
4. before them: a segment with the steps' kernels launched the other way is a warm-up step
   (llama.cpp runs a step eagerly before it captures the graph); one with at least half a
   step's kernels is a prefill pass; smaller ones are set-up; device work before the first
   kernel that copies ≥ LOAD_MIN_BYTES to the device is the model load; after them, the tail.
With no read-backs the host syncs mark the beat instead. Each row gets `phase`
(load | setup | prefill | warmup | decode | tail) and `token` (step or pass number), and the
returned Steps says how they were found, in a sentence for the report.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qprof.analysis.activity import DEVICE_KINDS
from qprof.analysis.units import count, plural, size

MIN_STEPS = 3  # fewer repeats than this is no rhythm
MAX_PERIOD = 8  # read-backs per step considered
PREFILL_MIN_KERNELS = 0.5  # a pre-decode segment with at least this share of a step's kernels is a prefill pass
LOAD_MIN_BYTES = 16 << 20  # host->device bytes before the first kernel that make it a model load
PHASE_ORDER = ("load", "setup", "prefill", "warmup", "decode", "tail")


@dataclass
class Steps:
    method: str  # "nvtx", "read-backs", "syncs" or "none"
    how: str  # one sentence: how the phases and steps were found
    counts: dict[str, int] = field(default_factory=dict)  # phase -> steps (decode) or passes (prefill, warmup)
    segments_per_step: int = 1  # read-backs (or syncs) that end one decode step
    step_kernels: int = 0  # kernels in one decode step
    step_mode: str | None = None  # "graph" (one CUDA graph launch), "eager" or "mixed"

    def as_dict(self) -> dict:
        return {"method": self.method, "how": self.how, "counts": dict(self.counts),
                "segments_per_step": self.segments_per_step, "step_kernels": self.step_kernels,
                "step_mode": self.step_mode}


def _nvtx_steps(df: pd.DataFrame) -> Steps | None:
    dev = df[df["kind"].isin(DEVICE_KINDS) | (df["kind"] == "op")]
    if dev.empty or dev["phase"].isna().all():
        return None
    counts = {}
    for phase, rows in dev.groupby("phase"):
        counts[str(phase)] = int(rows["token"].nunique()) if rows["token"].notna().any() else 1
    parts = ", ".join(f"{phase} ({n} {'step' if phase == 'decode' else 'pass'}{'' if n == 1 else 'es' if phase != 'decode' else 's'})"
                      for phase, n in counts.items())
    return Steps("nvtx", f"phases and steps from the trace's NVTX ranges: {parts}", counts)


def _boundaries(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Times that end a segment: read-backs (merged when no kernel starts between them), else host syncs."""
    kernels = np.sort(df.loc[df["kind"] == "kernel", "start_ns"].to_numpy(dtype=np.int64))
    reads = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "DtoH")].sort_values("start_ns")
    method = "read-backs"
    marks = list(zip(reads["start_ns"].astype("int64"), reads["end_ns"].astype("int64")))
    if len(marks) < MIN_STEPS:
        syncs = df[df["kind"] == "sync"].sort_values("start_ns")
        marks, method = list(zip(syncs["start_ns"].astype("int64"), syncs["end_ns"].astype("int64"))), "syncs"
    out: list[int] = []
    for start, end in marks:
        if out:
            between = np.searchsorted(kernels, out[-1], side="right") < np.searchsorted(kernels, start, side="left")
            if not between:
                out[-1] = max(out[-1], int(end))
                continue
        out.append(int(end))
    return np.array(out, dtype=np.int64), method


def _launch_modes(kernels: pd.DataFrame) -> pd.Series:
    """True for kernels that ran from a CUDA graph: a node id, or a launch id shared with other device rows."""
    shared = kernels["correlation_id"].map(kernels["correlation_id"].value_counts()).fillna(1) > 1
    return kernels["graph_node"].notna() | shared


def _signatures(df: pd.DataFrame, seg: np.ndarray, n: int) -> tuple[list[str], list[str], list[int]]:
    """Per segment: kernel multiset hash, launch mode ("graph" | "eager" | "mixed" | "none"), kernel count."""
    k = df[df["kind"] == "kernel"].assign(seg=seg[(df["kind"] == "kernel").to_numpy()])
    k = k.assign(graph=_launch_modes(k))
    hashes, modes, counts = ["empty"] * n, ["none"] * n, [0] * n
    for s, rows in k.groupby("seg"):
        names = sorted(Counter(rows["name"].astype(str)).items())
        hashes[s] = hashlib.sha1(repr(names).encode()).hexdigest()[:12]
        modes[s] = "graph" if rows["graph"].all() else "eager" if not rows["graph"].any() else "mixed"
        counts[s] = len(rows)
    return hashes, modes, counts


def _best_run(sigs: list[str], kernels: list[int]) -> tuple[int, int, int] | None:
    """(start, period, repeats) of the longest stretch that repeats with a period up to MAX_PERIOD."""
    best: tuple[int, int, int, int] | None = None  # (-covered, period, start, repeats) to minimize
    n = len(sigs)
    for p in range(1, min(MAX_PERIOD, n // MIN_STEPS) + 1):
        i = 0
        while i < n - p:
            if sigs[i] != sigs[i + p]:
                i += 1
                continue
            j = i
            while j < n - p and sigs[j] == sigs[j + p]:
                j += 1
            repeats = (j - i + p) // p
            if repeats >= MIN_STEPS and sum(kernels[i:i + p]) > 0:
                key = (-(repeats * p), p, i, repeats)
                if best is None or key < best:
                    best = key
            i = j + 1
    return None if best is None else (best[2], best[1], best[3])


def _label(n: int, start: int, period: int, repeats: int, hashes, modes, counts) -> tuple[list, list]:
    phases: list[str | None] = ["tail"] * n
    tokens: list[int | None] = [None] * n
    for u in range(repeats):
        for s in range(start + u * period, start + (u + 1) * period):
            phases[s], tokens[s] = "decode", u
    unit_hashes = hashes[start:start + period]
    unit_kernels = sum(counts[start:start + period])
    s = start
    warm = 0
    while s - period >= 0 and hashes[s - period:s] == unit_hashes and modes[s - period:s] != modes[start:start + period]:
        s -= period
        warm += 1
    for u in range(warm):
        for i in range(s + u * period, s + (u + 1) * period):
            phases[i], tokens[i] = "warmup", u
    passes = 0
    for i in range(s):
        big = counts[i] >= PREFILL_MIN_KERNELS * unit_kernels
        phases[i], tokens[i] = ("prefill", passes) if big else ("setup", None)
        passes += big
    return phases, tokens


def _load_rows(df: pd.DataFrame) -> pd.Series:
    """Device and host rows before the first kernel, when they copy at least LOAD_MIN_BYTES to the device."""
    kernels = df[df["kind"] == "kernel"]
    if kernels.empty:
        return pd.Series(False, index=df.index)
    before = df["start_ns"] < int(kernels["start_ns"].min())
    htod = df[before & (df["kind"] == "memcpy") & (df["copy_kind"] == "HtoD")]
    if int(htod["bytes"].fillna(0).sum()) < LOAD_MIN_BYTES:
        return pd.Series(False, index=df.index)
    return before


def find_steps(df: pd.DataFrame) -> tuple[pd.DataFrame, Steps]:
    """The table with `phase` and `token` filled in where the trace had no NVTX phases, and how they were found."""
    from_ranges = _nvtx_steps(df)
    if from_ranges is not None:
        return df, from_ranges
    bounds, method = _boundaries(df)
    if len(bounds) < MIN_STEPS:
        return df, Steps("none", "no steps found: the trace has fewer than 3 device→host reads or host syncs "
                                 "to mark them; the report covers the whole trace as one window")
    seg = np.searchsorted(bounds, df["start_ns"].to_numpy(dtype=np.int64), side="left")
    n = len(bounds) + 1
    hashes, modes, counts = _signatures(df, seg, n)
    run = _best_run([f"{h}/{m}" for h, m in zip(hashes, modes)], counts)
    if run is None:
        return df, Steps("none", f"no repeating step found among {n} stretches between {method}; the report "
                                 "covers the whole trace as one window")
    start, period, repeats = run
    phases, tokens = _label(n, start, period, repeats, hashes, modes, counts)
    df = df.copy()
    df["phase"] = [phases[s] for s in seg]
    df["token"] = pd.array([tokens[s] for s in seg], dtype="Int64")
    load = _load_rows(df)
    df.loc[load, "phase"] = "load"
    df.loc[load, "token"] = pd.NA
    unit_modes = set(modes[start:start + period]) - {"none"}
    mode = unit_modes.pop() if len(unit_modes) == 1 else "mixed"
    steps = Steps(method, "", segments_per_step=period, step_kernels=sum(counts[start:start + period]), step_mode=mode)
    steps.counts = {p: int(df.loc[df["phase"] == p, "token"].nunique()) if p in ("prefill", "warmup", "decode")
                    else 1 for p in PHASE_ORDER if (df["phase"] == p).any()}
    steps.how = describe(df, steps)
    return df, steps


def describe(df: pd.DataFrame, steps: Steps) -> str:
    """How the steps were found, in words, with the evidence: what repeats and what ends each step."""
    dec = df[df["phase"] == "decode"]
    n = steps.counts.get("decode", 0)
    launched = {"graph": "launched as one CUDA graph", "eager": "launched one by one",
                "mixed": "partly from a CUDA graph"}.get(steps.step_mode or "", "")
    if steps.method == "read-backs":
        reads = dec[(dec["kind"] == "memcpy") & (dec["copy_kind"] == "DtoH")]
        per = len(reads) / max(n, 1)
        sizes = sorted(set(reads["bytes"].dropna().astype(int)))
        each = size(sizes[0]) if len(sizes) == 1 else f"{size(sizes[0])}–{size(sizes[-1])}"
        waits = int((dec["kind"] == "sync").sum()) / max(n, 1)
        end = f"{plural(per, 'device→host read')} ({each})" + (
            f" and the host's syncs ({count(waits)} per step)" if waits else "")
    else:
        end = plural(steps.segments_per_step, "host sync")
    text = (f"steps found from the trace's rhythm (no NVTX phases): {n} decode steps repeat one set of "
            f"{steps.step_kernels} kernels ({launched}), each ending with {end}")
    before = []
    load = df[df["phase"] == "load"]
    if not load.empty:
        htod = load[(load["kind"] == "memcpy") & (load["copy_kind"] == "HtoD")]
        before.append(f"model load ({len(htod)} host→device copies, {size(float(htod['bytes'].fillna(0).sum()))})")
    if steps.counts.get("setup"):
        before.append("set-up work")
    if steps.counts.get("prefill"):
        k = df[(df["phase"] == "prefill") & (df["kind"] == "kernel")]
        per_pass = k.groupby("token").size()
        before.append(f"{plural(steps.counts['prefill'], 'prefill pass', 'prefill passes')} "
                      f"({'/'.join(str(int(x)) for x in per_pass)} kernels)")
    if steps.counts.get("warmup"):
        other = "launched one by one" if steps.step_mode == "graph" else "as a CUDA graph"
        before.append(f"{plural(steps.counts['warmup'], 'warm-up step')} with the same kernels {other}")
    if before:
        text += "; before them: " + ", ".join(before)
    return text
