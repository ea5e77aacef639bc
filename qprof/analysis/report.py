"""What `qprof profile` and `qprof analyze` print: where the time went, copies, syncs, kernels, diagnosis.

`summarize_table` turns one activity table into a JSON-able dict (the --json output's body); the
caller adds its header (profile: model, tok/s and the bandwidth floor; analyze: the file, the
card and how the steps were found). `render` turns that dict into the terminal report; `compare`
and `render_comparison` put every fault switch beside the clean configuration.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from qprof.analysis import attribution as attr
from qprof.analysis.diagnosis import diagnose
from qprof.analysis.families import OTHER
from qprof.analysis.units import size

PHASES = ("decode", "prefill", "warmup", "load", "setup", "tail")
UNNAMED_ENGINE = "qprof or unnamed"
OVERLAP_NOTE_SHARE = 0.01


def records(df: pd.DataFrame) -> list[dict]:
    out = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                clean[k] = None
            elif hasattr(v, "item"):
                clean[k] = v.item()
            else:
                clean[k] = v
        out.append(clean)
    return out


def _kernel_shares(t: pd.DataFrame, phase: str, column: str, fill: str) -> list[dict]:
    """Kernel time per value of `column` (engine, family) in a phase, as shares of the phase's kernel time."""
    k = t[(t["kind"] == "kernel") & (t["phase"] == phase)]
    if k.empty:
        return []
    key = k[column].fillna(fill)
    out = k.assign(key=key).groupby("key")["dur_ns"].agg(["sum", "size"]).sort_values("sum", ascending=False)
    total = max(float(out["sum"].sum()), 1.0)
    return [{column: e, "time_ns": int(r["sum"]), "count": int(r["size"]), "share": float(r["sum"]) / total}
            for e, r in out.iterrows()]


def _other_kernels(t: pd.DataFrame, phase: str, top: int) -> list[dict]:
    """The kernels behind the "other" family, by time: what the family table does not know yet."""
    k = t[(t["kind"] == "kernel") & (t["phase"] == phase) & (t["family"] == OTHER)]
    if k.empty:
        return []
    g = k.groupby("name")["dur_ns"].agg(["sum", "size"]).sort_values("sum", ascending=False).head(top)
    return [{"name": n, "time_ns": int(r["sum"]), "count": int(r["size"])} for n, r in g.iterrows()]


def _phase(t: pd.DataFrame, phase: str, top: int, op_meta) -> dict:
    win = attr.window(t, phase)
    if win is not None:  # the rows every number below reads: the phase's window, and every sync
        inside = (t["end_ns"] > win[0]) & (t["start_ns"] < win[1])
        t = t[inside | (t["kind"] == "sync") | (t["phase"] == phase)]
    g = attr.gaps(t, phase)
    return {
        "window_ms": attr.window_ns(t, phase) / 1e6,
        "overlap_ms": attr.overlap_ns(t, phase) / 1e6,
        "categories": records(attr.time_by_category(t, phase, gap_rows=g).head(top)),
        "by_family": records(attr.time_by_category(t, phase, by="family", gap_rows=g).head(top)),
        "by_qtype": records(attr.time_by_category(t, phase, by="qtype", gap_rows=g).head(top)),
        "engines": _kernel_shares(t, phase, "engine", UNNAMED_ENGINE),
        "families": _kernel_shares(t, phase, "family", OTHER),
        "other_kernels": _other_kernels(t, phase, top),
        "ops": records(attr.by_range(t, phase, op_meta=op_meta).head(top)),
        "copies": records(attr.copies(t, phase)),
        "syncs": records(attr.syncs(t, phase)),
    }


def summarize_table(t: pd.DataFrame, peak_Bps: float | None = None, top: int = 10,
                    op_meta: dict | None = None, device_work: bool = True,
                    read_by_size: dict[int, float] | None = None) -> dict:
    """Everything the report shows about one table, as plain data (phases with work only); kernels are read
    against peak_Bps, the card's read bandwidth, and against the read at their launch size (read_by_size,
    {bytes: GB/s}), where they are known."""
    curve = read_by_size if device_work else None
    phases = {p: _phase(t, p, top, op_meta) for p in PHASES if attr.window(t, p) is not None}
    for p in ("prefill", "decode"):  # profile's charts and comparisons expect both
        phases.setdefault(p, _phase(t, p, top, op_meta))
    tokens = attr.per_token(t)
    dec = tokens[tokens["phase"] == "decode"]
    return {
        "peak_Bps": peak_Bps,
        "phases": phases,
        "copies": records(attr.copies(t)),
        "read_by_size_GBps": {str(k): v for k, v in (curve or {}).items()},
        "top_kernels": records(attr.top_kernels(t, top, peak_Bps if device_work else None, read_by_size=curve)),
        "work": "device activity" if device_work and not attr.device_rows(t).empty else "per-op timings",
        "decode_tokens": {"count": len(dec), "median_busy_ms": float(dec["busy_ns"].median() / 1e6) if len(dec) else 0.0,
                          "median_span_ms": float(dec["span_ns"].median() / 1e6) if len(dec) else 0.0,
                          "syncs_per_token": float(dec["syncs"].mean()) if len(dec) else 0.0},
        "findings": [f.as_dict() for f in diagnose(t, peak_Bps, curve)],
        "rows": len(t),
    }


