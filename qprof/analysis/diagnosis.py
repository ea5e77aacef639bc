"""Rules that read the activity table and name causes in plain words, with the numbers behind them.

A finding is a `fault` (something the code does wrong and can stop doing: a copy or sync that
need not happen every step, a launch shape the kernel does not expect) or `advice` (a true
property of the run worth acting on: launch-bound decode, kernels far from the bandwidth
roof). A clean run must produce no faults.
"""

from __future__ import annotations

import pandas as pd

from qprof.analysis import step_rules
from qprof.analysis.attribution import (
    gaps,
    op_type,
    time_by_category,
    top_kernels,
    window,
    window_ns,
)
from qprof.analysis.findings import SYNCS_PER_STEP_MAX, TOKEN_INPUT_MAX_BYTES, Finding
from qprof.analysis.units import size
from qprof.quant.traits import QUANT_TRAITS

LAUNCH_GAP_SHARE = 0.30
LOW_BANDWIDTH_PCT = 25.0
MIN_KERNEL_SHARE = 0.05
SIZE_BOUND_PCT = 70.0  # a pure read of the launch's bytes below this % of peak: the launch size is the bound


def _decode_steps(df: pd.DataFrame) -> int:
    dec = df[(df["phase"] == "decode") & df["token"].notna()]
    return int(dec["token"].nunique())


def _n_layers(df: pd.DataFrame) -> int:
    layers = df["layer"].dropna()
    return int(layers.max()) + 1 if not layers.empty else 0


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _grows_with_context(copies: pd.DataFrame) -> bool:
    """True when one copy per step grows by a fixed stride per token: sized by the context, like a mask row."""
    per_token = copies.dropna(subset=["token"]).groupby("token")["bytes"].sum().sort_index()
    if len(per_token) < 3 or per_token.isna().any():
        return False
    steps = per_token.diff().dropna()
    return bool((steps > 0).all() and steps.nunique() == 1)


def _host_time(df: pd.DataFrame, rows: pd.DataFrame) -> int:
    """Host time in the API calls that issued `rows` (a pageable upload blocks the caller)."""
    corr = rows["correlation_id"].dropna()
    if corr.empty:
        return 0
    api = df[(df["kind"] == "api") & df["correlation_id"].isin(corr)]
    return int(api["dur_ns"].sum())


def repeated_uploads(df: pd.DataFrame) -> list[Finding]:
    """Small host→device copies that come back every decode step (the mask, a per-layer scalar)."""
    steps = _decode_steps(df)
    decode_ns = window_ns(df, "decode")
    if steps == 0 or decode_ns == 0:
        return []
    htod = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "HtoD") & (df["phase"] == "decode")]
    findings = []
    for op, grp in htod.groupby(htod["nvtx_range"].map(op_type)):
        count = len(grp)
        per_step = count / steps
        if per_step < 0.9:
            continue
        nbytes, low = int(grp["bytes"].fillna(0).max()), int(grp["bytes"].fillna(0).min())
        in_layers = bool(grp["layer"].notna().mean() > 0.5)
        grows = _grows_with_context(grp)
        if per_step <= 1.0 and nbytes <= TOKEN_INPUT_MAX_BYTES and not in_layers and not grows:
            continue  # the step's token id: every decode needs its input on the device
        device_ns = int(grp["dur_ns"].sum())
        # what the host loses: blocked in the copy calls (pageable memory) and in the syncs issued beside them
        host_ns = _host_time(df, grp)
        syncs = df[(df["kind"] == "sync") & (df["phase"] == "decode")]
        sync_ns = int(syncs.loc[syncs["nvtx_range"].map(op_type) == op, "dur_ns"].sum())
        cost_ns = max(host_ns + sync_ns, device_ns)
        share = cost_ns / decode_ns
        numbers = {"op": op, "copies": count, "per_step": per_step, "bytes": nbytes, "device_ns": device_ns,
                   "host_ns": host_ns, "sync_ns": sync_ns, "cost_ns": cost_ns, "share_of_decode": share,
                   "steps": steps}
        each = f"{nbytes} B each" if low == nbytes else f"{low}–{nbytes} B each"
        cost = (f"{_pct(share)} of decode time ({_ms(cost_ns)} with the host blocked in the copies and the syncs "
                f"beside them; {_ms(device_ns)} of copying on the GPU)")
        if "mask" in op.lower() or grp["nvtx_path"].fillna("").str.contains("mask").any() or grows:
            msg = (f"attention mask uploaded on every step: {count} copies ({per_step:g} per step, {each}), "
                   f"{cost}; build it once on the device (--mask device) or skip it for single-token decode "
                   f"(--mask skip)")
            rule = "mask_upload"
        elif in_layers:
            n_layers = _n_layers(df)
            msg = (f"host→device copy inside every layer ('{op}'): {count} copies ({per_step:g} per step"
                   + (f", {per_step / n_layers:g} per layer" if n_layers else "")
                   + f", {each}), {cost}; keep the value on the device")
            rule = "per_layer_upload"
        else:
            msg = (f"small host→device copy repeated every decode step in '{op}': {count} copies "
                   f"({per_step:g} per step, {each}), {cost}")
            rule = "repeated_upload"
        findings.append(Finding(rule, "fault", msg, numbers))
    return findings


