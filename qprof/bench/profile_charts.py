"""Charts over `qprof profile` output under results/profile/: attribution stacked bars and one decode step's timeline.

Reads what the profiler writes: `qprof profile --json` ({"runs": [summary, ...]}), `--out DIR`
(DIR/**/summary.json) and `--trace FILE.json` (Chrome/Perfetto trace with per-event phase and token).
"""

from __future__ import annotations

import json
from pathlib import Path

from qprof.bench.charts import Chart, selected_card, short_model

GPU_WORK = ("kernel", "gpu_user_annotation")  # device kernels, or per-op timings when kernels weren't captured
COPIES = ("gpu_memcpy", "gpu_memset")
HOST_API = ("cuda_runtime", "cuda_driver")


def find_profiles(folder: str | Path, card: str | None = None) -> tuple[list[dict], list[Path]]:
    """(profile summaries, Chrome trace files) found anywhere under folder; unreadable files are skipped.

    card (default $QPROF_CARD): only what was measured on that card.
    """
    card = card or selected_card()
    folder = Path(folder)
    summaries: list[dict] = []
    traces: list[Path] = []
    if not folder.is_dir():
        return summaries, traces
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("traceEvents"), list):
            if card is None or trace_card(data) == card:
                traces.append(path)
        elif isinstance(data, dict) and isinstance(data.get("runs"), list):
            summaries += [dict(r, _source=str(path)) for r in data["runs"] if isinstance(r, dict) and "phases" in r]
        elif isinstance(data, dict) and "phases" in data:
            summaries.append(dict(data, _source=str(path)))
    latest = {(s.get("model"), s.get("device"), s.get("config"), s.get("timing")): s for s in summaries
              if card is None or s.get("device") == card}
    return list(latest.values()), traces


def attribution_table(summaries: list[dict], phase: str):
    """Long table: one row per (run, category) with ms (per decode token for decode, per prefill for prefill).

    run is the profiled configuration; model the short model label (the chart draws one panel per model).
    """
    import pandas as pd

    rows = []
    for s in summaries:
        ph = (s.get("phases") or {}).get(phase) or {}
        window_ms = float(ph.get("window_ms") or 0.0)
        cats = ph.get("categories") or []
        if window_ms <= 0 or not cats:
            continue
        per = max(int(s.get("n_gen") or 1), 1) if phase == "decode" else 1
        run, model = str(s.get("config") or "run"), short_model(s.get("model") or "model")
        shown = 0.0
        for c in cats:
            share = float(c.get("share") or 0.0)
            shown += share
            rows.append({"model": model, "run": run, "category": str(c.get("category")),
                         "ms": share * window_ms / per})
        if shown < 0.999:  # the summary keeps the top categories; the rest of the window is "other"
            rows.append({"model": model, "run": run, "category": "other", "ms": (1.0 - shown) * window_ms / per})
    return pd.DataFrame(rows, columns=["model", "run", "category", "ms"])


def decode_floor_ms(summaries: list[dict]) -> dict[str, float]:
    """Short model label -> the decode floor in ms per token (weight bytes / bandwidth), where the summary has it."""
    out = {}
    for s in summaries:
        floor = s.get("tg_floor_tok_s")
        if isinstance(floor, (int, float)) and floor > 0:
            out[short_model(s.get("model") or "model")] = 1000.0 / float(floor)
    return out


def profile_cards(summaries: list[dict]) -> str:
    found = sorted({str(s["device"]) for s in summaries if s.get("device")})
    return ", ".join(found) or "unknown card"


