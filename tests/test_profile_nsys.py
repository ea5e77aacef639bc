"""nsys: SQLite export parsing (synthetic and captured fixtures), trimming, and the capture's failure messages."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from fixtures.synthetic import simulate, write_nsys_sqlite

from qprof.analysis import nsys_tool
from qprof.analysis.activity import restrict_to_run, validate
from qprof.analysis.diagnosis import diagnose, faults
from qprof.analysis.nsys_sqlite import read_nsys_sqlite
from qprof.analysis.trim import trim_sqlite
from qprof.errors import QprofError
from qprof.profile import nsys

FIXTURES = Path(__file__).parent / "fixtures"
REAL_SQLITE = sorted(FIXTURES.glob("nsys_*.sqlite"))


@pytest.fixture(scope="module")
def clean_db(tmp_path_factory) -> Path:
    return write_nsys_sqlite(simulate(), tmp_path_factory.mktemp("nsys") / "clean.sqlite")


def test_parses_every_table_with_one_clock(clean_db):
    sim = simulate()
    df = read_nsys_sqlite(clean_db)
    counts = df["kind"].value_counts().to_dict()
    assert counts["kernel"] == len(sim.kernels)
    assert counts["memcpy"] == len(sim.copies)
    assert counts["sync"] == len(sim.syncs)
    assert counts["api"] == len(sim.api)
    assert counts["range"] == len(sim.ranges)  # the foreign domain's range is not ours
    assert "foreign" not in set(df["name"])
    k = df[df["kind"] == "kernel"]
    assert set(k["family"]) >= {"matvec", "rmsnorm", "attn_decode", "argmax"}
    assert set(k.loc[k["family"] == "matvec", "qtype"]) == {"Q4_K", "Q6_K"}
    assert (k["block"].str.split(",").str[0].isin(["32", "256"])).all()
    c = df[df["kind"] == "memcpy"]
    assert set(c["copy_kind"]) == {"DtoH"} and (c["bytes"] == 4).all()
    r = df[df["kind"] == "range"]
    assert set(r["level"]) == {"run", "phase", "token", "layer", "op"}
    assert set(r.loc[r["name"] == "blk.0.attn_q", "family"]) == {"matvec"}
    validate(df)


def test_kernels_are_charged_to_their_launching_op(clean_db):
    df = restrict_to_run(read_nsys_sqlite(clean_db))
    k = df[df["kind"] == "kernel"]
    # every layer kernel sits under the op whose name matches its family, never a neighbour's
    layer_k = k[k["layer"].notna()]
    assert len(layer_k) > 0
    assert (layer_k["nvtx_range"].str.split(".").str[-1].map(
        {"attn_norm": "rmsnorm", "attn_q": "matvec", "attn_v": "matvec", "attention": "attn_decode",
         "ffn_down": "matvec"}) == layer_k["family"]).all()
    dec = k[k["phase"] == "decode"]
    assert sorted(dec["token"].unique()) == [8, 9, 10, 11]
    assert (df.loc[df["kind"] == "sync", "nvtx_range"] == "sample").all()


def test_inline_message_text_parses_like_registered_strings(tmp_path):
    a = read_nsys_sqlite(write_nsys_sqlite(simulate(), tmp_path / "a.sqlite", registered_strings=True))
    b = read_nsys_sqlite(write_nsys_sqlite(simulate(), tmp_path / "b.sqlite", registered_strings=False))
    assert list(a["nvtx_path"].fillna("")) == list(b["nvtx_path"].fillna(""))


def test_trim_keeps_what_the_parser_reads(tmp_path, clean_db):
    con = sqlite3.connect(str(clean_db))
    con.execute("CREATE TABLE IF NOT EXISTS ANALYSIS_DETAILS (id INTEGER, name TEXT)")
    con.execute("CREATE TABLE IF NOT EXISTS TARGET_INFO_GPU (id INTEGER NOT NULL, name TEXT)")
    con.commit()
    con.close()
    trimmed = trim_sqlite(clean_db, tmp_path / "trim.sqlite")
    con = sqlite3.connect(str(trimmed))
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.close()
    assert "ANALYSIS_DETAILS" not in tables and {"TARGET_INFO_GPU", "CUPTI_ACTIVITY_KIND_KERNEL"} <= tables
    full = restrict_to_run(read_nsys_sqlite(clean_db))
    cut = read_nsys_sqlite(trimmed)
    assert len(cut) < len(read_nsys_sqlite(clean_db))  # the warm-up is gone
    assert len(cut) == len(full) and list(cut["start_ns"]) == list(full["start_ns"])
    whole = trim_sqlite(clean_db, tmp_path / "whole.sqlite", run_name=None)
    assert len(read_nsys_sqlite(whole)) == len(read_nsys_sqlite(clean_db))


def test_bad_files_get_one_line_errors(tmp_path):
    with pytest.raises(QprofError, match="does not exist"):
        read_nsys_sqlite(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 10)
    with pytest.raises(QprofError, match="not an SQLite database"):
        read_nsys_sqlite(junk)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(str(empty)).execute("CREATE TABLE x (a INTEGER)").connection.close()
    with pytest.raises(QprofError, match="not an nsys SQLite export"):
        read_nsys_sqlite(empty)


# --------------------------------------------------------------------------- capture (fake nsys executables)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_missing_nsys_says_how_to_fix(monkeypatch):
    from qprof.doctor import NsysInfo

    monkeypatch.setattr(nsys_tool, "_nsys_info", lambda: NsysInfo(None, False, "nsys not found on PATH; install it"))
    assert nsys.find_nsys() is None
    with pytest.raises(nsys.NsysUnavailable, match="nsys not found on PATH; install it"):
        nsys.require_nsys()


def test_report_failure_names_libdw(tmp_path):
    fake = _script(tmp_path / "nsys", 'echo "Importer error: libdw.so.1: cannot open shared object file" >&2\nexit 1\n')
    with pytest.raises(nsys.NsysUnavailable, match=r"libdw\.so\.1 is missing.*LD_LIBRARY_PATH"):
        nsys.capture(["true"], tmp_path / "out", nsys=fake)
    assert (tmp_path / "out" / "qprof.nsys.log").read_text().count("libdw") == 1


def test_other_report_failures_quote_nsys(tmp_path):
    fake = _script(tmp_path / "nsys", 'echo "Collection failed: no permission" >&2\nexit 1\n')
    with pytest.raises(nsys.NsysUnavailable, match="could not write its report.*no permission"):
        nsys.capture(["true"], tmp_path / "out", nsys=fake)


FAKE_NSYS = """
if [ "$1" = profile ]; then
  while [ "$1" != "-o" ]; do shift; done
  prefix="$2"; shift 2
  "$@" || exit $?
  echo report > "$prefix.nsys-rep"
