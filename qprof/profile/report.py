"""What `qprof profile` prints: tok/s beside the bandwidth floor, where the time went, copies, syncs, diagnosis.

`summarize` turns a ProfileRun into a JSON-able dict (the --json output); `render` turns that
dict into the terminal report; `compare` and `render_comparison` put every fault switch beside
the clean configuration (tok/s and attribution).
"""

from __future__ import annotations

import math

import pandas as pd

from qprof.ceilings.choose import Ceiling, RunCeilings
from qprof.profile import attribution as attr
from qprof.profile.diagnosis import diagnose
from qprof.profile.workload import ProfileRun


def _records(df: pd.DataFrame) -> list[dict]:
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


def bounds(r, ceilings: RunCeilings | None, flops_per_token: float | None) -> dict:
    """The decode floor and the prefill roofline of one run, with the figures and their sources."""
    bw = ceilings.bandwidth if ceilings else Ceiling(None, "unknown (no ceilings given)")
    gemm = ceilings.gemm if ceilings else Ceiling(None, "unknown (no ceilings given)")
    floor = r.floor_tok_s(bw.value * 1e9) if bw.value else None
    roof = gemm.value * 1e12 / flops_per_token if gemm.value and flops_per_token else None
    return {"tg_floor_tok_s": floor or None, "tg_pct_of_floor": 100.0 * r.tg_tok_s / floor if floor else None,
            "peak_Bps": bw.value * 1e9 if bw.value else None, "bandwidth_source": bw.source,
            "prefill_flops_per_token": flops_per_token, "pp_roofline_tok_s": roof,
            "pp_pct_of_roofline": 100.0 * r.pp_tok_s / roof if roof else None,
            "gemm_TFLOPS": gemm.value, "gemm_source": gemm.source}


def summarize(run: ProfileRun, ceilings: RunCeilings | None = None, top: int = 10,
              flops_per_token: float | None = None) -> dict:
    """Everything the report shows, as plain data; kernels are read against the card's measured read bandwidth."""
    t, r = run.table, run.result
    on_gpu = run.spec.device == "cuda"
    limits = bounds(r, ceilings, flops_per_token)
    peak_Bps = limits["peak_Bps"]
    findings = diagnose(t, peak_Bps)
    phases = {}
    for phase in ("prefill", "decode"):
        cats = attr.time_by_category(t, phase)
        phases[phase] = {
            "window_ms": attr.window_ns(t, phase) / 1e6,
            "categories": _records(cats.head(top)),
            "by_family": _records(attr.time_by_category(t, phase, by="family").head(top)),
            "by_qtype": _records(attr.time_by_category(t, phase, by="qtype").head(top)),
            "ops": _records(attr.by_range(t, phase).head(top)),
            "copies": _records(attr.copies(t, phase)),
            "syncs": _records(attr.syncs(t, phase)),
        }
    tokens = attr.per_token(t)
    dec = tokens[tokens["phase"] == "decode"]
    return {
        "model": r.model_name,
        "device": r.device_name,
        "runtime_device": run.spec.device,
        "n_threads": run.spec.n_threads,
        "config": run.label,
        "timing": run.timing,
        "n_prompt": r.n_prompt,
        "n_gen": r.n_gen,
        "pp_tok_s": r.pp_tok_s,
        "tg_tok_s": r.tg_tok_s,
        **limits,
        "weight_bytes_per_token": r.weight_bytes,
        "phases": phases,
        "copies": _records(attr.copies(t)),
        "top_kernels": _records(attr.top_kernels(t, top, peak_Bps)),
        "work": "device activity" if on_gpu and not attr.device_rows(t).empty else "per-op timings",
        "decode_tokens": {"count": len(dec), "median_busy_ms": float(dec["busy_ns"].median() / 1e6) if len(dec) else 0.0,
                          "median_span_ms": float(dec["span_ns"].median() / 1e6) if len(dec) else 0.0,
                          "syncs_per_token": float(dec["syncs"].mean()) if len(dec) else 0.0},
        "findings": [f.as_dict() for f in findings],
        "notes": list(run.notes),
        "artifacts": dict(run.artifacts),
        "rows": len(t),
    }


# --------------------------------------------------------------------------- text


def _ms(ns) -> str:
    return f"{(ns or 0) / 1e6:9.3f}"


def _pct(x) -> str:
    return f"{100.0 * (x or 0):5.1f}%"


