"""The child process that nsys and the launch-blocking mode start: one workload, its result written as JSON.

`python -m qprof.profile.child --spec spec.json --result result.json [--host-timer]`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qprof.analysis.activity import from_records, to_records
from qprof.errors import QprofError
from qprof.profile.spec import WorkloadResult, WorkloadSpec


def child_main(argv: Sequence[str] | None = None) -> int:
    """Run one workload (for nsys or the launch-blocking mode) and write its result (and host-timed table)."""
    from qprof.profile.loop import run_workload

    ap = argparse.ArgumentParser(prog="python -m qprof.profile.child")
    ap.add_argument("--spec", required=True, help="WorkloadSpec JSON file")
    ap.add_argument("--result", required=True, help="where to write the result JSON")
    ap.add_argument("--host-timer", action="store_true", help="time every range with host timers")
    args = ap.parse_args(argv)
    spec = WorkloadSpec.from_json(Path(args.spec).read_text())
    listeners = []
    if args.host_timer:
        from qprof.profile.timing_events import OpTimer

        listeners.append(OpTimer("host"))
    try:
        result = run_workload(spec, listeners)
    except QprofError as exc:
        print(f"qprof: error: {exc}", file=sys.stderr)
        return 2
    out = {"result": result.as_dict()}
    if listeners:
        out["table"] = to_records(listeners[0].table())
    Path(args.result).write_text(json.dumps(out))
    return 0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child `python -m qprof...`: this qprof first on PYTHONPATH, plus `extra`."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def read_child_result(path: Path) -> tuple[pd.DataFrame | None, WorkloadResult]:
    data = json.loads(path.read_text())
    table = from_records(data["table"]) if "table" in data else None
    return table, WorkloadResult.from_dict(data["result"])


if __name__ == "__main__":
    sys.exit(child_main())
