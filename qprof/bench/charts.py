"""Charts over bench results (results/*.jsonl) for the notebooks: each returns a figure, a table, or why not.

Every chart uses only rows that exist. When the results hold no rows of the kind a chart needs,
it returns no figure and a one-line reason, which the notebook prints; nothing is invented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qprof.bench.compare import config_key
from qprof.bench.record import FIELDS
from qprof.bench.results import read_rows

# (switch, value with the fault on, what it does): the seed's faults; off = the CLEAN value
FAULTS = (
    ("mask", "upload", "causal mask built on the host and uploaded in every layer"),
    ("scalar_upload", True, "a host->device scalar copy inside every layer"),
    ("sync_every_op", True, "a device synchronize after every op"),
    ("inject", "block-dim", "dequant kernels launched with the wrong block size"),
)
CLEAN = {"mask": "skip", "scalar_upload": False, "sync_every_op": False, "inject": "none", "cuda_graphs": False,
         "nvtx": False}


@dataclass
class Chart:
    name: str  # file stem of the exported PNG
    fig: object | None = None  # matplotlib Figure
    table: pd.DataFrame | None = None
    message: str = ""


def results_dir() -> Path:
    """$QPROF_RESULTS_DIR, else the nearest results/ folder at or above the working directory."""
    env = os.environ.get("QPROF_RESULTS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "results").is_dir():
            return folder / "results"
    return here / "results"


def charts_dir() -> Path | None:
    """Where PNGs go: $QPROF_CHARTS_DIR (set by `python -m qprof.bench.notebooks`); None = don't export."""
    env = os.environ.get("QPROF_CHARTS_DIR")
    return Path(env) if env else None


def load_bench(folder: str | Path | None = None) -> pd.DataFrame:
    """Every bench row under folder/*.jsonl, the latest per config and platform, with a 'platform' label."""
    folder = Path(folder) if folder is not None else results_dir()
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    rows = [r for f in files for r in read_rows(f).rows if isinstance(r.get("avg_ts"), (int, float))]
    if not rows:
        return pd.DataFrame(columns=[*FIELDS, "platform"])
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(*config_key(r), r.get("gpu_name"))] = r
    df = pd.DataFrame(list(latest.values()))
    for col in FIELDS:
        if col not in df:
            df[col] = None
    df["platform"] = [g if isinstance(g, str) and g else f"CPU ({c})" for g, c in zip(df["gpu_name"], df["cpu_info"])]
    df["options"] = df["options"].fillna("clean")
    return df


def series_label(df: pd.DataFrame) -> pd.Series:
    """The model, with the card only when the results span several platforms."""
    if df["platform"].nunique() > 1:
        return df["model"] + " @ " + df["platform"]
    return df["model"]


def describe(df: pd.DataFrame) -> str:
    if df.empty:
        return "no bench rows found"
    return (f"{len(df)} bench rows: {df['model'].nunique()} model(s), {df['test'].nunique()} test(s), "
            f"platforms: {', '.join(sorted(df['platform'].unique()))}")


def clean_rows(df: pd.DataFrame) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, value in CLEAN.items():
        mask &= df[col].fillna(value) == value
    return df[mask]


def _bars(ax, frame: pd.DataFrame, x: str, hue: str, title: str, log: bool = False) -> None:
    """Grouped bars of avg_ts with stddev_ts error bars: one group per x, one bar per hue."""
    xs = list(dict.fromkeys(frame[x]))
    hues = list(dict.fromkeys(frame[hue]))
    width = 0.8 / max(len(hues), 1)
    for i, h in enumerate(hues):
        sub = frame[frame[hue] == h].set_index(x)
        pos = [j + (i - (len(hues) - 1) / 2) * width for j, v in enumerate(xs) if v in sub.index]
        vals = [float(sub.loc[v, "avg_ts"]) for v in xs if v in sub.index]
        errs = [float(sub.loc[v, "stddev_ts"] or 0.0) for v in xs if v in sub.index]
        ax.bar(pos, vals, width, yerr=errs, capsize=3, label=str(h))
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=30, ha="right")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if len(hues) > 1:
        ax.legend(fontsize="small")