def frequent_syncs(df: pd.DataFrame) -> list[Finding]:
    """More device synchronizations per decode step than reading back the sampled token needs."""
    steps = _decode_steps(df)
    decode_ns = window_ns(df, "decode")
    sync = df[(df["kind"] == "sync") & (df["phase"] == "decode")]
    if steps == 0 or sync.empty or decode_ns == 0:
        return []
    per_step = len(sync) / steps
    if per_step <= SYNCS_PER_STEP_MAX:
        return []
    n_layers = _n_layers(df)
    g = gaps(df, "decode")
    wait_ns = int(g.loc[g["gap"] == "sync wait", "dur_ns"].sum()) if not g.empty else 0
    where = sync["nvtx_range"].map(op_type).value_counts()
    top = ", ".join(f"{op} ×{n}" for op, n in where.head(3).items())
    per_layer = f", {per_step / n_layers:.1f} per layer" if n_layers else ""
    # a blocking (pageable) host->device copy brings its own sync: name that cause when it is the source
    htod = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "HtoD") & (df["phase"] == "decode")]
    with_copies = sync["nvtx_range"].map(op_type).isin(set(htod["nvtx_range"].map(op_type)))
    fix = ("each comes with a host→device copy in the same op: keep that value on the device"
           if with_copies.mean() > 0.5 else "drop the synchronize (--sync-every-op off)")
    msg = (f"device synchronized {per_step:.0f} times per decode step{per_layer} (from {top}): the GPU drains and "
           f"idles after each, {_pct(wait_ns / decode_ns)} of decode time ({_ms(wait_ns)}) lost in sync waits; {fix}")
    return [Finding("per_layer_sync", "fault", msg,
                    {"syncs": len(sync), "per_step": per_step, "n_layers": n_layers, "sync_wait_ns": wait_ns,
                     "share_of_decode": wait_ns / decode_ns})]


def launch_bound(df: pd.DataFrame) -> list[Finding]:
    """Decode whose GPU waits on kernel launches more than it computes."""
    table = time_by_category(df, "decode")
    if table.empty:
        return []
    row = table[table["category"] == "launch gap"]
    if row.empty:
        return []
    share, n = float(row["share"].iloc[0]), int(row["count"].iloc[0])
    if share < LAUNCH_GAP_SHARE:
        return []
    steps = max(_decode_steps(df), 1)
    mean_us = float(row["time_ns"].iloc[0]) / max(n, 1) / 1e3
    how = " (`qprof profile --graphs`, `qprof bench --graphs 1`)" if has_op_ranges(df) else ""
    msg = (f"decode is dominated by launch gaps: the GPU sat idle {_pct(share)} of decode time in {n} gaps between "
           f"launches ({mean_us:.1f} µs each, {n / steps:.0f} per token); capture the decode step as a CUDA graph"
           f"{how} or fuse kernels")
    return [Finding("launch_bound", "advice", msg, {"share_of_decode": share, "gaps": n, "mean_gap_us": mean_us})]


def _size_read_words(k, peak_Bps: float) -> tuple[str, dict]:
    """What a pure read of the kernel's bytes per launch reaches on this card, in words, where it was measured:
    a launch too small to stream at full rate is bound by its size, not by its code."""
    if pd.isna(k["size_read_Bps"]) or pd.isna(k["pct_of_size_read"]):
        return "", {}
    read_pct = 100.0 * float(k["size_read_Bps"]) / peak_Bps
    words = f"; a pure read of its {size(k['launch_bytes'])} a launch reaches {read_pct:.0f}% of peak on this card"
    if read_pct < SIZE_BOUND_PCT:
        words += " (the launch size caps any kernel there: fusing launches lifts the cap)"
    words += f", and it reaches {k['pct_of_size_read']:.0f}% of that"
    return words, {"launch_bytes": float(k["launch_bytes"]), "size_read_Bps": float(k["size_read_Bps"]),
                   "pct_of_size_read": float(k["pct_of_size_read"])}