def _size(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = ["  " + line]
    out += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return out


def _value(v, scale: float, unit: str) -> str:
    return f"{v / scale:,.1f} {unit}" if v else "unknown"


def _bound_text(s: dict, phase: str) -> str:
    """' (x% of the <bound> N tok/s = <figure> / <work> per token)': decode against the floor, prefill against
    the roofline; the decode floor says when it is unknown."""
    if phase == "decode":
        bound, pct, what = s.get("tg_floor_tok_s"), s.get("tg_pct_of_floor"), "decode floor"
        figure = f"{(s.get('peak_Bps') or 0) / 1e9:,.0f} GB/s"
        work = _size(s["weight_bytes_per_token"])
    else:
        bound, pct, what = s.get("pp_roofline_tok_s"), s.get("pp_pct_of_roofline"), "roofline"
        figure = f"{s.get('gemm_TFLOPS') or 0:.4g} TFLOP/s"
        work = _flop_count(s.get("prefill_flops_per_token") or 0)
    if not bound:
        return " (decode floor unknown)" if phase == "decode" else ""
    return f" ({pct:.1f}% of the {what} {bound:,.0f} tok/s = {figure} / {work} per token)"


def _flop_count(n: float) -> str:
    return f"{n / 1e9:.1f} GFLOP" if n >= 1e9 else f"{n / 1e6:.2f} MFLOP"


def render(s: dict, top: int = 8) -> str:
    """The terminal report of one summarized run."""
    lines = [(f"qprof profile: {s['model']} on {s['device']} | config {s['config']} | timing {s['timing']} | "
             f"{s['n_prompt']} prompt + {s['n_gen']} generated tokens")]
    lines.append(f"  prefill {s['pp_tok_s']:.1f} tok/s{_bound_text(s, 'prefill')} | decode {s['tg_tok_s']:.1f} tok/s"
                 f"{_bound_text(s, 'decode')}")
    lines.append(f"  ceilings: read bandwidth {_value(s.get('peak_Bps'), 1e9, 'GB/s')} ({s.get('bandwidth_source')}); "
                 f"GEMM {_value(s.get('gemm_TFLOPS'), 1, 'TFLOP/s')} ({s.get('gemm_source')})")
    for note in s["notes"]:
        lines.append(f"  note: {note}")
    for phase in ("decode", "prefill"):
        p = s["phases"][phase]
        if not p["categories"]:
            continue
        lines.append(f"\n{phase}: where {p['window_ms']:.3f} ms went ({s['work']} and the gaps between them)")
        lines += _table(["category", "ms", "share", "count"],
                        [[c["category"], _ms(c["time_ns"]), _pct(c["share"]), str(c["count"])]
                         for c in p["categories"][:top]])
        if p["ops"]:
            lines.append(f"{phase}: per op (summed over layers; work charged to the op that launched it)")
            lines += _table(["op", "family", "qtype", "calls", "ms", "mean µs", "share"],
                            [[o["op"], str(o["family"] or "-"), str(o["qtype"] or "-"), str(o["calls"]),
                              _ms(o["time_ns"]), f"{(o['mean_ns'] or 0) / 1e3:8.1f}", _pct(o["share"])]
                             for o in p["ops"][:top]])
    if s["copies"]:
        lines.append("\ncopies by direction")
        lines += _table(["dir", "count", "bytes", "ms", "GB/s", "mean size"],
                        [[c["copy_kind"], str(c["count"]), _size(c["bytes"]), _ms(c["time_ns"]),
                          f"{c['bandwidth_Bps'] / 1e9:8.2f}", _size(c["mean_bytes"])] for c in s["copies"]])
    syncs = s["phases"]["decode"]["syncs"]
    if syncs:
        lines.append(f"\ndecode syncs: {s['decode_tokens']['syncs_per_token']:.1f} per token")
        lines += _table(["issued by", "count", "host ms"],
                        [[x["op"], str(x["count"]), _ms(x["time_ns"])] for x in syncs[:top]])
    kern = [k for k in s["top_kernels"] if k.get("count")]
    if kern:
        what = "kernels" if s["work"] == "device activity" else "timed ops"
        peak = (f"vs the {s['peak_Bps'] / 1e9:,.0f} GB/s read bandwidth" if s.get("peak_Bps")
                else "no read bandwidth known for a % of peak")
        lines.append(f"\ntop {what} (achieved weight bandwidth; {peak})")
        lines += _table(["kernel", "count", "ms", "mean µs", "GB/s", "% peak"],
                        [[k["name"][:48], str(k["count"]), _ms(k["time_ns"]), f"{k['mean_ns'] / 1e3:8.1f}",
                          f"{k['achieved_Bps'] / 1e9:8.1f}" if k["achieved_Bps"] else "-",
                          f"{k['pct_of_peak']:5.1f}" if k["pct_of_peak"] is not None else "-"]
                         for k in kern[:top]])
    lines.append("\ndiagnosis")
    if s["findings"]:
        lines += [f"  [{f['severity']}] {f['message']}" for f in s["findings"]]
    else:
        lines.append("  no faults found")
    for name, path in s["artifacts"].items():
        lines.append(f"artifact {name}: {path}")
    return "\n".join(lines)


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
    lines += _table(["config", "pp tok/s", "tg tok/s", "vs clean", "decode ms", "top decode categories"],
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


def render_agreement(table: pd.DataFrame) -> str:
    """Per-op totals of several timing modes side by side (attribution.agreement)."""
    if table.empty:
        return "timing agreement: nothing to compare"
    headers = ["op", *[str(c) for c in table.columns]]
    rows = [[str(idx), *[("-" if pd.isna(v) else f"{v:.3f}") for v in row]] for idx, row in table.iterrows()]
    return "\n".join(["\nper-op totals (ms) by timing mode", *_table(headers, rows)])


def render_bias(table: pd.DataFrame) -> str:
    """Launch-blocking host timers against CUDA events (timing_blocking.bias_table)."""
    if table.empty:
        return "launch-blocking bias: nothing to compare"
    rows = [[str(r["phase"]), str(r["family"]), f"{r['blocking_ms']:.3f}", f"{r['events_ms']:.3f}",
             "-" if pd.isna(r["bias_pct"]) else f"{r['bias_pct']:+.1f}%"] for _, r in table.iterrows()]
    return "\n".join(["\nlaunch-blocking host timers vs CUDA events",
                      *_table(["phase", "family", "blocking ms", "events ms", "bias"], rows)])
