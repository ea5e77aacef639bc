"""A few seconds of coverage-guided fuzzing (atheris) of GGUF bytes -> load -> tokenizer -> one CPU prefill.

tests/fuzz_gguf.py is the harness; this runs it in a child process (libFuzzer exits the process when
done) for a bounded time and fails on any crash it saves. See the README for longer runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "fuzz_gguf.py"
SECONDS = int(os.environ.get("QPROF_FUZZ_SECONDS", "4"))


@pytest.mark.slow
def test_fuzz_load_tokenizer_prefill_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; it is in the dev extra)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    repo = HARNESS.parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={SECONDS}", "-rss_limit_mb=3072", "-timeout=30",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        check=False, capture_output=True, text=True, timeout=SECONDS + 240, env=env, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    assert res.returncode == 0 and not crashes, f"{crashes}\n{res.stderr[-4000:]}"
    assert "Done " in res.stderr and " runs in " in res.stderr, res.stderr[-2000:]
    assert len(list(corpus.iterdir())) >= 2  # seeded with the two valid models, then grown