# --------------------------------------------------------------------------- text


def _launch_mb(k: dict) -> str:
    return f"{k['launch_bytes'] / 1e6:8.1f}" if k.get("launch_bytes") is not None else "-"


def _ms(ns) -> str:
    return f"{(ns or 0) / 1e6:9.3f}"


def _pct(x) -> str:
    return f"{100.0 * (x or 0):5.1f}%"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = ["  " + line]
    out += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return out


def _phase_lines(s: dict, phase: str, top: int) -> list[str]:
    p = s["phases"].get(phase)
    if not p or not p["categories"]:
        return []
    lines = [f"\n{phase}: where {p['window_ms']:.3f} ms went ({s['work']} and the gaps between them)"]
    lines += table(["category", "ms", "share", "count"],
                   [[c["category"], _ms(c["time_ns"]), _pct(c["share"]), str(c["count"])] for c in p["categories"][:top]])
    if p.get("window_ms") and p.get("overlap_ms", 0) > OVERLAP_NOTE_SHARE * p["window_ms"]:
        lines.append(f"  note: kernels overlap (they run concurrently for {p['overlap_ms']:.3f} ms), so the shares "
                     "add up to more than 100%")
    if p.get("families") and not any(o["op"] != "(outside ranges)" for o in p["ops"]):  # no op table to read
        lines.append("  kernel time by family: " + ", ".join(f"{f['family']} {100 * f['share']:.1f}%"
                                                             for f in p["families"][:8]))
    if any(e["engine"] != UNNAMED_ENGINE for e in p.get("engines") or []):
        lines.append("  kernel time by engine: " + ", ".join(f"{e['engine']} {100 * e['share']:.1f}%"
                                                             for e in p["engines"]))
    if p.get("other_kernels"):
        lines.append("  'other' kernels: " + ", ".join(f"{k['name'][:48]} ({k['time_ns'] / 1e6:.3f} ms, ×{k['count']})"
                                                      for k in p["other_kernels"][:3]))
    ops = [o for o in p["ops"] if o["op"] != "(outside ranges)"]
    if ops:
        lines.append(f"{phase}: per op (summed over layers; work charged to the op that launched it)")
        lines += table(["op", "family", "qtype", "calls", "ms", "mean µs", "share"],
                       [[o["op"], str(o["family"] or "-"), str(o["qtype"] or "-"), str(o["calls"]),
                         _ms(o["time_ns"]), f"{(o['mean_ns'] or 0) / 1e3:8.1f}", _pct(o["share"])] for o in ops[:top]])
    return lines


def render_body(s: dict, top: int = 8) -> list[str]:
    """The report below its header: phases, copies, syncs, kernels, diagnosis, artifacts."""
    lines: list[str] = []
    for phase in PHASES:
        lines += _phase_lines(s, phase, top)
    if s["copies"]:
        lines.append("\ncopies by direction")
        lines += table(["dir", "count", "bytes", "ms", "GB/s", "mean size"],
                       [[c["copy_kind"], str(c["count"]), size(c["bytes"]), _ms(c["time_ns"]),
                         f"{c['bandwidth_Bps'] / 1e9:8.2f}", size(c["mean_bytes"])] for c in s["copies"]])
    syncs = s["phases"]["decode"]["syncs"]
    if syncs:
        lines.append(f"\ndecode syncs: {s['decode_tokens']['syncs_per_token']:.1f} per token")
        lines += table(["issued by", "count", "host ms"],
                       [[x["op"], str(x["count"]), _ms(x["time_ns"])] for x in syncs[:top]])
    kern = [k for k in s["top_kernels"] if k.get("count")]
    if kern:
        what = "kernels" if s["work"] == "device activity" else "timed ops"
        if any(k["achieved_Bps"] for k in kern):
            peak = (f"vs the {s['peak_Bps'] / 1e9:,.0f} GB/s read bandwidth" if s.get("peak_Bps")
                    else "no read bandwidth known for a % of peak")
            by_size = any(k.get("pct_of_size_read") is not None for k in kern)
            if by_size:
                peak += "; % size: of a pure read of the kernel's bytes per launch, measured on this card"
            lines.append(f"\ntop {what} (achieved weight bandwidth; {peak})")
            lines += table(["kernel", "count", "ms", "mean µs", "GB/s", "% peak"] + (["MB/launch", "% size"] if by_size
                                                                                    else []),
                           [[k["name"][:48], str(k["count"]), _ms(k["time_ns"]), f"{k['mean_ns'] / 1e3:8.1f}",
                             f"{k['achieved_Bps'] / 1e9:8.1f}" if k["achieved_Bps"] else "-",
                             f"{k['pct_of_peak']:5.1f}" if k["pct_of_peak"] is not None else "-"]
                            + ([_launch_mb(k), f"{k['pct_of_size_read']:5.1f}" if k.get("pct_of_size_read") is not None
                                else "-"] if by_size else []) for k in kern[:top]])
        else:  # no kernel's bytes are known: its bandwidth cannot be
            lines.append(f"\ntop {what} (bytes per kernel unknown: no bandwidth figures)")
            lines += table(["kernel", "family", "count", "ms", "mean µs"],
                           [[k["name"][:48], str(k["family"] or "-"), str(k["count"]), _ms(k["time_ns"]),
                             f"{k['mean_ns'] / 1e3:8.1f}"] for k in kern[:top]])
    lines.append("\ndiagnosis")
    if s["findings"]:
        lines += [f"  [{f['severity']}] {f['message']}" for f in s["findings"]]
    else:
        lines.append("  no faults found")
    for name, path in s.get("artifacts", {}).items():
        lines.append(f"artifact {name}: {path}")
    return lines


