"""Kernels of a replayed CUDA graph charged to the op that launched each node when the graph was captured.

A profiler sees a replay's kernels (nsys under `--cuda-graph-trace=node`, CUPTI/Kineto always),
all sharing the correlation id of the one cudaGraphLaunch, so the NVTX context charges them all
to the range around the launch ("decode_graph"). The op of each node is known only at capture:
the runtime records, in node order, the ranges that were open when each node was added
(qprof.runtime.cuda.graphs). Here every replay's device rows, ordered by graph node id where the
trace has it (nsys numbers a graph's nodes in creation order) and else by start time, are
matched one to one with the recorded nodes, and each row takes its node's op path in place of
the replay range: "run/decode/token 5/decode_graph" -> "run/decode/token 5/blk.3/blk.3.attn_q",
the path the same kernel has in an eager step. A replay whose rows do not match the recorded
nodes (count, kind, or kernel name where both are known) keeps its replay charge, and a note
says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qprof.analysis.activity import DEVICE_KINDS, context_of, make_table

_CTX = ("nvtx_range", "nvtx_path", "token", "phase", "layer")


def device_nodes(nodes: Sequence[dict]) -> list[dict]:
    """The recorded nodes that run as device activity (kernels, copies, memsets), in node order."""
    return [n for n in nodes if n.get("kind") in DEVICE_KINDS]


def _same_kernel(recorded: str | None, traced: str) -> bool:
    """Whether a captured kernel node's function name and a traced kernel's name are one kernel."""
    if not recorded:
        return True
    rec, got = recorded.lower(), traced.lower()
    return rec == got or got in rec or rec in got  # mangled vs demangled short names contain each other


def _orders(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The replay's rows in node order: by graph node id where the trace has them, else (or failing that) by start."""
    by_start = ("order within each replay", rows.sort_values(["start_ns", "end_ns"], kind="stable"))
    if rows["graph_node"].notna().all():
        return [("graph node id", rows.sort_values(["graph_node", "start_ns"], kind="stable")), by_start]
    return [by_start]


def _mismatch(rows: pd.DataFrame, nodes: list[dict]) -> str | None:
    if len(rows) != len(nodes):
        return f"{len(rows)} device rows against {len(nodes)} recorded nodes"
    for i, (kind, name, node) in enumerate(zip(rows["kind"], rows["name"], nodes)):
        if kind != node["kind"]:
            return f"node {i} is a {kind} in the trace but a {node['kind']} at capture"
        if kind == "kernel" and not _same_kernel(node.get("kernel"), str(name)):
            return f"node {i} runs {name} but {node.get('kernel')} was captured"
    return None


def charge_replays(df: pd.DataFrame, nodes: Sequence[dict], replay_op: str) -> tuple[pd.DataFrame, list[str]]:
    """Charge every device row of each replay of the graph to its node's op; return the table and notes."""
    recorded = device_nodes(nodes)
    replay = df["kind"].isin(DEVICE_KINDS) & (df["nvtx_range"] == replay_op) & df["correlation_id"].notna()
    if not replay.any():
        return df, []
    if not recorded:
        return df, [(f"decode ran as a CUDA graph, but no node of it was recorded at capture: its kernels stay "
                    f"charged to {replay_op}")]
    df = df.copy()
    updates: dict[int, dict] = {}
    matched, failed, hows = 0, [], set()
    for _, group in df[replay].groupby("correlation_id"):
        tried = [(how, rows, _mismatch(rows, recorded)) for how, rows in _orders(group)]
        found = next(((how, rows) for how, rows, why in tried if why is None), None)
        if found is None:
            failed.append(tried[0][2])
            continue
        how, rows = found
        hows.add(how)
        for idx, path, node in zip(rows.index, rows["nvtx_path"], recorded):
            op_path = list(node.get("path") or ())
            if not op_path:
                continue  # added outside every op range: the replay range is its op
            outer = str(path).split("/")
            if outer and outer[-1] == replay_op:
                outer = outer[:-1]
            updates[idx] = context_of(outer + op_path)
        matched += 1
    if updates:
        ctx = pd.DataFrame.from_dict(updates, orient="index")
        for col in _CTX:
            df[col] = df[col].astype(object)
            df.loc[ctx.index, col] = ctx[col].astype(object).to_numpy()
    notes = []
    if matched:
        how = " and ".join(sorted(hows))
        notes.append(f"decode ran as a CUDA graph: {matched} replay(s) of {len(recorded)} nodes, each node charged "
                     f"to the op that launched it at capture (matched by {how})")
    if failed:
        notes.append(f"{len(failed)} replay(s) did not match the {len(recorded)} recorded nodes ({failed[0]}): "
                     f"their work stays charged to {replay_op}")
    return make_table(df), notes


def op_meta(nodes: Sequence[dict]) -> dict[str, tuple[str | None, str | None]]:
    """Op range name -> (family, qtype) of the ops recorded at capture: the per-op table's family column."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for node in nodes:
        path = node.get("path") or ()
        if path:
            out.setdefault(path[-1], (node.get("family"), node.get("qtype")))
    return out
