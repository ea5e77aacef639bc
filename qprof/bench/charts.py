"""Charts over bench results (results/*.jsonl) for the notebooks: each returns a figure, a table, or why not.

Every chart uses only rows that exist. When the results hold no rows of the kind a chart needs,
it returns no figure and a one-line reason, which the notebook prints; nothing is invented.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qprof.bench.compare import config_key
from qprof.bench.record import FIELDS, decode_loop_of
from qprof.bench.results import read_rows

# (switch, value with the fault on, what it does): the seed's faults; off = the CLEAN value
FAULTS = (
    ("mask", "upload", "causal mask built on the host and uploaded on every forward"),
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
    """$QPROF_RESULTS_DIR, else the folder `qprof bench` appends to by default (see qprof.paths)."""
    env = os.environ.get("QPROF_RESULTS_DIR")
    if env:
        return Path(env)
    from qprof.paths import default_results_file

    return default_results_file()[0].parent


def charts_dir() -> Path | None:
    """Where PNGs go: $QPROF_CHARTS_DIR (set by `python -m qprof.bench.notebooks`); None = don't export."""
    env = os.environ.get("QPROF_CHARTS_DIR")
    return Path(env) if env else None


def selected_card() -> str | None:
    """$QPROF_CARD: draw only rows measured on this card (e.g. 'NVIDIA H200'); unset = every card."""
    return os.environ.get("QPROF_CARD") or None


def load_rows(folder: str | Path | None = None, card: str | None = None) -> list[dict]:
    """Every measured row (qprof's and peers') under folder/*.jsonl, with its 'platform'; only card's if given."""
    from qprof.bench.peers import card as card_of

    folder = Path(folder) if folder is not None else results_dir()
    card = card or selected_card()
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    rows = [dict(r, platform=card_of(r)) for f in files for r in read_rows(f).rows
            if isinstance(r.get("avg_ts"), (int, float))]
    return [r for r in rows if card is None or r["platform"] == card]


def load_bench(folder: str | Path | None = None, card: str | None = None) -> pd.DataFrame:
    """qprof's bench rows under folder/*.jsonl (peer rows left out), the latest per config and platform."""
    rows = [r for r in load_rows(folder, card) if not r.get("peer")]
    if not rows:
        return pd.DataFrame(columns=[*FIELDS, "platform"])
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(*config_key(r), r.get("gpu_name"))] = r
    df = pd.DataFrame(list(latest.values()))
    for col in FIELDS:
        if col not in df:
            df[col] = None
    df["options"] = df["options"].fillna("clean")
    return df


SIZE_RE = re.compile(r"\d+(?:\.\d+)?[bBmM]")
QUANT_RE = re.compile(r"(?i)(?:^|[-_. ])(I?Q\d(?:_K)?(?:_[0-9A-Z]+)*|BF16|F16|F32)(?=$|[-_. ])")


def short_model(name: object, quant: object = None) -> str:
    """'mistral-7b-q4_k_m.gguf' -> 'Mistral-7B Q4_K_M'; '/x/SmolLM2-135M-Instruct.Q4_1.gguf' -> 'SmolLM2-135M Q4_1'.

    The family (first word) and a size word after it, then the quant type (given, else read from the name).
    """
    stem = Path(str(name)).name
    stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
    found = QUANT_RE.search(stem)
    quant = str(quant) if isinstance(quant, str) and quant else (found.group(1).upper() if found else "")
    base = stem[:found.start()] if found and found.start() > 0 else stem
    parts = [p for p in re.split(r"[-_. ]+", base) if p]
    words = parts[:1] + [p for p in parts[1:2] if SIZE_RE.fullmatch(p)]
    words = [w.upper() if SIZE_RE.fullmatch(w) else (w[:1].upper() + w[1:] if w.islower() else w) for w in words]
    return " ".join(x for x in ("-".join(words) or stem, quant) if x)


