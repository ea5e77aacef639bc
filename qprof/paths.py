"""Where qprof keeps files outside the source tree: the cache (PTX, workloads, ceilings) and the user's results."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_FILE_NAME = "results.jsonl"


def cache_root() -> Path:
    """$QPROF_CACHE, else ~/.cache/qprof: things qprof can make again (PTX, workloads, measured ceilings)."""
    return Path(os.environ.get("QPROF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qprof"))


def user_data_dir() -> Path:
    """The XDG user data dir for qprof: $XDG_DATA_HOME/qprof, else ~/.local/share/qprof.

    Measurements are data a user keeps, not cache: they live here rather than under ~/.cache.
    """
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "qprof"


def default_results_file() -> tuple[Path, str]:
    """(the file bench appends to when --results is not given, why that one)."""
    env = os.environ.get("QPROF_RESULTS")
    if env:
        return Path(env).expanduser(), "$QPROF_RESULTS"
    return user_data_dir() / RESULTS_FILE_NAME, "the user data dir; set $QPROF_RESULTS or --results FILE to choose"
