"""`qprof analyze` end to end: every input format, its outputs, and every bad input's one-line message."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from qprof.analysis import nsys_tool
from qprof.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = FIXTURES / "llama_bench_h200.sqlite.xz"
NSYS = FIXTURES / "nsys_smollm2_clean.sqlite"
KINETO = FIXTURES / "kineto_smollm2_mask_upload.json.gz"


def analyze(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


def _error(res) -> str:
    """The one `qprof: error:` line a bad input must end with (exit 2, no traceback)."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qprof: error: "), res.output
    return lines[0]


def test_text_report_and_out(tmp_path):
    out = tmp_path / "out"
    res = analyze(LLAMA, "--out", out, "--top", "5")
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[:3]
    assert first[0].startswith("qprof analyze: llama_bench_h200.sqlite.xz") and "card NVIDIA H200" in first[0]
    assert "32 decode steps" in first[1] and first[2].startswith("  phases: load")
    assert "diagnosis" in res.stdout and "[fault]" in res.stdout
    assert (out / "activity.csv").exists()
    assert json.loads((out / "summary.json").read_text())["steps"]["counts"]["decode"] == 32


def test_perfetto_trace_of_an_analyzed_file(tmp_path):
    trace = tmp_path / "t.json"
    res = analyze(NSYS, "--trace", trace)
    assert res.exit_code == 0, res.output
    assert f"artifact trace: {trace}" in res.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" and e["name"].startswith("matvec_") for e in events)


def test_json_of_qprofs_own_kineto_trace():
    res = analyze(KINETO, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["command"] == "analyze" and s["source"] == "Kineto/Chrome JSON trace"
    assert [f["rule"] for f in s["findings"] if f["severity"] == "fault"] == ["mask_upload"]


def test_uncompressed_and_gzip_sqlite_read_alike(tmp_path):
    plain, gz = tmp_path / "a.sqlite", tmp_path / "a.sqlite.gz"
    shutil.copy(NSYS, plain)
    gz.write_bytes(gzip.compress(NSYS.read_bytes()))
    a, b = json.loads(analyze(plain, "--json").stdout), json.loads(analyze(gz, "--json").stdout)
    assert a["source"] == "nsys SQLite export" and b["source"] == "nsys SQLite export, gzip-compressed"
    assert a["phases"]["decode"]["categories"] == b["phases"]["decode"]["categories"]


def test_bandwidth_override_is_stated():
    s = json.loads(analyze(NSYS, "--json", "--bandwidth", "4000").stdout)
    assert s["peak_Bps"] == 4000e9 and s["peak_source"] == "--bandwidth"


FAKE_NSYS = """#!/bin/bash
while [ "$1" != "--output" ]; do shift; done
cp "$FAKE_NSYS_SQLITE" "$2"
"""


def test_nsys_report_is_exported_with_nsys(tmp_path, monkeypatch):
    fake = tmp_path / "nsys"
    fake.write_text(FAKE_NSYS)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(NSYS))
    monkeypatch.setattr(nsys_tool, "find_nsys", lambda: str(fake))
    monkeypatch.setattr(nsys_tool, "require_nsys", lambda: str(fake))
    rep = tmp_path / "run.nsys-rep"
    rep.write_bytes(b"not sqlite: an nsys report")
    res = analyze(rep, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "(nsys report (exported to SQLite with nsys))" in res.stdout
    assert (tmp_path / "out" / "run.sqlite").exists()


def test_nsys_report_without_nsys_says_how_to_export_it(tmp_path, monkeypatch):
    monkeypatch.setattr(nsys_tool, "find_nsys", lambda: None)
    rep = tmp_path / "run.nsys-rep"
    rep.write_bytes(b"an nsys report")
    line = _error(analyze(rep))
    assert "needs nsys" in line and "nsys export --type sqlite run.nsys-rep" in line


def test_missing_empty_directory_and_unknown_files(tmp_path):
    assert "does not exist" in _error(analyze(tmp_path / "nope.sqlite"))
    assert "is a directory" in _error(analyze(tmp_path))
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert "is empty" in _error(analyze(empty))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is no trace")
    assert "unknown trace format" in _error(analyze(text))
    other = tmp_path / "other.sqlite"
    sqlite3.connect(str(other)).execute("CREATE TABLE x (a INTEGER)").connection.close()
    assert "not an nsys SQLite export" in _error(analyze(other))


def test_truncated_files(tmp_path):
    cut_db = tmp_path / "cut.sqlite"
    cut_db.write_bytes(NSYS.read_bytes()[: NSYS.stat().st_size // 3])
    assert "truncated" in _error(analyze(cut_db))
    cut_xz = tmp_path / "cut.sqlite.xz"
    cut_xz.write_bytes(LLAMA.read_bytes()[:50_000])
    assert "truncated" in _error(analyze(cut_xz))
    cut_json = tmp_path / "cut.json"
    cut_json.write_bytes(gzip.decompress(KINETO.read_bytes())[:5_000])
    assert "ends early" in _error(analyze(cut_json))
    cut_gz = tmp_path / "cut.json.gz"
    cut_gz.write_bytes(KINETO.read_bytes()[:5_000])
    assert "truncated" in _error(analyze(cut_gz))


def test_a_trace_without_cuda_activity(tmp_path):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(8).add_(1)
    cpu_only = tmp_path / "cpu.json"
    prof.export_chrome_trace(str(cpu_only))
    assert "has no CUDA activity" in _error(analyze(cpu_only))
    api_only = tmp_path / "api.sqlite"
    con = sqlite3.connect(str(api_only))
    con.executescript("CREATE TABLE StringIds (id INTEGER, value TEXT); INSERT INTO StringIds VALUES (1, 'cudaMalloc');"
                      "CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER, end INTEGER, globalTid INTEGER, "
                      "correlationId INTEGER, nameId INTEGER); INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME "
                      "VALUES (1, 2, 3, 4, 1);")
    con.commit()
    con.close()
    assert "has no CUDA activity" in _error(analyze(api_only))
    xz_text = tmp_path / "x.xz"
    xz_text.write_bytes(lzma.compress(b"plain words"))
    assert "decompresses to neither" in _error(analyze(xz_text))


@pytest.mark.parametrize("args, message", [
    (["--bandwidth", "-3"], "--bandwidth must be positive"),
    (["--top", "0"], "--top must be at least 1"),
    (["--trace", "out.txt"], "must end in .json"),
])
def test_bad_options(args, message):
    assert message in _error(analyze(NSYS, *args))


def test_help_names_every_format():
    res = analyze("--help")
    assert res.exit_code == 0
    for word in (".nsys-rep", "SQLite", "Kineto", ".json.gz"):
        assert word in res.output