def model_labels(df: pd.DataFrame) -> pd.Series:
    """Short model labels per row (from the model file's name and the quant); the run name where two collide."""
    short = pd.Series([short_model(f if isinstance(f, str) and f else m, q)
                       for f, m, q in zip(df["model_filename"], df["model"], df["quant"])], index=df.index,
                      dtype=object)
    clash = short.groupby(short).transform(lambda s: df.loc[s.index, "model"].nunique() > 1) if len(df) else short
    return short.where(~clash.astype(bool), df["model"])


def cards(df: pd.DataFrame) -> str:
    """The card(s) the rows were measured on, for titles."""
    return ", ".join(sorted(df["platform"].dropna().unique())) or "unknown card"


def decode_loops(df: pd.DataFrame) -> pd.Series:
    """Each row's decode loop (qprof.bench.record.decode_loop_of): "in-flight", "synced", or None for pp rows."""
    recorded = df["decode_loop"] if "decode_loop" in df else pd.Series(None, index=df.index, dtype=object)
    loops = [decode_loop_of({"n_gen": n if pd.notna(n) else 0, "decode_loop": lp if isinstance(lp, str) else None})
             for n, lp in zip(df["n_gen"], recorded)]
    return pd.Series(loops, index=df.index, dtype=object)


def decode_mode(df: pd.DataFrame) -> pd.Series:
    """How a row decoded: CUDA graph or eager, and "in flight" where its tokens were chained on the device."""
    modes = ["CUDA-graph decode" if g is True else "eager decode" for g in df["cuda_graphs"]]
    return pd.Series([m + (", in flight" if lp == "in-flight" else "") for m, lp in zip(modes, decode_loops(df))],
                     index=df.index)


def series_label(df: pd.DataFrame) -> pd.Series:
    """The short model label, with the card only when the results span several platforms."""
    label = model_labels(df)
    if df["platform"].nunique() > 1:
        return label + " @ " + df["platform"]
    return label


def describe(df: pd.DataFrame) -> str:
    if df.empty:
        return "no bench rows found"
    return (f"{len(df)} bench rows: {df['model'].nunique()} model(s), {df['test'].nunique()} test(s), "
            f"platforms: {', '.join(sorted(df['platform'].unique()))}")


def clean_rows(df: pd.DataFrame, any_graphs: bool = False) -> pd.DataFrame:
    """Rows with every fault switch off (and, unless any_graphs, eager decode and no NVTX)."""
    mask = pd.Series(True, index=df.index)
    for col, value in CLEAN.items():
        if not (any_graphs and col == "cuda_graphs"):
            mask &= df[col].fillna(value) == value
    return df[mask]


def panel_title(test: str) -> str:
    kind = "prompt processing" if test.startswith("pp") and "+" not in test else (
        "decode" if test.startswith("tg") else "prompt + decode")
    return f"{test}: {kind} tokens/s"


def compact(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _bars(ax, frame: pd.DataFrame, x: str, hue: str, title: str, log: bool = False) -> None:
    """Grouped bars of avg_ts with stddev_ts error bars and value labels: one group per x, one bar per hue."""
    xs = list(dict.fromkeys(frame[x]))
    hues = list(dict.fromkeys(frame[hue]))
    width = 0.8 / max(len(hues), 1)
    small = len(xs) * len(hues) > 8
    for i, h in enumerate(hues):
        sub = frame[frame[hue] == h].set_index(x)
        pos = [j + (i - (len(hues) - 1) / 2) * width for j, v in enumerate(xs) if v in sub.index]
        vals = [float(sub.loc[v, "avg_ts"]) for v in xs if v in sub.index]
        errs = [float(sub.loc[v, "stddev_ts"] or 0.0) for v in xs if v in sub.index]
        bars = ax.bar(pos, vals, width, yerr=errs, capsize=3, label=str(h))
        ax.bar_label(bars, labels=[compact(v) for v in vals], fontsize=6 if small else 7.5, padding=2,
                     rotation=90 if small else 0)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=25 if len(xs) > 3 else 0, ha="right" if len(xs) > 3 else "center",
                       fontsize="small")
    ax.set_ylabel("tokens/s")
    ax.set_title(title, fontsize="medium")
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.18 if not log else 0.3)
    if len(hues) > 1:
        ax.legend(fontsize="small")