def attribution_stacked(summaries: list[dict]) -> Chart:
    """Where the time went: one column of panels per model, decode (ms per token) above prefill (ms)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    tables = {ph: attribution_table(summaries, ph) for ph in ("decode", "prefill")}
    tables = {ph: t for ph, t in tables.items() if not t.empty}
    if not tables:
        return Chart("attribution", message="no profiler summaries under results/profile/ (write one with "
                                            "`qprof profile --faults --json > results/profile/faults.json`)")
    cats = list(pd.concat(tables.values()).groupby("category")["ms"].sum().sort_values(ascending=False).index)
    cmap = plt.get_cmap("tab20")
    colors = {c: cmap(i % 20) for i, c in enumerate(cats)}
    models = list(dict.fromkeys(m for t in tables.values() for m in t["model"]))
    floors = decode_floor_ms(summaries)
    n_runs = max(t.groupby("model")["run"].nunique().max() for t in tables.values())
    fig, axes = plt.subplots(len(tables), len(models), squeeze=False,
                             figsize=(max(4.5, 0.65 * n_runs + 1.5) * len(models) + 2.5, 4.0 * len(tables)))
    for row, (phase, table) in zip(axes, tables.items()):
        for ax, model in zip(row, models):
            part = table[table["model"] == model]
            if part.empty:
                ax.set_axis_off()
                continue
            wide = part.pivot_table(index="run", columns="category", values="ms", aggfunc="sum", sort=False).fillna(0)
            bottom = pd.Series(0.0, index=wide.index)
            for c in [c for c in cats if c in wide]:
                ax.bar(range(len(wide)), wide[c], bottom=bottom, color=colors[c], label=c)
                bottom += wide[c]
            for x, total in enumerate(bottom):
                ax.annotate(f"{total:.3g}", (x, total), xytext=(0, 2), textcoords="offset points", ha="center",
                            fontsize="x-small")
            if phase == "decode" and model in floors:
                ax.axhline(floors[model], color="black", linestyle="--", linewidth=1)
                # named below the axis: a label on the line would sit on the bars, which all stand above it
                ax.set_xlabel(f"dashed line: decode floor {floors[model]:.2g} ms per token", fontsize="small")
            ax.set_xticks(range(len(wide)))
            ax.set_xticklabels(wide.index, rotation=30, ha="right", fontsize="small")
            ax.set_ylabel("ms per decode token" if phase == "decode" else "ms for the whole prefill")
            ax.set_title(f"{model}: {phase}", fontsize="medium")
            ax.margins(y=0.08)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    timing = ", ".join(sorted({str(s.get("timing")) for s in summaries if s.get("timing")})) or "?"
    caveat = ("\ntorch.profiler adds host time to every launch: launch gaps are inflated against `qprof bench`"
              if "torch" in timing else "")
    fig.suptitle(f"Where the time goes, by category ({profile_cards(summaries)}; timing: {timing}){caveat}")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="category")
    fig.tight_layout()
    table = pd.concat([t.assign(phase=ph) for ph, t in tables.items()], ignore_index=True)
    return Chart("attribution", fig, table)


def _trace(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _events(path: Path | dict) -> list[dict]:
    data = path if isinstance(path, dict) else _trace(path)
    return [e for e in data.get("traceEvents", []) if isinstance(e, dict) and e.get("ph") == "X"
            and isinstance(e.get("ts"), (int, float)) and isinstance(e.get("dur"), (int, float))]


def trace_card(data: dict) -> str:
    """The GPU a Chrome trace was captured on: deviceProperties, else the GPU process name."""
    for dev in data.get("deviceProperties") or []:
        if isinstance(dev, dict) and dev.get("name"):
            return str(dev["name"])
    for e in data.get("traceEvents", []):
        name = str((e.get("args") or {}).get("name") or "") if isinstance(e, dict) and e.get("ph") == "M" else ""
        if name.startswith("GPU") and "(" in name:
            return name[name.index("(") + 1:].rstrip(")")
    return "unknown card"


def busy_us(spans: list[tuple[float, float]], lo: float = float("-inf"), hi: float = float("inf")) -> float:
    """Length of the union of (start, end) spans, clipped to [lo, hi]: time the GPU had work."""
    total, end = 0.0, float("-inf")
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b <= a:
            continue
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def decode_step(events: list[dict]) -> tuple[int | None, list[dict]]:
    """The middle decode token of a trace and every event tagged with it (host and device)."""
    tokens = sorted({int(e["args"]["token"]) for e in events if isinstance(e.get("args"), dict)
                     and e["args"].get("phase") == "decode" and e["args"].get("token") is not None})
    if not tokens:
        return None, []
    token = tokens[len(tokens) // 2]
    return token, [e for e in events if isinstance(e.get("args"), dict) and e["args"].get("phase") == "decode"
                   and e["args"].get("token") is not None and int(e["args"]["token"]) == token]


def lane_of(ev: dict) -> str | None:
    cat = ev.get("cat")
    if cat in GPU_WORK:
        return "GPU kernels" if cat == "kernel" else "ops (timed)"
    if cat in COPIES:
        return "GPU copies"
    if cat == "cuda_sync":
        return "host sync"
    if cat in HOST_API:
        return "host CUDA API"
    if cat == "user_annotation" and (ev.get("args") or {}).get("level") == "op":
        return "host op ranges"
    return None


LANES = ("host op ranges", "host CUDA API", "host sync", "ops (timed)", "GPU kernels", "GPU copies")
ZOOM_US = 1000.0  # the zoomed panel: 1 ms from the first kernel, where single kernels are visible


def _draw_lanes(ax, rows: list[tuple[str, dict]], lanes: list[str], fam_color: dict, t0: float,
                lo: float, hi: float) -> None:
    """Each event as a bar in its lane; at least 1/1500 of the window wide so short kernels still show."""
    least = (hi - lo) / 1500.0
    for y, ln in enumerate(lanes):
        bars, colors = [], []
        for lane, e in rows:
            start = e["ts"] - t0
            if lane != ln or start > hi or start + e["dur"] < lo:
                continue
            fam = str((e.get("args") or {}).get("family") or e.get("name"))
            bars.append((start, max(e["dur"], least)))
            colors.append(fam_color.get(fam) if lane in ("GPU kernels", "ops (timed)") else
                          "tab:red" if lane in ("GPU copies", "host sync") else "0.55")
        if bars:
            ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=colors, linewidth=0)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(lo, hi)


def decode_timeline(traces: list[Path]) -> Chart:
    """One decode step from the first trace that has decode tokens: the whole step, then 1 ms of it zoomed."""
    import matplotlib.pyplot as plt
    import pandas as pd

    for path in traces:
        data = _trace(path)
        token, evs = decode_step(_events(data))
        rows = [(lane_of(e), e) for e in evs]
        rows = [(lane, e) for lane, e in rows if lane]
        if token is None or not rows:
            continue
        t0 = min(e["ts"] for _, e in rows)
        span = max(e["ts"] + e["dur"] for _, e in rows) - t0
        lanes = [ln for ln in LANES if any(lane == ln for lane, _ in rows)]
        gpu = [(e["ts"] - t0, e["ts"] - t0 + e["dur"]) for lane, e in rows
               if lane in ("GPU kernels", "GPU copies", "ops (timed)")]
        kernels = sorted(a for lane, e in rows if lane in ("GPU kernels", "ops (timed)")
                         for a in [e["ts"] - t0])
        fams = sorted({str((e.get("args") or {}).get("family") or e.get("name")) for lane, e in rows
                       if lane in ("GPU kernels", "ops (timed)")})
        cmap = plt.get_cmap("tab10")
        fam_color = {f: cmap(i % 10) for i, f in enumerate(fams)}
        zoom_lo = kernels[0] if kernels else 0.0
        zoom_hi = min(zoom_lo + ZOOM_US, span)
        zoomed = zoom_hi - zoom_lo < span * 0.8  # a short step needs no zoom
        fig, axes = plt.subplots(2 if zoomed else 1, 1, squeeze=False,
                                 figsize=(12, (0.55 * len(lanes) + 1.3) * (2 if zoomed else 1) + 1.2))
        busy = 100.0 * busy_us(gpu) / span if span > 0 else 0.0
        _draw_lanes(axes[0, 0], rows, lanes, fam_color, t0, 0.0, span)
        axes[0, 0].set_title(f"the whole step: {span / 1000:.2f} ms, {len(kernels)} kernels, GPU busy {busy:.0f}% "
                             "of it (decode is launch-bound)", fontsize="medium")
        if zoomed:
            axes[0, 0].axvspan(zoom_lo, zoom_hi, color="gold", alpha=0.3, linewidth=0)
            n_zoom = sum(zoom_lo <= k < zoom_hi for k in kernels)
            zoom_busy = 100.0 * busy_us(gpu, zoom_lo, zoom_hi) / (zoom_hi - zoom_lo)
            _draw_lanes(axes[1, 0], rows, lanes, fam_color, t0, zoom_lo, zoom_hi)
            axes[1, 0].set_facecolor((1.0, 0.97, 0.85))
            axes[1, 0].set_title(f"zoom (shaded above): {zoom_hi - zoom_lo:.0f} µs from the first kernel, "
                                 f"{n_zoom} kernels, GPU busy {zoom_busy:.0f}%", fontsize="medium")
        axes[-1, 0].set_xlabel("µs from the start of the step")
        note = data.get("qprof_note")
        fig.suptitle(f"one decode step (token {token}) on {trace_card(data)}: {path.parent.name}/{path.name}"
                     + (f"\n{note}" if isinstance(note, str) and note else ""), fontsize="medium")
        for f, c in fam_color.items():
            axes[0, 0].bar(0, 0, color=c, label=f)
        if fam_color:
            fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
                       fontsize="small", title="kernel family")
        fig.tight_layout()
        table = pd.DataFrame([{"lane": lane, "name": e.get("name"), "start_us": e["ts"] - t0, "dur_us": e["dur"]}
                              for lane, e in rows]).sort_values("start_us").reset_index(drop=True)
        return Chart("decode_timeline", fig, table)
    return Chart("decode_timeline", message="no Chrome trace with decode tokens under results/profile/ (write one "
                                            "with `qprof profile --trace results/profile/trace.json`)")
