"""One profiled configuration as the report's dict: the run's header (model, tok/s, floor, graph) + the shared analysis."""

from __future__ import annotations

from qprof.analysis.activity import work_rows
from qprof.analysis.graph_ops import device_nodes, op_meta
from qprof.analysis.report import summarize_table
from qprof.ceilings.choose import Ceiling, RunCeilings
from qprof.profile.modes import REPLAY_OP
from qprof.profile.spec import ProfileRun


def decode_mode(run: ProfileRun) -> str:
    """Whether decode ran as a CUDA graph, in words, for the report's first lines."""
    r = run.result
    if r.decode_graph:
        nodes = len(device_nodes(r.graph_ops))
        pdl = "" if r.graph_pdl_edges is None else f", {r.graph_pdl_edges} programmatic (PDL) edges"
        return (f"CUDA graph (one step captured with {nodes} nodes{pdl}, replayed every token; "
                "each node charged to the op that added it at capture)")
    if run.spec.options.cuda_graphs:
        why = r.graph_note or ("the CPU runtime has no CUDA graphs" if run.spec.device == "cpu" else "not captured")
        return f"eager (CUDA graphs asked for but off: {why})"
    if run.spec.device == "cpu":
        return "eager (the CPU reference runtime)"
    return "eager (one launch per kernel; --graphs captures it as a CUDA graph)"


def decode_loop_mode(run: ProfileRun) -> str:
    """How each decode step's token reached the next step, in words, for the report's first lines."""
    if run.spec.decode_loop == "synced":
        return ("synced (each token sampled and read back before the next step is queued; --decode-loop in-flight "
                "chains greedy steps on the device)")
    if run.spec.device == "cpu":
        return "in-flight asked for; the CPU runtime decodes and samples one step after the other"
    return "in-flight (greedy steps chained on the device; the next step queued while the host reads each token)"


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
    r = run.result
    on_gpu = run.spec.device == "cuda"
    limits = bounds(r, ceilings, flops_per_token)
    body = summarize_table(run.table, limits["peak_Bps"], top=top, op_meta=op_meta(r.graph_ops) or None,
                           device_work=on_gpu, read_by_size=ceilings.read_by_size if ceilings else None)
    return {
        "command": "profile",
        "model": r.model_name,
        "device": r.device_name,
        "runtime_device": run.spec.device,
        "n_threads": run.spec.n_threads,
        "config": run.label,
        "timing": run.timing,
        "n_prompt": r.n_prompt,
        "n_gen": r.n_gen,
        "decode_graph": r.decode_graph,
        "graph_pdl_edges": r.graph_pdl_edges,
        "decode_mode": decode_mode(run),
        "decode_loop": run.spec.decode_loop,
        "decode_loop_mode": decode_loop_mode(run),
        "pp_tok_s": r.pp_tok_s,
        "tg_tok_s": r.tg_tok_s,
        **limits,
        "weight_bytes_per_token": r.weight_bytes,
        **body,
        "peak_Bps": limits["peak_Bps"],
        "notes": list(run.notes),
        "artifacts": dict(run.artifacts),
    }


def graph_step_ms(run: ProfileRun) -> float | None:
    """Decode graph time per replay: the per-op timers' replay op (events, blocking), or the summed work of the
    ops its nodes were charged to (torch, nsys); None when decode did not run as a graph."""
    r = run.result
    if not r.decode_graph:
        return None
    dec = run.table[run.table["phase"] == "decode"]
    if run.timing in ("events", "blocking"):
        replays = dec[(dec["kind"] == "op") & (dec["name"] == REPLAY_OP)]
        return float(replays["dur_ns"].mean()) / 1e6 if len(replays) else None
    work = work_rows(dec)
    charged = work[work["nvtx_range"].isin(set(op_meta(r.graph_ops)))]
    replays = charged["correlation_id"].nunique()
    return float(charged["dur_ns"].sum()) / replays / 1e6 if replays else None


def graph_agreement(runs: list[ProfileRun]) -> dict[str, float]:
    """Per timing mode, the decode graph's time per token (ms): the events timer's against the per-op totals."""
    return {run.timing: ms for run in runs if (ms := graph_step_ms(run)) is not None}


def render_graph_agreement(per_mode: dict[str, float]) -> str:
    ref = per_mode.get("events")
    parts = []
    for mode, ms in per_mode.items():
        diff = f" ({100.0 * (ms - ref) / ref:+.1f}% vs events)" if ref and mode != "events" else ""
        parts.append(f"{mode} {ms:.3f}{diff}")
    what = "events: the replay timed as one op; torch, nsys: the summed kernels of the ops its nodes are charged to"
    return f"\ndecode graph per token (ms; {what}): " + " | ".join(parts)
