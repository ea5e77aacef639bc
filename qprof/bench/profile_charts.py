"""Charts over `qprof profile` output under results/profile/: attribution stacked bars and one decode step's timeline.

Reads what the profiler writes: `qprof profile --json` ({"runs": [summary, ...]}), `--out DIR`
(DIR/**/summary.json) and `--trace FILE.json` (Chrome/Perfetto trace with per-event phase and token).
"""

from __future__ import annotations

import json
from pathlib import Path

from qprof.bench.charts import Chart

GPU_WORK = ("kernel", "gpu_user_annotation")  # device kernels, or per-op timings when kernels weren't captured
COPIES = ("gpu_memcpy", "gpu_memset")
HOST_API = ("cuda_runtime", "cuda_driver")


def find_profiles(folder: str | Path) -> tuple[list[dict], list[Path]]:
    """(profile summaries, Chrome trace files) found anywhere under folder; unreadable files are skipped."""
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
            traces.append(path)
        elif isinstance(data, dict) and isinstance(data.get("runs"), list):
            summaries += [dict(r, _source=str(path)) for r in data["runs"] if isinstance(r, dict) and "phases" in r]
        elif isinstance(data, dict) and "phases" in data:
            summaries.append(dict(data, _source=str(path)))
    latest = {(s.get("model"), s.get("device"), s.get("config"), s.get("timing")): s for s in summaries}
    return list(latest.values()), traces


def attribution_table(summaries: list[dict], phase: str):
    """Long table: one row per (run, category) with ms (per decode token for decode, per prefill for prefill)."""
    import pandas as pd

    rows = []
    models = {s.get("model") for s in summaries}
    for s in summaries:
        ph = (s.get("phases") or {}).get(phase) or {}
        window_ms = float(ph.get("window_ms") or 0.0)
        cats = ph.get("categories") or []
        if window_ms <= 0 or not cats:
            continue
        per = max(int(s.get("n_gen") or 1), 1) if phase == "decode" else 1
        run = str(s.get("config") or "run") + (f"\n{s.get('model')}" if len(models) > 1 else "")
        shown = 0.0
        for c in cats:
            share = float(c.get("share") or 0.0)
            shown += share
            rows.append({"run": run, "category": str(c.get("category")), "ms": share * window_ms / per})
        if shown < 0.999:  # the summary keeps the top categories; the rest of the window is "other"
            rows.append({"run": run, "category": "other", "ms": (1.0 - shown) * window_ms / per})
    return pd.DataFrame(rows, columns=["run", "category", "ms"])


def attribution_stacked(summaries: list[dict]) -> Chart:
    """Where the time went, per profiled configuration: stacked categories for decode and for prefill."""
    import matplotlib.pyplot as plt
    import pandas as pd

    tables = {ph: attribution_table(summaries, ph) for ph in ("decode", "prefill")}
    tables = {ph: t for ph, t in tables.items() if not t.empty}
    if not tables:
        return Chart("attribution", message="no profiler summaries under results/profile/ (write one with "
                                            "`qprof profile --faults --json > results/profile/faults.json`)")
    cats = list(dict.fromkeys(c for t in tables.values() for c in t.groupby("category")["ms"].sum()
                              .sort_values(ascending=False).index))
    cmap = plt.get_cmap("tab20")
    colors = {c: cmap(i % 20) for i, c in enumerate(cats)}
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 5.0), squeeze=False)
    for ax, (phase, table) in zip(axes[0], tables.items()):
        wide = table.pivot_table(index="run", columns="category", values="ms", aggfunc="sum", sort=False).fillna(0)
        bottom = pd.Series(0.0, index=wide.index)
        for c in [c for c in cats if c in wide]:
            ax.bar(range(len(wide)), wide[c], bottom=bottom, color=colors[c], label=c)
            bottom += wide[c]
        ax.set_xticks(range(len(wide)))
        ax.set_xticklabels(wide.index, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("ms per decode token" if phase == "decode" else "ms for the prefill")
        ax.set_title(f"{phase}: time by category")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    table = pd.concat([t.assign(phase=ph) for ph, t in tables.items()], ignore_index=True)
    return Chart("attribution", fig, table)


def _events(path: Path) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return [e for e in data.get("traceEvents", []) if isinstance(e, dict) and e.get("ph") == "X"
            and isinstance(e.get("ts"), (int, float)) and isinstance(e.get("dur"), (int, float))]


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


def decode_timeline(traces: list[Path]) -> Chart:
    """One decode step from the first trace that has decode tokens: kernels, copies, API calls and syncs."""
    import matplotlib.pyplot as plt
    import pandas as pd

    for path in traces:
        token, evs = decode_step(_events(path))
        rows = [(lane_of(e), e) for e in evs]
        rows = [(lane, e) for lane, e in rows if lane]
        if token is None or not rows:
            continue
        t0 = min(e["ts"] for _, e in rows)
        lanes = [ln for ln in ("host op ranges", "host CUDA API", "host sync", "ops (timed)", "GPU kernels",
                               "GPU copies") if any(lane == ln for lane, _ in rows)]
        fams = sorted({str((e.get("args") or {}).get("family") or e.get("name")) for lane, e in rows
                       if lane in ("GPU kernels", "ops (timed)")})
        cmap = plt.get_cmap("tab10")
        fam_color = {f: cmap(i % 10) for i, f in enumerate(fams)}
        fig, ax = plt.subplots(figsize=(12, 0.7 * len(lanes) + 1.8))
        for y, ln in enumerate(lanes):
            for lane, e in rows:
                if lane != ln:
                    continue
                fam = str((e.get("args") or {}).get("family") or e.get("name"))
                color = (fam_color.get(fam) if lane in ("GPU kernels", "ops (timed)") else
                         "tab:red" if lane in ("GPU copies", "host sync") else "0.6")
                ax.broken_barh([(e["ts"] - t0, max(e["dur"], 0.05))], (y - 0.35, 0.7), facecolors=color,
                               edgecolor="white", linewidth=0.4)
        ax.set_yticks(range(len(lanes)))
        ax.set_yticklabels(lanes)
        ax.invert_yaxis()
        ax.set_xlabel("µs from the start of the step")
        ax.set_title(f"one decode step (token {token}) from {path.name}")
        for f, c in fam_color.items():
            ax.bar(0, 0, color=c, label=f)
        if fam_color:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="kernel family")
        fig.tight_layout()
        table = pd.DataFrame([{"lane": lane, "name": e.get("name"), "start_us": e["ts"] - t0, "dur_us": e["dur"]}
                              for lane, e in rows]).sort_values("start_us").reset_index(drop=True)
        return Chart("decode_timeline", fig, table)
    return Chart("decode_timeline", message="no Chrome trace with decode tokens under results/profile/ (write one "
                                            "with `qprof profile --trace results/profile/trace.json`)")