def _per_test(df: pd.DataFrame, name: str, x: str, hue: str, title: str, empty: str) -> Chart:
    import matplotlib.pyplot as plt

    if df.empty:
        return Chart(name, message=empty)
    tests = list(dict.fromkeys(df.sort_values("n_gen")["test"]))
    width = max(5.5, 0.35 * df[x].nunique() * df[hue].nunique() + 2.0)
    fig, axes = plt.subplots(1, len(tests), figsize=(width * len(tests), 4.6), squeeze=False)
    for ax, test in zip(axes[0], tests):
        _bars(ax, df[df["test"] == test], x, hue, panel_title(test))
    fig.suptitle(title)
    fig.tight_layout()
    table = df[[x, hue, "test", "avg_ts", "stddev_ts"]].sort_values(["test", x]).reset_index(drop=True)
    return Chart(name, fig, table)


def tokens_by_quant(df: pd.DataFrame) -> Chart:
    """Fault-free tokens/s per model (labelled with its quant type), eager vs CUDA graphs, one panel per test."""
    rows = clean_rows(df, any_graphs=True)
    if rows.empty:
        return Chart("tokens_by_quant", message="no clean (fault-free) bench rows in the results: nothing to chart "
                                                "by quant type")
    rows = rows.assign(label=series_label(rows), decode=decode_mode(rows)).sort_values(["quant", "label"])
    return _per_test(rows, "tokens_by_quant", "label", "decode",
                     f"tokens/s by model and quant type, no faults ({cards(rows)})", "")


def tokens_by_mode(df: pd.DataFrame) -> Chart:
    """tokens/s per option set (fault switches, graphs, nvtx), one panel per test, one bar colour per model."""
    if df.empty or df["options"].nunique() < 2:
        return Chart("tokens_by_mode", message="the results hold fewer than two option sets (modes): run "
                                               "`qprof bench --mask upload,skip ...` to compare modes")
    rows = df.assign(series=series_label(df))
    return _per_test(rows, "tokens_by_mode", "options", "series",
                     f"tokens/s by mode: fault switches and CUDA graphs ({cards(rows)})", "")


