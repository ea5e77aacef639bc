"""Regression table between two result sets: % change per matching config, and whether it beats the noise."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from qprof.bench.peers import Pair
from qprof.bench.record import decode_loop_of
from qprof.bench.results import ResultSet, read_rows
from qprof.errors import QprofError

# A config is the same experiment when all of these match (the card and commit may differ: that's the point).
# decode_loop is read through decode_loop_of: a row from before the field decoded synced.
KEY_FIELDS = ("model", "n_prompt", "n_gen", "device", "mask", "scalar_upload", "sync_every_op", "inject",
              "cuda_graphs", "nvtx", "decode_loop")


def config_key(row: dict) -> tuple:
    """A qprof config, or for a peer row (llama.cpp's) its program and flash-attention setting: peer rows are
    compared only with peer rows of the same program. On the CPU runtime the thread count is part of a
    config (it changes tok/s several-fold); the GPU runtime's speed does not depend on it."""
    model = Path(str(row.get("model_filename") or row.get("model") or "?")).name
    if row.get("peer"):
        return (model, row.get("n_prompt"), row.get("n_gen"), row.get("device"), "peer", row.get("peer"),
                row.get("options"), row.get("n_depth") or 0)
    threads = row.get("n_threads") if row.get("device") == "cpu" else None
    return (model, *(row.get(k) for k in KEY_FIELDS[1:-1]), decode_loop_of(row), threads)


def options_label(row: dict) -> str:
    label = str(row.get("options") or "clean")
    return f"{row['peer']} {label}" if row.get("peer") else label


def select(spec: str) -> tuple[list[dict], str]:
    """'FILE|DIR|GLOB' or 'FILE@COMMIT' (rows whose build_commit starts with COMMIT)."""
    path, _, commit = spec.rpartition("@") if "@" in spec and not Path(spec).exists() else (spec, "", "")
    found: ResultSet = read_rows(path)
    rows = found.rows
    if commit:
        rows = [r for r in rows if str(r.get("build_commit", "")).startswith(commit)]
        if not rows:
            raise QprofError(f"no rows with build_commit {commit!r} in {path}")
    rows = [r for r in rows if isinstance(r.get("avg_ts"), (int, float))]
    if not rows:
        raise QprofError(f"no bench rows (with avg_ts) in {spec}")
    return rows, spec


def latest_by_config(rows: list[dict]) -> dict[tuple, dict]:
    """Results accumulate: when a config was run several times, the last row in the file wins."""
    out: dict[tuple, dict] = {}
    for row in rows:
        out[config_key(row)] = row
    return out


@dataclass
class Change:
    model: str
    test: str
    options: str
    device: str
    a_ts: float
    a_sd: float
    b_ts: float
    b_sd: float
    change_pct: float
    spread_pct: float  # combined run-to-run stddev, as % of A
    significant: bool

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "within noise"
        return "faster" if self.b_ts > self.a_ts else "SLOWER"


def compare_rows(a_rows: list[dict], b_rows: list[dict]) -> tuple[list[Change], int, int]:
    """(changes in A's order, configs only in A, configs only in B)."""
    a, b = latest_by_config(a_rows), latest_by_config(b_rows)
    changes = []
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        a_ts, b_ts = float(ra["avg_ts"]), float(rb["avg_ts"])
        a_sd, b_sd = float(ra.get("stddev_ts") or 0.0), float(rb.get("stddev_ts") or 0.0)
        spread = math.hypot(a_sd, b_sd)  # stddev of the difference of two independent means
        changes.append(Change(
            model=key[0], test=str(ra.get("test") or f"pp{ra.get('n_prompt')}/tg{ra.get('n_gen')}"),
            options=options_label(ra), device=str(ra.get("device")),
            a_ts=a_ts, a_sd=a_sd, b_ts=b_ts, b_sd=b_sd,
            change_pct=100.0 * (b_ts - a_ts) / a_ts if a_ts else math.inf,
            spread_pct=100.0 * spread / a_ts if a_ts else math.inf,
            significant=abs(b_ts - a_ts) > spread,
        ))
    return changes, len(set(a) - set(b)), len(set(b) - set(a))


def render_md(changes: list[Change], a_name: str, b_name: str) -> str:
    head = ("| model | test | options | device | A t/s | B t/s | change | spread | verdict |\n"
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n")
    lines = [f"| {c.model} | {c.test} | {c.options} | {c.device} | {c.a_ts:.2f} ± {c.a_sd:.2f} | "
             f"{c.b_ts:.2f} ± {c.b_sd:.2f} | {c.change_pct:+.1f}% | ±{c.spread_pct:.1f}% | {c.verdict} |"
             for c in changes]
    return f"A: {a_name}\nB: {b_name}\n\n" + head + "\n".join(lines) + "\n"


def peer_records(pairs: list[Pair]) -> list[dict]:
    """One record per llama.cpp row: the clean qprof row beside it (if any) and qprof/llama.cpp."""
    out = []
    for p in pairs:
        q = p.qprof or {}
        out.append({"model": p.model, "test": p.test, "card": p.card,
                    "qprof_options": options_label(q) if q else None, "qprof_ts": q.get("avg_ts"),
                    "qprof_sd": q.get("stddev_ts"), "peer": p.peer.get("peer"), "peer_options": p.peer.get("options"),
                    "peer_ts": p.peer.get("avg_ts"), "peer_sd": p.peer.get("stddev_ts"), "qprof_over_peer": p.ratio})
    return out


def render_peers(pairs: list[Pair], fmt: str) -> str:
    records = peer_records(pairs)
    if fmt != "md":
        return render_records(records, fmt)
    head = ("| model | test | card | qprof t/s | llama.cpp t/s | qprof/llama.cpp |\n"
            "| --- | --- | --- | ---: | ---: | ---: |\n")
    lines = []
    for r in records:
        q = f"{r['qprof_ts']:.2f} ± {r['qprof_sd'] or 0:.2f} ({r['qprof_options']})" if r["qprof_ts"] else "-"
        ratio = f"{r['qprof_over_peer']:.2f}x" if r["qprof_over_peer"] else "- (no clean qprof row on this card)"
        lines.append(f"| {r['model']} | {r['test']} | {r['card']} | {q} | "
                     f"{r['peer_ts']:.2f} ± {r['peer_sd'] or 0:.2f} ({r['peer_options']}) | {ratio} |")
    return head + "\n".join(lines) + "\n"


def render(changes: list[Change], fmt: str, a_name: str, b_name: str) -> str:
    if fmt == "md":
        return render_md(changes, a_name, b_name)
    return render_records([{**asdict(c), "verdict": c.verdict} for c in changes], fmt)


def render_records(records: list[dict], fmt: str) -> str:
    import json

    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    import csv
    import io

    buf = io.StringIO()
    fields = list(records[0]) if records else ["model"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()
