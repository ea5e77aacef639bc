"""A fresh clone stays clean: `qprof bench` (what .ci/run runs) writes its rows outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """This working tree (tracked and new files, not ignored ones) committed into a new repository."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of qprof")
    clone = tmp_path / "clone"
    for name in git("ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).split("\0"):
        src = REPO / name
        if name and src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    git("init", "-q", cwd=clone)
    git("add", "-A", cwd=clone)
    git("commit", "-qm", "fresh clone", cwd=clone)
    return clone


def test_bench_in_a_fresh_clone_leaves_git_status_clean(fresh_clone, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "QPROF_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)  # `python -m` from the clone's root imports the clone's qprof
    proc = subprocess.run([sys.executable, "-m", "qprof.cli", "bench", "-p", "8", "-n", "2", "-r", "1"],
                          cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    results = Path(os.environ["XDG_DATA_HOME"]) / "qprof" / "results.jsonl"
    assert proc.stderr.splitlines()[0].startswith(f"qprof bench: results: appending to {results} ")
    assert len(results.read_text().splitlines()) == 2
    assert git("status", "--porcelain", cwd=fresh_clone) == ""