def fault_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (fault, model, test, platform, graphs, decode loop) with both the fault-on row and the clean row.

    Pairs match on cuda_graphs too, so a fault that forces eager decode is never set against a
    graph-captured clean run, and on the decode loop (an in-flight label says so). change_pct is the speed-up from removing the fault, with the
    uncertainty (change_sd) carried from both rows' run-to-run standard deviations.
    """
    cols = ["fault", "what", "model", "label", "test", "platform", "cuda_graphs", "on_ts", "on_sd", "off_ts",
            "off_sd", "change_pct", "change_sd"]
    out = []
    df = df.assign(loop=decode_loops(df).fillna("none"))  # a fault row is set against a clean row of its own loop
    base = clean_rows(df, any_graphs=True).assign(label=model_labels(df))
    keys = ["model", "test", "platform", "cuda_graphs", "loop"]
    for switch, on, what in FAULTS:
        on_rows = df[df[switch] == on]
        for col, value in CLEAN.items():
            if col not in (switch, "cuda_graphs"):  # only this fault on: the others at their clean values
                on_rows = on_rows[on_rows[col].fillna(value) == value]
        on_rows = on_rows.assign(cuda_graphs=on_rows["cuda_graphs"].fillna(False))
        merged = on_rows.merge(base.assign(cuda_graphs=base["cuda_graphs"].fillna(False)), on=keys,
                               suffixes=("_on", "_off"))
        for _, m in merged.iterrows():
            on_ts, off_ts = float(m["avg_ts_on"]), float(m["avg_ts_off"])
            on_sd, off_sd = float(m["stddev_ts_on"] or 0.0), float(m["stddev_ts_off"] or 0.0)
            ratio = off_ts / on_ts
            label = m["label"] + (" in flight" if m["loop"] == "in-flight" else "")
            out.append({"fault": f"{switch}={on}", "what": what, "model": m["model"], "label": label,
                        "test": m["test"], "platform": m["platform"], "cuda_graphs": bool(m["cuda_graphs"]),
                        "on_ts": on_ts, "on_sd": on_sd, "off_ts": off_ts, "off_sd": off_sd,
                        "change_pct": 100.0 * (ratio - 1.0),
                        "change_sd": 100.0 * ratio * math.hypot(on_sd / on_ts, off_sd / off_ts)})
    return pd.DataFrame(out, columns=cols)


def faults_before_after(df: pd.DataFrame) -> Chart:
    """One row of panels per fault, one panel per test: tokens/s with the fault on (before) and off (after)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    on_cpu = df["device"].eq("cpu") if "device" in df else pd.Series(False, index=df.index)
    pairs = fault_pairs(df[~on_cpu])  # the CPU runtime ignores the fault switches: its pairs are noise
    if pairs.empty:
        if not fault_pairs(df[on_cpu]).empty:
            return Chart("faults_before_after", message="the only fault rows are from the CPU runtime, which ignores "
                         "the fault switches (their differences are noise): run `qprof bench --faults` on a GPU")
        return Chart("faults_before_after", message="no fault-on row has a matching clean row in the results: run "
                     "e.g. `qprof bench --faults` to measure before/after")
    faults = list(dict.fromkeys(pairs["fault"]))
    tests = sorted(dict.fromkeys(pairs["test"]), key=lambda t: (t.startswith("tg"), t))
    labels = list(dict.fromkeys(pairs["label"] + pairs["cuda_graphs"].map({True: " (graphs)", False: ""})))
    fig = plt.figure(figsize=(max(5.0, 1.7 * len(labels) + 1.5) * len(tests), 3.3 * len(faults) + 0.9),
                     layout="constrained")
    rows = fig.subfigures(len(faults), 1, squeeze=False)[:, 0]
    for sub_fig, fault in zip(rows, faults):
        sub = pairs[pairs["fault"] == fault]
        sub_fig.suptitle(f"{fault}: {sub['what'].iloc[0]}", fontsize="medium", fontweight="bold")
        axes = sub_fig.subplots(1, len(tests), squeeze=False)[0]
        for ax, test in zip(axes, tests):
            part = sub[sub["test"] == test]
            names = list(part["label"] + part["cuda_graphs"].map({True: " (graphs)", False: ""}))
            pos = list(range(len(part)))
            ax.bar([p - 0.2 for p in pos], part["on_ts"], 0.4, yerr=part["on_sd"], capsize=3, color="tab:red")
            ax.bar([p + 0.2 for p in pos], part["off_ts"], 0.4, yerr=part["off_sd"], capsize=3, color="tab:green")
            for p, top, pct, sd in zip(pos, part[["on_ts", "off_ts"]].max(axis=1) + part[["on_sd", "off_sd"]]
                                       .max(axis=1), part["change_pct"], part["change_sd"]):
                noise = abs(pct) <= 2 * sd
                ax.annotate(f"fix: {pct:+.0f}% ± {sd:.0f}" + ("\n(within noise)" if noise else ""), (p, top),
                            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize="small",
                            color="0.35" if noise else ("tab:green" if pct > 0 else "tab:red"))
            ax.set_xticks(pos)
            ax.set_xticklabels(names, fontsize="small")
            ax.set_xlim(-0.6, max(len(pos), 1) - 0.4)
            ax.set_ylim(0, float((part[["on_ts", "off_ts"]].max(axis=1) + part[["on_sd", "off_sd"]].max(axis=1))
                                 .max()) * 1.3)
            ax.set_ylabel("tokens/s")
            ax.set_title(panel_title(test), fontsize="small")
    eager = "eager decode" if not pairs["cuda_graphs"].any() else "graph rows marked (graphs)"
    fig.suptitle(f"Before / after each fault ({cards(pairs)}, {eager})\n"
                 "fix: tokens/s change from removing the fault, ± from both runs' standard deviations",
                 fontsize="large")
    fig.legend(handles=[Patch(color="tab:red", label="before: fault on"),
                        Patch(color="tab:green", label="after: fault off (the clean run)")],
               loc="outside lower center", ncols=2)
    return Chart("faults_before_after", fig, pairs.drop(columns=["what"]))