def _per_test(df: pd.DataFrame, name: str, x: str, hue: str, title: str, empty: str) -> Chart:
    import matplotlib.pyplot as plt

    if df.empty:
        return Chart(name, message=empty)
    tests = list(dict.fromkeys(df.sort_values("n_gen")["test"]))
    fig, axes = plt.subplots(1, len(tests), figsize=(5.5 * len(tests), 4.2), squeeze=False)
    for ax, test in zip(axes[0], tests):
        _bars(ax, df[df["test"] == test], x, hue, f"{test}")
    fig.suptitle(title)
    fig.tight_layout()
    table = df[[x, hue, "test", "avg_ts", "stddev_ts"]].sort_values(["test", x]).reset_index(drop=True)
    return Chart(name, fig, table)


def tokens_by_quant(df: pd.DataFrame) -> Chart:
    """Clean (no fault) tokens/s per model, which names its quant type, one panel per test."""
    rows = clean_rows(df).sort_values(["quant", "model"])
    return _per_test(rows, "tokens_by_quant", "model", "platform", "tokens/s by quant type (no faults)",
                     "no clean (fault-free) bench rows in the results: nothing to chart by quant type")


def tokens_by_mode(df: pd.DataFrame) -> Chart:
    """tokens/s per option set (fault switches, graphs, nvtx), one panel per test, one bar colour per model."""
    if df.empty or df["options"].nunique() < 2:
        return Chart("tokens_by_mode", message="the results hold fewer than two option sets (modes): run "
                                               "`qprof bench --mask upload,skip ...` to compare modes")
    rows = df.assign(series=series_label(df))
    return _per_test(rows, "tokens_by_mode", "options", "series", "tokens/s by mode", "")