def low_bandwidth(df: pd.DataFrame, peak_Bps: float | None = None,
                  read_by_size: dict[int, float] | None = None) -> list[Finding]:
    """Weight-reading kernels that reach a small fraction of the memory bandwidth they are bound by
    (peak_Bps: the card's measured read bandwidth; none known, no finding), each with what a pure read of its
    launch size reaches where read_by_size ({bytes: GB/s}) is known."""
    if not peak_Bps:
        return []
    top = top_kernels(df, n=50, peak_Bps=peak_Bps, phase="decode", read_by_size=read_by_size)
    if top.empty:
        return []
    total = float(top["time_ns"].sum())
    findings = []
    for _, k in top.iterrows():
        if pd.isna(k["pct_of_peak"]) or total <= 0:
            continue
        share = float(k["time_ns"]) / total
        if k["pct_of_peak"] < LOW_BANDWIDTH_PCT and share >= MIN_KERNEL_SHARE:
            by_size, extra = _size_read_words(k, peak_Bps)
            msg = (f"{k['name']} reaches {k['pct_of_peak']:.0f}% of peak bandwidth ({k['achieved_Bps'] / 1e9:.0f} of "
                   f"{peak_Bps / 1e9:.0f} GB/s) over {_pct(share)} of decode kernel time{by_size}")
            findings.append(Finding("low_bandwidth", "advice", msg,
                                    {"kernel": k["name"], "pct_of_peak": float(k["pct_of_peak"]),
                                     "achieved_Bps": float(k["achieved_Bps"]), "share_of_kernels": share, **extra}))
    return findings


def launch_shapes(df: pd.DataFrame) -> list[Finding]:
    """Dequantize kernels launched with a block size their quant type does not expect (the block-dim fault)."""
    k = df[(df["kind"] == "kernel") & (df["family"] == "dequant") & df["block"].notna() & df["qtype"].notna()]
    findings = []
    for (name, qtype, block), grp in k.groupby(["name", "qtype", "block"]):
        traits = QUANT_TRAITS.get(str(qtype))
        if traits is None or traits.dequant_threads <= 1:
            continue
        x = int(str(block).split(",")[0])
        want = traits.dequant_threads
        if x == want:
            continue
        if x < want:
            msg = (f"{name} launched {len(grp)} times with blockDim.x = {x}, but a {qtype} block is decoded by {want} "
                   f"threads (quant traits table): {1 - x / want:.0%} of every block's values are never written, "
                   f"and nothing raises an error")
        else:
            msg = (f"{name} launched {len(grp)} times with blockDim.x = {x}, but a {qtype} block is decoded by {want} "
                   f"threads (quant traits table): {x - want} threads per block idle")
        findings.append(Finding("block_dim", "fault" if x < want else "advice", msg,
                                {"kernel": name, "qtype": qtype, "block_x": x, "expected": traits.dequant_threads,
                                 "launches": len(grp)}))
    return findings


def has_op_ranges(df: pd.DataFrame) -> bool:
    """Whether the table knows which op issued each row (qprof's NVTX op ranges, or per-op timings)."""
    return bool(((df["kind"] == "range") & (df["level"] == "op")).any() or (df["kind"] == "op").any())


OP_RULES = (repeated_uploads, frequent_syncs)  # name the op range that issued each copy and sync
TRACE_RULES = (step_rules.uploads, step_rules.host_syncs)  # the same questions, per step, for a trace without op ranges


def diagnose(df: pd.DataFrame, peak_Bps: float | None = None,
             read_by_size: dict[int, float] | None = None) -> list[Finding]:
    """Every rule over one run's table (kernels against peak_Bps, the card's read bandwidth, and the read at
    their launch size, where known); faults first."""
    found: list[Finding] = launch_shapes(df) + step_rules.untraced_graphs(df)
    # the other rules read decode only: its rows (work, API calls, ranges), every row inside its window, every sync
    win = window(df, "decode")
    inside = (df["end_ns"] > win[0]) & (df["start_ns"] < win[1]) if win is not None else False
    dec = df[(df["phase"] == "decode") | (df["kind"] == "sync") | inside]
    for rule in OP_RULES if has_op_ranges(df) else TRACE_RULES:
        found += rule(dec)
    found += launch_bound(dec) or step_rules.host_bound(dec)
    found += low_bandwidth(dec, peak_Bps, read_by_size)
    for rule in (step_rules.readbacks, step_rules.step_boundary_idle):
        found += rule(dec)
    return sorted(found, key=lambda f: f.severity != "fault")


def faults(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "fault"]
