"""Noise from native code is dropped and everything else still shows: Kineto's USDT marks, not real errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from qprof.profile.native_stderr import KINETO_MARKS


def test_marks_pattern_matches_kinetos_lines_only():
    assert KINETO_MARKS.match("USDT:2026-12-01 09:00:22 31587:31587 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
    assert KINETO_MARKS.match("USDT:2026-12-01 09:00:22 1:1 SyncActivityProfilerHandler.cpp:59] profiler_stop")
    assert not KINETO_MARKS.match("ERROR:2026-12-01 CuptiActivityApi.cpp:1] CUPTI_ERROR_NOT_INITIALIZED")


def test_torch_profiler_runs_without_usdt_lines_but_keeps_other_native_output(tmp_path):
    """In a child process, so the real descriptor 2 is what gets checked."""
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        import torch
        from qprof.profile.kineto import kineto_capture
        from qprof.profile.native_stderr import drop_native_lines
        with kineto_capture("cpu", Path({str(tmp_path / "t.json")!r})):
            torch.ones(4) + 1
        with drop_native_lines():
            os.write(2, b"USDT:x y.cpp:1] profiler_start\\nnative warning kept\\n")
        print("ok")
    """)
    repo = str(Path(__file__).resolve().parents[1])  # this checkout's qprof in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    assert "profiler_start" not in res.stderr and "profiler_stop" not in res.stderr, res.stderr
    assert "native warning kept" in res.stderr
    assert (tmp_path / "t.json").exists()
