"""Events timing against CUPTI on the same execution: where do the two disagree, op by op?

    python3 tests/gpu/diagnose_events.py -m mistral-7b-q4_k_m -p 128 -n 32 --csv $OUT/events_vs_cupti.csv

One run carries both the gated events timer and torch.profiler (CUPTI kernel records), so every
op instance has an events span and a CUPTI sum of kernel/copy durations from the same execution;
the gate's own kernels (hold_until) are left out of the CUPTI side. The timer calibrates after
the capture (under a CUPTI capture of its own). Prints per-phase
agreement, the per-instance excess (events - CUPTI) by op and by kernels per op, the largest
excesses, the gate's outcomes and the calibration. A GPU diagnostic, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from qprof.analysis.activity import restrict_to_run
from qprof.analysis.attribution import agreement, op_type
from qprof.analysis.kineto_json import read_kineto_trace
from qprof.profile import timing_events as te
from qprof.profile.kineto import RecordFunctionListener, kineto_capture
from qprof.profile.loop import load_model, run_workload
from qprof.profile.spec import WorkloadSpec

GATE_KERNEL = "hold_until"


def instances(frame: pd.DataFrame, name_col: str) -> pd.DataFrame:
    """One row per op instance, keyed by (op name, n-th time it ran): rows sorted by start, a new instance
    wherever the launching range changes (ops outside token ranges, like sample, share one path)."""
    f = frame.sort_values("start_ns").rename(columns={name_col: "name"}).reset_index(drop=True)
    run_id = (f["name"] != f["name"].shift()).cumsum().rename("instance")
    agg = f.groupby(run_id).agg(name=("name", "first"), phase=("phase", "first"), token=("token", "first"),
                                dur_ns=("dur_ns", "sum"), kernels=("dur_ns", "size"))
    agg["occurrence"] = agg.groupby("name").cumcount()
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="mistral-7b-q4_k_m")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("--csv", default=None, help="write the per-instance comparison here")
    args = ap.parse_args()

    model = load_model(args.model)
    spec = WorkloadSpec(args.model, "cuda", args.n_prompt, args.n_gen)
    timer = te.OpTimer("cuda")
    scratch = tempfile.TemporaryDirectory()
    trace = Path(scratch.name) / "trace.json"
    result = run_workload(spec, [timer, RecordFunctionListener()], capture=lambda: kineto_capture("cuda", trace),
                          model=model)
    events = timer.table()  # after the capture: the calibration runs its own
    print(f"{result.model_name} on {result.device_name}: pp{args.n_prompt} {result.pp_tok_s:.0f} tok/s, "
          f"tg{args.n_gen} {result.tg_tok_s:.1f} tok/s (gated and under CUPTI)")
    for note in timer.notes():
        print("note:", note)

    print(f"calibration: {timer.calibration}")
    cupti = restrict_to_run(read_kineto_trace(trace))
    gates = cupti[(cupti["kind"] == "kernel") & (cupti["name"] == GATE_KERNEL)]
    print(f"gate kernels in the run: {len(gates)}, GPU time held at gates {gates['dur_ns'].sum() / 1e6:.1f} ms")
    cupti = cupti[cupti["name"] != GATE_KERNEL]
    spans = timer.spans()

    for phase in (None, "prefill", "decode"):
        print(f"\n--- per-op totals (ms), events vs CUPTI, phase={phase or 'all'}")
        print(agreement({"events": events, "cupti": cupti}, phase=phase, reference="cupti")
              .to_string(float_format=lambda v: f"{v:.3f}"))

    work = cupti[cupti["kind"].isin(["kernel", "memcpy", "memset"]) & cupti["nvtx_range"].notna()]
    per = instances(work[["nvtx_range", "phase", "token", "start_ns", "dur_ns"]], "nvtx_range")
    ev_ops = events[events["kind"].isin(["op", "sync"])].sort_values("start_ns").reset_index(drop=True)
    raw = spans.sort_values("start_ns").reset_index(drop=True)
    assert list(ev_ops["name"]) == list(raw["name"]), "events table and timer spans disagree on the op order"
    ev_ops[["raw_ns", "launched", "gate"]] = raw[["raw_ns", "kernels", "gate"]]
    ev = instances(ev_ops[["name", "phase", "token", "start_ns", "dur_ns"]], "name")
    for col in ("raw_ns", "launched", "gate"):
        ev[col] = ev_ops[col].to_numpy()
    joined = ev.drop(columns="kernels").merge(
        per[["name", "occurrence", "dur_ns", "kernels"]].rename(columns={"dur_ns": "cupti_ns"}),
        on=["name", "occurrence"], how="left")
    joined["phase"] = joined["phase"].fillna("-")
    joined["cupti_ns"] = joined["cupti_ns"].fillna(0)
    joined["kernels"] = joined["kernels"].fillna(0).astype(int)
    joined["excess_ns"] = joined["dur_ns"] - joined["cupti_ns"]  # after the timer's correction
    joined["raw_excess_ns"] = joined["raw_ns"] - joined["cupti_ns"]
    joined["op"] = joined["name"].map(op_type)

    print("\n--- per-instance excess (events - CUPTI, µs) by phase and op")
    g = joined.groupby(["phase", "op"]).agg(
        n=("excess_ns", "size"), kernels=("kernels", "median"), events_us=("dur_ns", "median"),
        cupti_us=("cupti_ns", "median"), excess_med=("excess_ns", "median"),
        excess_p90=("excess_ns", lambda x: x.quantile(0.9)), excess_max=("excess_ns", "max"),
        excess_sum_ms=("excess_ns", "sum"), raw_excess_med=("raw_excess_ns", "median"),
        launched=("launched", "median"))
    for col in ("events_us", "cupti_us", "excess_med", "excess_p90", "excess_max", "raw_excess_med"):
        g[col] = g[col] / 1e3
    g["excess_sum_ms"] = g["excess_sum_ms"] / 1e6
    print(g.sort_values("excess_sum_ms", ascending=False).to_string(float_format=lambda v: f"{v:.2f}"))

    d = joined[(joined["phase"] == "decode") & (joined["gate"] == "held")]
    for col in ("raw_excess_ns", "excess_ns"):
        print(f"\n--- held decode ops: {col} (µs) by CUPTI kernels per op")
        print(d.groupby("kernels")[col].describe(percentiles=[0.1, 0.5, 0.9]).div(1e3).to_string(
            float_format=lambda v: f"{v:.2f}"))
    print("\n--- gate outcomes by phase")
    print(joined.groupby(["phase", "gate"]).size().to_string())

    print("\n--- largest 15 excesses")
    print(joined.nlargest(15, "excess_ns")[["phase", "token", "name", "gate", "kernels", "launched", "dur_ns",
                                            "cupti_ns", "excess_ns"]]
          .to_string())
    if args.csv:
        joined.to_csv(args.csv, index=False)
        print(f"\nwrote {len(joined)} instances to {args.csv}")


if __name__ == "__main__":
    main()