def fault_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (fault, model, test, platform) that has both the fault-on row and the clean row."""
    cols = ["fault", "what", "model", "test", "platform", "on_ts", "on_sd", "off_ts", "off_sd", "change_pct"]
    out = []
    base = clean_rows(df)
    for switch, on, what in FAULTS:
        on_rows = df[df[switch] == on]
        for col, value in CLEAN.items():
            if col != switch:  # only this fault on: the others at their clean values
                on_rows = on_rows[on_rows[col].fillna(value) == value]
        merged = on_rows.merge(base, on=["model", "test", "platform"], suffixes=("_on", "_off"))
        for _, m in merged.iterrows():
            out.append({"fault": f"{switch}={on}", "what": what, "model": m["model"], "test": m["test"],
                        "platform": m["platform"], "on_ts": m["avg_ts_on"], "on_sd": m["stddev_ts_on"],
                        "off_ts": m["avg_ts_off"], "off_sd": m["stddev_ts_off"],
                        "change_pct": 100.0 * (m["avg_ts_off"] - m["avg_ts_on"]) / m["avg_ts_on"]})
    return pd.DataFrame(out, columns=cols)


def faults_before_after(df: pd.DataFrame) -> Chart:
    """For each fault: tokens/s with it on (before the fix) and off (after), per model and test."""
    import matplotlib.pyplot as plt

    pairs = fault_pairs(df)
    if pairs.empty:
        return Chart("faults_before_after", message="no fault-on row has a matching clean row in the results: run "
                     "e.g. `qprof bench --mask upload,skip --sync-every-op 0,1` to measure before/after")
    faults = list(dict.fromkeys(pairs["fault"]))
    widest = int(pairs.groupby("fault").size().max())
    fig, axes = plt.subplots(len(faults), 1, figsize=(max(6.0, 1.5 * widest + 2), 3.8 * len(faults)),
                             squeeze=False)
    for ax, fault in zip(axes[:, 0], faults):
        sub = pairs[pairs["fault"] == fault]
        labels = [f"{m}\n{t}" for m, t in zip(sub["model"], sub["test"])]
        pos = range(len(sub))
        ax.bar([p - 0.2 for p in pos], sub["on_ts"], 0.4, yerr=sub["on_sd"], capsize=3, label="fault on (before)",
               color="tab:red")
        ax.bar([p + 0.2 for p in pos], sub["off_ts"], 0.4, yerr=sub["off_sd"], capsize=3, label="fault off (after)",
               color="tab:green")
        for p, on_ts, off_ts, pct in zip(pos, sub["on_ts"], sub["off_ts"], sub["change_pct"]):
            ax.annotate(f"{pct:+.0f}%", (p + 0.2, off_ts), ha="center", va="bottom", fontsize="small")
        ax.set_xticks(list(pos))
        ax.set_xticklabels(labels, fontsize="small")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{fault}\n{sub['what'].iloc[0]}", fontsize="medium")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return Chart("faults_before_after", fig, pairs)


def prompt_vs_decode(df: pd.DataFrame) -> Chart:
    """Clean prompt processing (pp) beside decode (tg) tokens/s for each model, log scale."""
    import matplotlib.pyplot as plt

    rows = clean_rows(df)
    rows = rows[rows["test"].str.match(r"^(pp|tg)\d+$", na=False)]
    if rows.empty or set(rows["test"].str[:2]) != {"pp", "tg"}:
        return Chart("prompt_vs_decode", message="the results need both pp and tg rows without faults "
                                                 "to compare prompt processing with decode")
    rows = rows.assign(series=series_label(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * rows["series"].nunique()), 4.5))
    _bars(ax, rows.sort_values("n_gen"), "series", "test", "prompt processing vs decode (no faults)", log=True)
    fig.tight_layout()
    table = rows.pivot_table(index="series", columns="test", values="avg_ts").reset_index()
    return Chart("prompt_vs_decode", fig, table)


def pct_of_floor(df: pd.DataFrame) -> Chart:
    """Decode tokens/s as a share of the memory-bandwidth floor (bandwidth / weight bytes per token)."""
    import matplotlib.pyplot as plt

    rows = df[df["pct_of_floor"].notna() & df["floor_ts"].notna()] if not df.empty else df
    if rows.empty:
        return Chart("pct_of_floor", message="no tg rows with a bandwidth floor in the results (the floor needs "
                                             "a known bandwidth: a GPU run, or --bandwidth)")
    rows = rows.assign(label=rows["model"] + "\n" + rows["options"] + " " + rows["test"]).sort_values("pct_of_floor")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.8))
    ax.barh(rows["label"], rows["pct_of_floor"], color="tab:blue")
    ax.axvline(100.0, color="black", linestyle="--", linewidth=1)
    for y, (pct, ts, floor) in enumerate(zip(rows["pct_of_floor"], rows["avg_ts"], rows["floor_ts"])):
        ax.annotate(f" {pct:.0f}%  ({ts:.0f} of {floor:.0f} t/s)", (pct, y), va="center", fontsize="small")
    sources = "; ".join(sorted({f"{b:g} GB/s: {s}" for b, s in zip(rows["bandwidth_GBps"], rows["bandwidth_source"])}))
    ax.set_xlabel("% of the bandwidth floor (decode tokens/s / (bandwidth / bytes per token))")
    ax.set_title(f"decode vs memory-bandwidth floor\n{sources}", fontsize="medium")
    ax.set_xlim(0, max(110.0, float(rows["pct_of_floor"].max()) * 1.35))
    fig.tight_layout()
    table = rows[["model", "options", "test", "platform", "avg_ts", "floor_ts", "pct_of_floor", "bytes_per_token",
                  "bandwidth_GBps"]].reset_index(drop=True)
    return Chart("pct_of_floor", fig, table)


def show(chart: Chart, export: Path | None = None) -> Path | None:
    """Notebook helper: print the reason when there is no chart, else export the PNG (when asked) and the table."""
    if chart.fig is None:
        print(f"[{chart.name}] no chart: {chart.message}")
        return None
    path = None
    folder = export if export is not None else charts_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{chart.name}.png"
        chart.fig.savefig(path, dpi=120, bbox_inches="tight")
        print(f"[{chart.name}] exported {path}")
    if chart.table is not None:
        try:
            from IPython.display import display

            display(chart.table)
        except ImportError:
            print(chart.table.to_string())
    return path
