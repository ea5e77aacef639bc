"""Run a workload under Nsight Systems: `nsys profile -t cuda,nvtx --cuda-graph-trace=node`, then its SQLite export.

The child is `python -m qprof.profile.child`; the .nsys-rep and .sqlite stay as artifacts and
qprof.analysis.nsys_sqlite reads the export. Node-level graph tracing makes every kernel of a
replayed CUDA graph its own record (else nsys traces a graph launch as one unit). When nsys is
missing or cannot write its report, NsysUnavailable says why; the caller falls back to `events`.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from qprof.analysis.nsys_tool import NsysUnavailable, explain_failure, export_sqlite, find_nsys, require_nsys
from qprof.errors import QprofError

__all__ = ["NsysCapture", "NsysUnavailable", "capture", "find_nsys", "python_child", "require_nsys"]
TRACE = ("-t", "cuda,nvtx", "--sample=none", "--cpuctxsw=none", "--cuda-graph-trace=node")


@dataclass
class NsysCapture:
    report: Path  # .nsys-rep
    sqlite: Path
    log: Path


def capture(child_argv: list[str], out_dir: Path, name: str = "qprof", timeout_s: float = 1800,
            nsys: str | None = None, env: dict | None = None) -> NsysCapture:
    """Run `child_argv` (a python command) under nsys; return the report, its SQLite export and the log."""
    nsys = nsys or require_nsys()
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    report = prefix.with_suffix(".nsys-rep")
    sqlite_path = prefix.with_suffix(".sqlite")
    log = out_dir / f"{name}.nsys.log"
    for stale in (report, sqlite_path):
        stale.unlink(missing_ok=True)
    cmd = [nsys, "profile", *TRACE, "--force-overwrite=true", "-o", str(prefix), *child_argv]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise NsysUnavailable(f"nsys profile did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise NsysUnavailable(f"nsys at {nsys} could not be started: {exc}") from None
    output = proc.stdout + proc.stderr
    log.write_text(" ".join(cmd) + "\n" + output)
    if proc.returncode != 0 and "Traceback" in output and not report.exists():
        raise QprofError(f"the profiled workload failed under nsys (see {log}): "
                         + explain_failure(proc.stderr, "run the workload").split(": ", 1)[-1])
    if not report.exists():
        raise NsysUnavailable(explain_failure(output, f"write its report {report.name}"))
    try:
        _, exported = export_sqlite(report, sqlite_path, nsys=nsys, env=env, timeout_s=timeout_s)
    except NsysUnavailable:
        with log.open("a") as fh:
            fh.write("nsys export failed\n")
        raise
    with log.open("a") as fh:
        fh.write(exported)
    return NsysCapture(report, sqlite_path, log)


def python_child(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
