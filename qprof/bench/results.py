"""Append-only JSONL result files: one atomic, fsynced append per row, and tolerant reading back."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qprof.bench.formats import to_json
from qprof.errors import QprofError


def append_row(path: str | Path, row: dict) -> None:
    """Append one row as one line with a single write(2) on an O_APPEND descriptor, then fsync.

    O_APPEND makes the kernel place each write at the end of the file, so concurrent runs never
    interleave inside a line, and a crash leaves at most a torn last line, which readers skip.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise QprofError(f"cannot open results file {path}: {exc.strerror or exc}") from None
    try:
        data = (to_json(row) + "\n").encode()
        size = os.fstat(fd).st_size
        # a torn line from an earlier crash must not swallow this row: start on a fresh line
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):
            raise QprofError(f"short write to {path}: {written} of {len(data)} bytes (disk full?)")
        os.fsync(fd)
    except OSError as exc:
        raise QprofError(f"cannot append to results file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass
class ResultSet:
    rows: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: int = 0  # lines that were not a JSON object (torn or foreign)


def result_files(spec: str | Path) -> list[Path]:
    """A .jsonl file, a directory of them, or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        parent = path.parent if str(path.parent) else Path(".")
        files = sorted(p for p in parent.glob(path.name) if p.is_file()) if any(c in path.name for c in "*?[") \
            else []
    if not files:
        raise QprofError(f"no results at {spec} (expected a .jsonl file, a directory of them, or a glob)")
    return files


def read_rows(spec: str | Path) -> ResultSet:
    out = ResultSet()
    for file in result_files(spec):
        out.files.append(file)
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise QprofError(f"cannot read {file}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                out.skipped += 1
                continue
            if isinstance(row, dict):
                row.setdefault("_source", str(file))
                out.rows.append(row)
            else:
                out.skipped += 1
    return out
