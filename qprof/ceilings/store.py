"""Measured ceilings as one record per card, kept in $QPROF_CACHE/ceilings.json and described with their age."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from qprof.ceilings.card import Card

CACHE_SCHEMA = 3  # bump when a figure is measured differently, so older records are measured again (2: read by size;
# 3: the read's launches back to back)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class Ceilings:
    card: Card
    measured_at: str  # UTC, TIME_FORMAT
    read_GBps: float  # streaming read: what decode's weight traffic is bound by
    copy_GBps: float  # device-to-device copy, bytes read + bytes written
    gemm_fp16_TFLOPS: float  # dense fp16 tensor-core GEMM (torch.mm): the prefill roofline
    gemm_bf16_TFLOPS: float
    best: dict[str, float] = field(default_factory=dict)  # the same figures from the fastest repeat
    # the streaming read at the size of one launch (read_sizes.py): {str(bytes): GB/s}; empty if it failed
    read_by_size_GBps: dict[str, float] = field(default_factory=dict)
    method: dict[str, str] = field(default_factory=dict)  # how each figure was measured, in words
    qprof_version: str = ""

    FIGURES = (("read_GBps", "read bandwidth", "GB/s"), ("copy_GBps", "copy bandwidth", "GB/s"),
               ("gemm_fp16_TFLOPS", "fp16 GEMM", "TFLOP/s"), ("gemm_bf16_TFLOPS", "bf16 GEMM", "TFLOP/s"))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["card"] = self.card.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Ceilings:
        names = {f for f in cls.__dataclass_fields__ if f != "card"}
        return cls(card=Card.from_dict(d["card"]), **{k: v for k, v in d.items() if k in names})


def cache_file() -> Path:
    from qprof.paths import cache_root

    return cache_root() / "ceilings.json"


def _read(path: Path) -> dict:
    """The cache's records by card key; a missing, foreign or older-schema file reads as empty (measure again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("cards"), dict):
        return {}
    return data["cards"]


def lookup(card: Card, path: Path | None = None) -> Ceilings | None:
    record = _read(path or cache_file()).get(card.key())
    if not isinstance(record, dict):
        return None
    try:
        return Ceilings.from_dict(record)
    except (KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _only_writer(path: Path):
    """One writer at a time: `bench --gpus` workers measure their cards at once and must not drop each other's."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def save(ceilings: Ceilings, path: Path | None = None) -> Path:
    """Add or replace this card's record; written to a temporary file and renamed, so readers never see half."""
    from qprof.errors import QprofError

    path = path or cache_file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _only_writer(path):  # read, add, write back: under the lock, so no other record is lost
            cards = _read(path)
            cards[ceilings.card.key()] = ceilings.as_dict()
            tmp.write_text(json.dumps({"schema": CACHE_SCHEMA, "cards": cards}, indent=1))
            tmp.replace(path)
    except OSError as exc:
        raise QprofError(f"cannot write the ceilings cache {path}: {exc.strerror or exc}") from None
    return path


def age_text(measured_at: str, now: datetime | None = None) -> str:
    """'3 days ago', '5 h ago', '12 min ago', 'just now'; 'unknown age' for a timestamp that does not parse."""
    try:
        then = datetime.strptime(measured_at, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return "unknown age"
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n != 1 else ''} ago"
    return "just now"


def describe(c: Ceilings, now: datetime | None = None) -> list[str]:
    """Doctor's lines: each figure (median, best), then when and how it was measured."""
    lines = []
    for name, label, unit in Ceilings.FIGURES:
        best = c.best.get(name)
        lines.append(f"{label:<16}{getattr(c, name):9,.1f} {unit}" + (f", best {best:,.1f}" if best else ""))
    from qprof.ceilings.read_sizes import describe_curve

    lines.append(f"{'read by size':<16}{describe_curve(c.read_by_size_GBps)} (one launch a buffer)")
    lines.append(f"measured        {c.measured_at} ({age_text(c.measured_at, now)}) on {c.card.key()}")
    lines += [f"{'how ' + what:<16}{text}" for what, text in c.method.items()]
    return lines
