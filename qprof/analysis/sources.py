"""Any trace file to one activity table: nsys reports and SQLite exports, Kineto/Chrome JSON, compressed or not.

The format is read from the file's first bytes, not its name: SQLite's header, gzip/xz magic,
JSON's opening bracket. An .nsys-rep (or .qdrep) is exported to SQLite with nsys first, next to
the report or in `work_dir`; without nsys that is one clear error saying how to export it by
hand. A gzip- or xz-compressed SQLite export is decompressed to a temporary file. Bad input (no
such file, an unknown or truncated format, no CUDA activity at all) raises QprofError with one
line saying which.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qprof.analysis import kineto_json, nsys_sqlite
from qprof.analysis.activity import DEVICE_KINDS
from qprof.errors import QprofError

SQLITE_MAGIC = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
NSYS_REPORT_SUFFIXES = (".nsys-rep", ".qdrep")


@dataclass
class Trace:
    """One trace's activity table and what the file says about where it came from."""

    path: Path
    source: str  # "nsys SQLite export", "nsys report (exported with nsys)", "Kineto/Chrome JSON trace"
    table: pd.DataFrame
    card: str | None = None  # the GPU the trace names
    card_bandwidth_Bps: float | None = None  # its memory bandwidth as the trace records it (theoretical)
    notes: list[str] = field(default_factory=list)


def _head(path: Path, n: int = 16) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _decompress(path: Path, magic: bytes, into: Path) -> Path:
    """A compressed file's bytes written to `into`; a truncated stream is one clear error."""
    opener = gzip.open if magic == GZIP_MAGIC else lzma.open
    try:
        with opener(path, "rb") as src, into.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise QprofError(f"{path.name}: the compressed data ends early or is damaged ({exc}); is the file "
                         "truncated?") from None
    return into


def _export(path: Path, work_dir: Path | None) -> Path:
    from qprof.analysis.nsys_tool import NsysUnavailable, export_sqlite, find_nsys

    nsys = find_nsys()
    if nsys is None:
        raise QprofError(f"{path.name} is an Nsight Systems report, and reading it needs nsys to export it to SQLite, "
                         f"but nsys was not found (see `qprof doctor`); export it where nsys is installed with "
                         f"`nsys export --type sqlite {path.name}` and pass the .sqlite file")
    out_dir = work_dir or path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        sqlite_path, _ = export_sqlite(path, out_dir / (path.stem + ".sqlite"), nsys=nsys)
    except NsysUnavailable as exc:
        raise QprofError(str(exc)) from None
    return sqlite_path


def _nsys(path: Path, source: str, shown: Path) -> Trace:
    table = nsys_sqlite.read_nsys_sqlite(path)
    card = nsys_sqlite.read_card(path)
    return Trace(shown, source, table, card.name, card.bandwidth_Bps)


def _kineto(path: Path) -> Trace:
    data = kineto_json.load_trace(path)
    return Trace(path, "Kineto/Chrome JSON trace", kineto_json.read_kineto_trace(data), kineto_json.card_name(data))


def load(path: str | Path, work_dir: str | Path | None = None) -> Trace:
    """The trace at `path` as an activity table, whatever its format; QprofError with one line when it cannot be."""
    path = Path(path)
    if not path.exists():
        raise QprofError(f"trace file {path} does not exist")
    if path.is_dir():
        raise QprofError(f"{path} is a directory, not a trace file")
    head = _head(path)
    if not head:
        raise QprofError(f"{path.name} is empty")
    work = Path(work_dir) if work_dir else None
    if path.suffix in NSYS_REPORT_SUFFIXES and not head.startswith(SQLITE_MAGIC):
        trace = _nsys(_export(path, work), "nsys report (exported to SQLite with nsys)", path)
    elif head.startswith(SQLITE_MAGIC):
        trace = _nsys(path, "nsys SQLite export", path)
    elif head.startswith((GZIP_MAGIC, XZ_MAGIC)):
        magic = GZIP_MAGIC if head.startswith(GZIP_MAGIC) else XZ_MAGIC
        with tempfile.TemporaryDirectory(prefix="qprof-analyze-") as tmp:
            inner = _decompress(path, magic, Path(tmp) / "trace")
            inner_head = _head(inner)
            if inner_head.startswith(SQLITE_MAGIC):
                trace = _nsys(inner, f"nsys SQLite export, {'gzip' if magic == GZIP_MAGIC else 'xz'}-compressed", path)
            elif inner_head.lstrip()[:1] in (b"{", b"["):
                trace = _kineto(inner)
                trace.path = path
            else:
                raise QprofError(f"{path.name} decompresses to neither an nsys SQLite export nor a JSON trace")
    elif head.lstrip()[:1] in (b"{", b"["):
        trace = _kineto(path)
    else:
        raise QprofError(f"{path.name}: unknown trace format (expected an nsys report .nsys-rep, an nsys SQLite "
                         "export, or a Kineto/Chrome JSON trace, optionally .gz/.xz)")
    if not trace.table["kind"].isin(DEVICE_KINDS).any():
        raise QprofError(f"{path.name} has no CUDA activity (no kernels, copies or memsets): capture with "
                         "`nsys profile -t cuda` or torch.profiler's ProfilerActivity.CUDA")
    return trace
