"""The timing modes (events | blocking | nsys | torch): run a workload under one and return its activity table.

`profile_workload` picks the mode, runs it (nsys falls back to events, stated), and hands the
table to the analysis half: restricted to the measured run, weight bytes filled in from the
model, and the kernels of every replayed decode graph charged to the op that launched them at
capture (qprof.analysis.graph_ops).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from qprof.analysis.activity import fill_kernel_bytes, make_table, restrict_to_run, validate
from qprof.analysis.graph_ops import charge_replays
from qprof.errors import QprofError
from qprof.profile.child import child_env
from qprof.profile.loop import run_workload
from qprof.profile.spec import TIMINGS, ProfileRun, WorkloadResult, WorkloadSpec

REPLAY_OP = "decode_graph"  # the op range CudaRuntime opens around a graph replay


def ops_from_ranges(df: pd.DataFrame) -> pd.DataFrame:
    """Host-timed op rows from op-level ranges, for captures that saw ranges but no device work (CPU runtime)."""
    if df.empty or (df["kind"].isin(["kernel", "memcpy", "memset", "op"])).any():
        return df
    ops = df[(df["kind"] == "range") & (df["level"] == "op")].copy()
    if ops.empty:
        return df
    ops["kind"] = "op"
    ops["level"] = None
    return make_table(pd.concat([df, ops], ignore_index=True))


def _finish(run_table: pd.DataFrame, result: WorkloadResult, notes: list[str]) -> pd.DataFrame:
    table = restrict_to_run(ops_from_ranges(run_table))
    if result.decode_graph:
        table, said = charge_replays(table, result.graph_ops, REPLAY_OP)
        notes += said
        if result.graph_note:
            notes.append(result.graph_note)
    return validate(fill_kernel_bytes(table, result.op_bytes))


def _events(spec: WorkloadSpec, notes: list[str], model=None) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.profile.timing_events import OpTimer

    clock = "cuda" if spec.device == "cuda" else "host"
    if clock == "host":
        notes.append("events timing on the CPU runtime uses host timers (CUDA events need a GPU)")
    timer = OpTimer(clock)
    result = run_workload(spec, [timer], model=model)
    table = timer.table()  # reads the events (and calibrates) after the run; the notes then say so
    notes += timer.notes()
    return table, result


def _torch(spec: WorkloadSpec, out_dir: Path, artifacts: dict, notes: list[str],
           model=None) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.analysis.kineto_json import read_kineto_trace
    from qprof.profile.kineto import RecordFunctionListener, kineto_capture

    trace = out_dir / "kineto_trace.json"
    result = run_workload(spec, [RecordFunctionListener()], capture=lambda: kineto_capture(spec.device, trace),
                          model=model)
    artifacts["kineto_trace"] = str(trace)
    if spec.device == "cuda":
        notes.append("torch.profiler adds host time to every launch: tok/s and launch gaps in this mode are "
                     "inflated (qprof bench measures tok/s without a profiler)")
    return read_kineto_trace(trace), result


def _nsys(spec: WorkloadSpec, out_dir: Path, artifacts: dict, notes: list[str]) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.analysis.nsys_sqlite import read_nsys_sqlite
    from qprof.profile.nsys import capture, python_child

    if not spec.options.nvtx:
        notes.append("nsys needs the NVTX ranges: profiled with NVTX on")
        spec = spec.with_options(nvtx=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = out_dir / "spec.json", out_dir / "result.json"
    spec_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    cap = capture(python_child("qprof.profile.child", "--spec", str(spec_file), "--result", str(result_file)),
                  out_dir, name=f"qprof-{spec.options.label().replace('=', '-').replace(',', '_')}",
                  env=child_env(QPROF_NVTX="1"))  # nsys sets its injection variable too; this also beats a stray 0
    artifacts.update(nsys_rep=str(cap.report), nsys_sqlite=str(cap.sqlite), nsys_log=str(cap.log))
    if not result_file.exists():
        raise QprofError(f"the workload under nsys wrote no result (see {cap.log})")
    result = WorkloadResult.from_dict(json.loads(result_file.read_text())["result"])
    notes.append("tok/s under nsys include its tracing overhead")
    return read_nsys_sqlite(cap.sqlite), result


def profile_workload(spec: WorkloadSpec, timing: str = "events", out_dir: str | Path | None = None,
                     model=None) -> ProfileRun:
    """Run `spec` under `timing` and return the run's table and timings (nsys falls back to events, stated)."""
    if timing not in TIMINGS:
        raise QprofError(f"unknown timing mode {timing!r}; choose from {', '.join(TIMINGS)}")
    notes: list[str] = []
    artifacts: dict[str, str] = {}
    scratch = None
    if out_dir is None and timing == "nsys":  # the .nsys-rep and .sqlite are artifacts: keep them
        out_dir = Path("qprof-profile")
        notes.append(f"nsys artifacts go to {out_dir}/ (set --out to choose)")
    if out_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="qprof-profile-")
        out = Path(scratch.name)
    else:
        out = Path(out_dir)  # each mode creates it when it writes there
    used = timing
    try:
        if timing == "nsys":
            from qprof.profile.nsys import NsysUnavailable

            try:
                table, result = _nsys(spec, out, artifacts, notes)
            except NsysUnavailable as exc:
                notes.append(f"{exc}; falling back to --timing events")
                used = "events"
                table, result = _events(spec, notes, model)
        elif timing == "blocking":
            from qprof.profile.timing_blocking import run_blocking

            table, result = run_blocking(spec, out, notes)
        elif timing == "torch":
            table, result = _torch(spec, out, artifacts, notes, model)
        else:
            table, result = _events(spec, notes, model)
        if result.decode_graph and used in ("events", "blocking"):
            notes.append(f"{used} timing times each replay of the decode graph as one op ({REPLAY_OP}): it cannot "
                         "split the graph into its ops, kernels, copies or gaps; --timing nsys or torch charge every "
                         "node to the op that launched it at capture")
        table = _finish(table, result, notes)
    finally:
        if scratch is not None:
            artifacts = {}  # the files went with the temporary directory
            scratch.cleanup()
    return ProfileRun(spec, used, table, result, notes, artifacts)
