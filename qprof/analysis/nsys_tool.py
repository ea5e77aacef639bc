"""The nsys executable: finding it, and exporting an .nsys-rep report to SQLite (analyze's input, profile's capture).

When nsys is missing, or cannot write or export a report (a known cause: libdw.so.1 not on the
library path), NsysUnavailable says exactly that and how to fix it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from qprof.errors import QprofError

EXPORT_TIMEOUT_S = 1800


class NsysUnavailable(QprofError):
    """nsys is missing or could not produce a report; the message says why and how to fix it."""


def _nsys_info():
    from qprof.doctor import find_nsys as doctor_find

    return doctor_find()


def find_nsys() -> str | None:
    """Path of the nsys executable (`qprof doctor`'s search), or None."""
    return _nsys_info().path


def require_nsys() -> str:
    info = _nsys_info()
    if info.path is None:
        raise NsysUnavailable(info.reason)
    return info.path


def explain_failure(output: str, what: str) -> str:
    """One line saying why nsys could not do `what`, from its output."""
    low = output.lower()
    if "libdw" in low:
        from qprof.doctor import LIBDW_FIX

        return f"nsys could not {what}: libdw.so.1 is missing from the library path; {LIBDW_FIX}"
    tail = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    return f"nsys could not {what}: {tail[:300]}"


def export_sqlite(report: Path, sqlite_path: Path, nsys: str | None = None, env: dict | None = None,
                  timeout_s: float = EXPORT_TIMEOUT_S) -> tuple[Path, str]:
    """`nsys export --type sqlite` of `report` into `sqlite_path`; returns the path and nsys's output."""
    nsys = nsys or require_nsys()
    try:
        exp = subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite", "true", "--output",
                              str(sqlite_path), str(report)], check=False, capture_output=True, text=True,
                             timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise NsysUnavailable(f"nsys export of {report.name} did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise NsysUnavailable(f"nsys at {nsys} could not be started: {exc}") from None
    output = exp.stdout + exp.stderr
    if not sqlite_path.exists():
        raise NsysUnavailable(explain_failure(output, f"export {report.name} to SQLite"))
    return sqlite_path, output
