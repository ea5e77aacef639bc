"""Launch-blocking timing: a child process with CUDA_LAUNCH_BLOCKING=1 and host timers around every op.

CUDA_LAUNCH_BLOCKING must be in the environment before the CUDA context exists, so it needs its
own process. Every launch then returns only when its kernel has finished, so a host timer
around an op reads its device time plus every launch's host overhead, serialized: it inflates
launch-bound phases (decode of a small model most of all). `bias_table` puts numbers on that
against `events` timing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd

from qprof.errors import QprofError
from qprof.profile.child import child_env, read_child_result
from qprof.profile.spec import WorkloadResult, WorkloadSpec

TIMEOUT_S = 3600


def run_blocking(spec: WorkloadSpec, out_dir: Path, notes: list[str]) -> tuple[pd.DataFrame, WorkloadResult]:
    """Run `spec` in a child with CUDA_LAUNCH_BLOCKING=1 and host-timed ranges; its table and result."""
    import sys

    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = out_dir / "spec-blocking.json", out_dir / "result-blocking.json"
    spec_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "qprof.profile.child", "--spec", str(spec_file), "--result", str(result_file),
           "--host-timer"]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT_S,
                              env=child_env(CUDA_LAUNCH_BLOCKING="1"))
    except subprocess.TimeoutExpired:
        raise QprofError(f"the launch-blocking child did not finish within {TIMEOUT_S} s") from None
    if proc.returncode != 0 or not result_file.exists():
        last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no output")
        raise QprofError(f"the launch-blocking child failed (exit {proc.returncode}): {last.removeprefix('qprof: error: ')}")
    table, result = read_child_result(result_file)
    if spec.device == "cpu":
        notes.append("CUDA_LAUNCH_BLOCKING has no effect on the CPU runtime: these are plain host timers per op")
    else:
        notes.append("blocking timing: CUDA_LAUNCH_BLOCKING=1 child, host timers per op (launch overhead included)")
    return table, result


def bias_table(blocking: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Per phase and op family: time under launch-blocking host timers vs CUDA events, and the bias in %."""
    def totals(df: pd.DataFrame, col: str) -> pd.Series:
        ops = df[df["kind"] == "op"]
        return (ops.groupby([ops["phase"].fillna("-"), ops["family"].fillna("other")])["dur_ns"].sum() / 1e6
                ).rename(col)

    both = pd.concat([totals(blocking, "blocking_ms"), totals(events, "events_ms")], axis=1).fillna(0.0)
    if both.empty:
        return pd.DataFrame(columns=["phase", "family", "blocking_ms", "events_ms", "bias_pct"])
    both["bias_pct"] = 100.0 * (both["blocking_ms"] - both["events_ms"]) / both["events_ms"].where(both["events_ms"] > 0)
    both = both.reset_index()
    both.columns = ["phase", "family", "blocking_ms", "events_ms", "bias_pct"]
    total = both.groupby("phase")[["blocking_ms", "events_ms"]].sum().reset_index()
    total["family"] = "TOTAL"
    total["bias_pct"] = 100.0 * (total["blocking_ms"] - total["events_ms"]) / total["events_ms"].where(
        total["events_ms"] > 0)
    return pd.concat([both.sort_values(["phase", "events_ms"], ascending=[True, False]), total[both.columns]],
                     ignore_index=True)
