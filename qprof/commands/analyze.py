"""`qprof analyze FILE`: the profiler's attribution and diagnosis for a trace of any program (llama.cpp, transformers, torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qprof.errors import QprofError


@click.command()
@click.argument("trace_file", metavar="FILE", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of the text report")
@click.option("--trace", "trace", type=click.Path(dir_okay=False), default=None,
              help="also write the activity table as a Perfetto/Chrome JSON trace (FILE.json)")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="directory for artifacts: activity.csv, summary.json (and the SQLite export of an .nsys-rep)")
@click.option("--bandwidth", type=float, default=None, metavar="GB/s",
              help="peak memory bandwidth for kernel efficiency (default: the card's, when the trace records it)")
@click.option("--top", default=8, show_default=True, type=int, help="rows per table")
def analyze(trace_file, as_json, trace, out, bandwidth, top):
    """Where the time went in a trace of any program, and why.

    FILE is an Nsight Systems report (.nsys-rep, exported to SQLite with nsys), an nsys SQLite
    export, or a torch.profiler (Kineto) Chrome JSON trace (.json, .json.gz); gzip or xz
    compression is fine. Kernels are grouped by family from their names (cuBLAS, CUTLASS, nvjet,
    llama.cpp, PyTorch, flash-attention, Triton, qprof). Phases and decode steps come from NVTX
    ranges when the trace has qprof's (or ranges named prefill / decode / token N), else from the
    trace's rhythm: the device-to-host read and host sync that end every step, and the kernel set
    that repeats between them. The diagnosis names per-step copies, reads back to the host, syncs,
    launch gaps and idle time at step boundaries, each with its count and cost per step.
    """
    from qprof.analysis.pipeline import analyze_file
    from qprof.analysis.report import render

    if bandwidth is not None and bandwidth <= 0:
        raise QprofError(f"--bandwidth must be positive, got {bandwidth}")
    if top < 1:
        raise QprofError(f"--top must be at least 1, got {top}")
    if trace is not None and not str(trace).endswith(".json"):
        raise QprofError(f"--trace {trace}: the trace is Chrome/Perfetto JSON, so the file must end in .json")
    out_dir = Path(out) if out else None
    summary, table = analyze_file(trace_file, bandwidth * 1e9 if bandwidth else None, top=max(top, 10),
                                  work_dir=out_dir)
    if trace is not None:
        from qprof.analysis.trace_export import write_chrome_trace

        summary["artifacts"]["trace"] = str(write_chrome_trace(table, Path(trace), summary["card"] or "GPU"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_dir / "activity.csv", index=False)
        summary["artifacts"]["activity_csv"] = str(out_dir / "activity.csv")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if as_json:
        click.echo(json.dumps(summary, indent=1, default=str))
    else:
        click.echo(render(summary, top=top))