def render(s: dict, top: int = 8) -> str:
    """The terminal report of one summarized run (profile) or trace (analyze)."""
    header = analyze_header(s) if s.get("command") == "analyze" else profile_header(s)
    return "\n".join([*header, *render_body(s, top)])


def _value(v, scale: float, unit: str) -> str:
    return f"{v / scale:,.1f} {unit}" if v else "unknown"


def _flop_count(n: float) -> str:
    return f"{n / 1e9:.1f} GFLOP" if n >= 1e9 else f"{n / 1e6:.2f} MFLOP"


def _bound_text(s: dict, phase: str) -> str:
    """' (x% of the <bound> N tok/s = <figure> / <work> per token)': decode against the floor, prefill against
    the roofline; the decode floor says when it is unknown."""
    if phase == "decode":
        bound, pct, what = s.get("tg_floor_tok_s"), s.get("tg_pct_of_floor"), "decode floor"
        figure = f"{(s.get('peak_Bps') or 0) / 1e9:,.0f} GB/s"
        work = size(s["weight_bytes_per_token"])
    else:
        bound, pct, what = s.get("pp_roofline_tok_s"), s.get("pp_pct_of_roofline"), "roofline"
        figure = f"{s.get('gemm_TFLOPS') or 0:.4g} TFLOP/s"
        work = _flop_count(s.get("prefill_flops_per_token") or 0)
    if not bound:
        return " (decode floor unknown)" if phase == "decode" else ""
    return f" ({pct:.1f}% of the {what} {bound:,.0f} tok/s = {figure} / {work} per token)"


def profile_header(s: dict) -> list[str]:
    """The first lines of a profile report: the run, tok/s against the card's ceilings, how decode ran, notes."""
    lines = [(f"qprof profile: {s['model']} on {s['device']} | config {s['config']} | timing {s['timing']} | "
              f"{s['n_prompt']} prompt + {s['n_gen']} generated tokens")]
    lines.append(f"  prefill {s['pp_tok_s']:.1f} tok/s{_bound_text(s, 'prefill')} | decode {s['tg_tok_s']:.1f} tok/s"
                 f"{_bound_text(s, 'decode')}")
    lines.append(f"  ceilings: read bandwidth {_value(s.get('peak_Bps'), 1e9, 'GB/s')} ({s.get('bandwidth_source')}); "
                 f"GEMM {_value(s.get('gemm_TFLOPS'), 1, 'TFLOP/s')} ({s.get('gemm_source')})")
    lines.append(f"  decode: {s.get('decode_mode') or 'eager'}")
    if s.get("decode_loop_mode"):
        lines.append(f"  decode loop: {s['decode_loop_mode']}")
    for note in s["notes"]:
        lines.append(f"  note: {note}")
    return lines


