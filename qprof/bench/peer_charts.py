"""Chart of qprof beside llama.cpp: tokens/s per test and model, from peer rows and the clean qprof rows they pair with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qprof.bench.charts import Chart, compact, load_rows, panel_title, short_model
from qprof.bench.compare import peer_records
from qprof.bench.peers import pair_rows

COLUMNS = ["model", "label", "test", "card", "qprof_options", "qprof_ts", "qprof_sd", "peer", "peer_options",
           "peer_ts", "peer_sd", "qprof_over_peer"]
QPROF_COLOR = "tab:blue"
PEER_COLORS = ("tab:orange", "tab:brown", "tab:olive")


def peer_pairs(folder: str | Path | None = None, card: str | None = None) -> pd.DataFrame:
    """One row per llama.cpp row under folder (the latest per model, test, card and options), with the clean
    qprof row of the same model, test and card where one was run."""
    records = peer_records(pair_rows(load_rows(folder, card)))
    df = pd.DataFrame(records, columns=[c for c in COLUMNS if c != "label"])
    df.insert(1, "label", [short_model(m) for m in df["model"]])
    return df


def _test_order(test: str) -> tuple:
    return (test.startswith("tg"), "+" in test, test)


def qprof_vs_llama_cpp(pairs: pd.DataFrame) -> Chart:
    """One panel per test (a row of panels per card): for each model, qprof's clean row beside llama.cpp's rows,
    each llama.cpp bar labelled with qprof/llama.cpp."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    paired = pairs[pairs["qprof_over_peer"].notna()] if not pairs.empty else pairs
    if paired.empty:
        why = ("no llama.cpp rows in the results" if pairs.empty else
               f"{len(pairs)} llama.cpp row(s), none with a clean qprof row of the same model, test and card")
        return Chart("qprof_vs_llama_cpp", message=f"{why}: run `qprof bench --llama-bench PATH` (or "
                                                   "--llama-bench-json FILE) beside qprof on the same card")
    cards = sorted(paired["card"].unique())
    tests = sorted(paired["test"].unique(), key=_test_order)
    options = sorted(paired["peer_options"].astype(str).unique(), reverse=True)  # fa=1 before fa=0
    n_models = paired["label"].nunique()
    width = max(4.5, 0.9 * n_models * (1 + len(options)) + 1.5)
    fig, axes = plt.subplots(len(cards), len(tests), figsize=(width * len(tests), 4.4 * len(cards)),
                             squeeze=False, layout="constrained")
    bar = 0.8 / (1 + len(options))
    for row_axes, card in zip(axes, cards):
        for ax, test in zip(row_axes, tests):
            sub = paired[(paired["card"] == card) & (paired["test"] == test)]
            labels = list(dict.fromkeys(sub["label"]))
            top = 0.0
            for j, label in enumerate(labels):
                part = sub[sub["label"] == label]
                first = part.iloc[0]
                x0 = j - 0.4 + bar / 2
                bars = [(x0, float(first["qprof_ts"]), float(first["qprof_sd"] or 0.0), QPROF_COLOR, None)]
                for k, opt in enumerate(options):
                    hit = part[part["peer_options"].astype(str) == opt]
                    if not hit.empty:
                        h = hit.iloc[0]
                        bars.append((x0 + (k + 1) * bar, float(h["peer_ts"]), float(h["peer_sd"] or 0.0),
                                     PEER_COLORS[k % len(PEER_COLORS)], float(h["qprof_over_peer"])))
                for x, ts, sd, color, ratio in bars:
                    ax.bar(x, ts, bar, yerr=sd, capsize=3, color=color)
                    text = compact(ts) + (f"\nqprof {ratio:.2f}x" if ratio is not None else "")
                    ax.annotate(text, (x, ts + sd), xytext=(0, 3), textcoords="offset points", ha="center",
                                va="bottom", fontsize="small")
                    top = max(top, ts + sd)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize="small")
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_ylim(0, top * 1.35)
            ax.set_ylabel("tokens/s")
            ax.set_title(panel_title(test) + (f"\n{card}" if len(cards) > 1 else ""), fontsize="medium")
    fig.suptitle(f"qprof vs llama.cpp ({', '.join(cards)})\nqprof's clean row; label: qprof t/s over llama.cpp's",
                 fontsize="large")
    handles = [Patch(color=QPROF_COLOR, label="qprof (clean)")]
    handles += [Patch(color=PEER_COLORS[k % len(PEER_COLORS)], label=f"llama.cpp {opt}")
                for k, opt in enumerate(options)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    table = paired[["label", "test", "card", "qprof_options", "qprof_ts", "peer_options", "peer_ts",
                    "qprof_over_peer"]].reset_index(drop=True)
    return Chart("qprof_vs_llama_cpp", fig, table)