def prompt_vs_decode(df: pd.DataFrame) -> Chart:
    """Fault-free prompt processing (pp) beside decode (tg) tokens/s for each model, log scale."""
    import matplotlib.pyplot as plt

    rows = clean_rows(df, any_graphs=True)
    rows = rows[rows["test"].str.match(r"^(pp|tg)\d+$", na=False)]
    if rows.empty or set(rows["test"].str[:2]) != {"pp", "tg"}:
        return Chart("prompt_vs_decode", message="the results need both pp and tg rows without faults "
                                                 "to compare prompt processing with decode")
    graphs = rows["cuda_graphs"].fillna(False).astype(bool)
    rows = rows.assign(series=series_label(rows) + graphs.map({True: "\n(CUDA graphs)", False: "\n(eager)"}),
                       test=rows["test"] + decode_loops(rows).map({"in-flight": " in flight"}).fillna(""))
    rows = rows.sort_values(["series", "n_gen"])
    fig, ax = plt.subplots(figsize=(max(6.5, 1.9 * rows["series"].nunique() + 1.5), 4.8))
    _bars(ax, rows.sort_values("n_gen"), "series", "test",
          f"prompt processing (pp) vs decode (tg), no faults\n{cards(rows)}; decode reads every weight per token",
          log=True)
    fig.tight_layout()
    table = rows.pivot_table(index="series", columns="test", values="avg_ts").reset_index()
    return Chart("prompt_vs_decode", fig, table)


def pct_of_floor(df: pd.DataFrame) -> Chart:
    """Decode tokens/s as a share of the decode floor (memory bandwidth / weight bytes read per token)."""
    import matplotlib.pyplot as plt

    rows = df[df["pct_of_floor"].notna() & df["floor_ts"].notna()] if not df.empty else df
    if rows.empty:
        return Chart("pct_of_floor", message="no tg rows with a bandwidth floor in the results (the floor needs "
                                             "a known bandwidth: a GPU run, or --bandwidth)")
    rows = rows.assign(label=series_label(rows) + " · " + rows["options"] + " · " + rows["test"])
    rows = rows.sort_values(["model", "pct_of_floor"])
    pct = rows["pct_of_floor"].astype(float)
    log = float(pct.min()) < 2.0  # a launch-bound small model sits far below 1%: a linear axis hides it
    fig, ax = plt.subplots(figsize=(9.0, 0.42 * len(rows) + 2.0))
    ax.barh(rows["label"], pct, color=["tab:blue" if g is True else "tab:gray" for g in rows["cuda_graphs"]])
    ax.axvline(100.0, color="black", linestyle="--", linewidth=1, zorder=2)
    ax.annotate("decode floor (100%)", (100.0, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -3),
                textcoords="offset points", ha="right", va="top", fontsize="small")
    for y, (p, ts, floor) in enumerate(zip(pct, rows["avg_ts"], rows["floor_ts"])):
        # on a white box drawn over the floor line, so a label that reaches the line stays readable
        ax.annotate(f"{p:.2g}%  ({ts:.0f} of {floor:,.0f} t/s)", (p, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize="small", zorder=3,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    sources = "; ".join(sorted({f"{b:g} GB/s: {s}" for b, s in zip(rows["bandwidth_GBps"], rows["bandwidth_source"])}))
    if log:
        ax.set_xscale("log")
        ax.set_xlim(float(pct.min()) / 2, 400.0)
    else:
        ax.set_xlim(0, max(110.0, float(pct.max()) * 1.35))
    ax.set_xlabel("% of the decode floor = decode tokens/s / (bandwidth / weight bytes per token)"
                  + (", log scale" if log else ""))
    ax.tick_params(axis="y", labelsize="small")
    ax.set_title(f"decode vs the memory-bandwidth decode floor ({cards(rows)})\n{sources}\n"
                 "blue: CUDA graphs, grey: eager", fontsize="medium")
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