def analyze_header(s: dict) -> list[str]:
    """The first lines of an analyze report: the file, the card, what was found and how."""
    c = s["counts"]
    card = s["card"] or "not named in the trace"
    lines = [(f"qprof analyze: {Path(s['file']).name} ({s['source']}) | card {card} | {c['kernel']} kernels, "
              f"{c['memcpy']} copies, {c['memset']} memsets, {c['sync']} syncs")]
    lines.append(f"  {s['steps']['how']}")
    parts = []
    for f in s["phase_facts"]:
        text = f"{f['phase']} {f['window_ms']:.1f} ms"
        if f["phase"] == "load" and f["htod_copies"]:
            rate = f" at {f['htod_bytes'] / (f['htod_ms'] * 1e6):.1f} GB/s" if f["htod_ms"] else ""
            memory = ", from " + " and ".join(f"{kind} memory ({size(n)})" for kind, n in f["htod_memory"].items()) \
                if f.get("htod_memory") else ""
            text += f" ({f['htod_copies']} host→device copies, {size(f['htod_bytes'])}{rate}{memory})"
        elif f["phase"] == "decode" and f["span_ms"]:
            med = sorted(f["span_ms"])[len(f["span_ms"]) // 2]
            text += f" ({f['count']} steps, median {med:.2f} ms each)"
        elif f["phase"] in ("prefill", "warmup") and f["span_ms"]:
            text += f" ({f['count']} × " + "/".join(f"{x:.1f}" for x in f["span_ms"]) + " ms)"
        parts.append(text)
    if parts:
        lines.append("  phases: " + " | ".join(parts))
    peak = s.get("peak_Bps")
    if peak and any(k.get("achieved_Bps") for k in s["top_kernels"]):
        lines.append(f"  bandwidth for kernel efficiency: {peak / 1e9:.0f} GB/s, from {s['peak_source']}")
    for note in s["notes"]:
        lines.append(f"  note: {note}")
    return lines


# --------------------------------------------------------------------------- fault comparison


def compare(summaries: list[dict], top: int = 3) -> list[dict]:
    """Each configuration against the first (clean): tok/s, the change, top decode categories, faults found."""
    base = summaries[0]
    out = []
    for s in summaries:
        cats = s["phases"]["decode"]["categories"][:top]
        out.append({
            "config": s["config"],
            "pp_tok_s": s["pp_tok_s"],
            "tg_tok_s": s["tg_tok_s"],
            "tg_vs_clean_pct": 100.0 * (s["tg_tok_s"] - base["tg_tok_s"]) / base["tg_tok_s"] if base["tg_tok_s"] else None,
            "decode_window_ms": s["phases"]["decode"]["window_ms"],
            "top_decode": [(c["category"], c["share"]) for c in cats],
            "faults": [f["message"] for f in s["findings"] if f["severity"] == "fault"],
            # the CPU runtime ignores the fault switches: its fault rows are the clean run again
            "noise": s.get("runtime_device") == "cpu" and s["config"] != "clean",
        })
    return out


def render_comparison(rows: list[dict]) -> str:
    lines = ["\nfault switches against the clean configuration (decode)"]
    if any(r.get("noise") for r in rows):
        lines.append("CPU runtime: the fault switches act on the CUDA runtime only, so every configuration below "
                     "ran exactly as clean; the differences are run-to-run noise, not effects")
    lines += table(["config", "pp tok/s", "tg tok/s", "vs clean", "decode ms", "top decode categories"],
                   [[r["config"], f"{r['pp_tok_s']:.1f}", f"{r['tg_tok_s']:.1f}",
                     (f"{r['tg_vs_clean_pct']:+.1f}%" + (" (noise)" if r.get("noise") else ""))
                     if r["tg_vs_clean_pct"] is not None else "-",
                     f"{r['decode_window_ms']:.2f}",
                     ", ".join(f"{c} {100 * sh:.0f}%" for c, sh in r["top_decode"])] for r in rows])
    for r in rows:
        verdict = "; ".join(r["faults"]) if r["faults"] else \
            "ignored by the CPU runtime (the clean run again)" if r.get("noise") else "no faults found"
        lines.append(f"  {r['config']}: {verdict}")
    return "\n".join(lines)


def render_agreement(frame: pd.DataFrame) -> str:
    """Per-op totals of several timing modes side by side (attribution.agreement)."""
    if frame.empty:
        return "timing agreement: nothing to compare"
    headers = ["op", *[str(c) for c in frame.columns]]
    rows = [[str(idx), *[("-" if pd.isna(v) else f"{v:.3f}") for v in row]] for idx, row in frame.iterrows()]
    return "\n".join(["\nper-op totals (ms) by timing mode", *table(headers, rows)])


def render_bias(frame: pd.DataFrame) -> str:
    """Launch-blocking host timers against CUDA events (timing_blocking.bias_table)."""
    if frame.empty:
        return "launch-blocking bias: nothing to compare"
    rows = [[str(r["phase"]), str(r["family"]), f"{r['blocking_ms']:.3f}", f"{r['events_ms']:.3f}",
             "-" if pd.isna(r["bias_pct"]) else f"{r['bias_pct']:+.1f}%"] for _, r in frame.iterrows()]
    return "\n".join(["\nlaunch-blocking host timers vs CUDA events",
                      *table(["phase", "family", "blocking ms", "events ms", "bias"], rows)])
