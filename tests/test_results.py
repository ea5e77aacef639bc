"""Result files: atomic appends, torn-line recovery, concurrent writers, reading back, and provenance fields."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
from bench_fakes import bench_row

from qprof.bench import record
from qprof.bench.results import append_row, read_rows, result_files
from qprof.errors import QprofError


def test_append_creates_dirs_and_adds_one_line_per_row(tmp_path):
    path = tmp_path / "results" / "bench.jsonl"
    append_row(path, bench_row(test="pp512"))
    append_row(path, bench_row(test="tg128"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["test"] for line in lines] == ["pp512", "tg128"]
    assert path.read_text().endswith("\n")


def test_each_row_is_a_single_write_on_an_append_fd(tmp_path, monkeypatch):
    writes, flags, syncs = [], [], []
    real_open, real_write, real_fsync = os.open, os.write, os.fsync
    monkeypatch.setattr(os, "open", lambda p, f, *a: flags.append(f) or real_open(p, f, *a))
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real_fsync(fd))
    append_row(tmp_path / "r.jsonl", bench_row())
    assert len(writes) == 1 and writes[0].endswith(b"\n") and writes[0].count(b"\n") == 1
    assert flags[0] & os.O_APPEND and len(syncs) == 1


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(path, bench_row(test="pp512"))
    with open(path, "a") as f:
        f.write('{"test": "tg12')  # a crash mid-line (not possible with one write(2), but files get copied)
    append_row(path, bench_row(test="tg128"))
    got = read_rows(path)
    assert [r["test"] for r in got.rows] == ["pp512", "tg128"] and got.skipped == 1


def _writer(path, tag):
    for i in range(40):
        append_row(path, bench_row(test=f"{tag}{i}", cpu_info="x" * 3000))


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, tag)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    got = read_rows(path)
    assert got.skipped == 0 and len(got.rows) == 80


def test_read_dir_glob_and_missing(tmp_path):
    append_row(tmp_path / "a.jsonl", bench_row(test="pp1"))
    append_row(tmp_path / "b.jsonl", bench_row(test="pp2"))
    (tmp_path / "notes.txt").write_text("not results")
    assert [p.name for p in result_files(tmp_path)] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in result_files(tmp_path / "b*.jsonl")] == ["b.jsonl"]
    rows = read_rows(tmp_path).rows
    assert [r["test"] for r in rows] == ["pp1", "pp2"] and rows[0]["_source"].endswith("a.jsonl")
    with pytest.raises(QprofError, match="no results at"):
        read_rows(tmp_path / "missing.jsonl")


def test_unwritable_results_path_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QprofError, match="cannot open results file"):
        append_row(blocker / "bench.jsonl", bench_row())


def test_build_info_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("QPROF_BUILD_COMMIT", "deadbeef")
    assert record.build_info()[0] == "deadbeef"


def test_build_info_without_git(monkeypatch):
    monkeypatch.delenv("QPROF_BUILD_COMMIT", raising=False)
    monkeypatch.setattr(record, "_git", lambda *a: None)
    assert record.build_info() == ("unknown", 0)


def test_build_info_marks_dirty_trees(monkeypatch):
    monkeypatch.delenv("QPROF_BUILD_COMMIT", raising=False)
    answers = {"rev-parse": "1234abcd", "rev-list": "42", "status": " M qprof/x.py"}
    monkeypatch.setattr(record, "_git", lambda *a: answers[a[0]])
    assert record.build_info() == ("1234abcd-dirty", 42)


def test_cpu_environment_names_everything():
    env = record.collect_environment("cpu")
    assert env.backends == "CPU" and env.gpu_name is None and env.torch_version and env.cpu_info
    assert env.build_commit and env.n_threads >= 1


def test_cuda_environment_with_a_faked_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"NVIDIA H100 80GB HBM3 #{i}")
    env = record.collect_environment("cuda", {"driver": "580.65.06", "cuda_driver": "13.0"})
    assert env.backends == "CUDA" and env.gpu_name == "NVIDIA H100 80GB HBM3 #0"
    assert env.gpu_info == "NVIDIA H100 80GB HBM3 #0, NVIDIA H100 80GB HBM3 #1"
    assert env.driver == "580.65.06" and env.cuda_driver == "13.0"


def test_default_results_file_is_in_the_user_data_dir_unless_qprof_results_says(tmp_path, monkeypatch):
    from qprof.paths import default_results_file

    path, why = default_results_file()
    assert path == tmp_path / "xdg-data" / "qprof" / "results.jsonl" and "user data dir" in why
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_results_file()[0] == tmp_path / "home" / ".local" / "share" / "qprof" / "results.jsonl"
    monkeypatch.setenv("QPROF_RESULTS", str(tmp_path / "mine.jsonl"))
    assert default_results_file() == (tmp_path / "mine.jsonl", "$QPROF_RESULTS")