elif [ "$1" = export ]; then
  while [ "$1" != "--output" ]; do shift; done
  cp "$FAKE_NSYS_SQLITE" "$2"
fi
"""


def test_capture_runs_child_and_exports(tmp_path, monkeypatch, clean_db):
    fake = _script(tmp_path / "nsys", FAKE_NSYS)
    monkeypatch.setenv("FAKE_NSYS_SQLITE", str(clean_db))
    marker = tmp_path / "child-ran"
    cap = nsys.capture(["touch", str(marker)], tmp_path / "out", name="run1", nsys=fake, env=dict(os.environ))
    assert marker.exists()
    assert cap.report.name == "run1.nsys-rep" and cap.report.exists()
    assert cap.sqlite.exists() and len(read_nsys_sqlite(cap.sqlite)) > 0


# --------------------------------------------------------------------------- fixtures captured on the H100


@pytest.mark.skipif(not REAL_SQLITE, reason="no captured nsys fixture in tests/fixtures (tests/gpu/capture_fixtures.py)")
@pytest.mark.parametrize("path", REAL_SQLITE, ids=lambda p: p.name)
def test_captured_fixture(path):
    df = restrict_to_run(read_nsys_sqlite(path))
    validate(df)
    k = df[df["kind"] == "kernel"]
    assert len(k) > 0
    assert k["nvtx_range"].notna().mean() > 0.95, "kernels must be charged to a launching range"
    assert set(k["family"]) & {"matvec", "rmsnorm"}
    assert sorted(df.loc[df["phase"] == "decode", "token"].dropna().unique())
    found = faults(diagnose(df))
    if "mask" in path.name:
        assert any(f.rule == "mask_upload" for f in found), [f.message for f in found]
    else:
        assert not found, [f.message for f in found]



def test_capture_script_checks_what_it_keeps(tmp_path):
    from gpu.capture_fixtures import check

    clean = write_nsys_sqlite(simulate(), tmp_path / "nsys_x_clean.sqlite")
    mask = write_nsys_sqlite(simulate(mask_upload=True), tmp_path / "nsys_x_mask_upload.sqlite")
    assert check(clean, read_nsys_sqlite, "clean") == []
    assert check(mask, read_nsys_sqlite, "mask_upload") == []
    assert check(clean, read_nsys_sqlite, "mask_upload") == ["mask fault not named (faults: [])"]
    assert check(mask, read_nsys_sqlite, "clean") == ["clean run diagnosed with faults ['mask_upload']"]
