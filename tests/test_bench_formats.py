"""Printers: the llama-bench-like markdown table, csv, json, jsonl and sql that sqlite can load."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
from bench_fakes import bench_row

from qprof.bench.formats import FORMATS, make_printer
from qprof.bench.record import FIELDS
from qprof.errors import QprofError


def render(fmt, rows, **kw) -> str:
    p = make_printer(fmt, **kw)
    return p.header() + "".join(p.row(r) for r in rows) + p.footer()


ROWS = [bench_row(test="pp512", n_prompt=512, n_gen=0, avg_ts=5000.25, stddev_ts=12.5, floor_ts=None,
                  pct_of_floor=None, mask="upload", options="mask=upload"),
        bench_row(model_type="it's \"quoted\"", mask="skip")]


def test_markdown_matches_llama_bench_layout():
    text = render("md", ROWS, switches=["mask"], device="cuda", build="abc123 (7)")
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1] == [
        " model                          ", "       size ", "     params ", " backend   ", " ngl ", " mask   ",
        "            test ", "                  t/s ", "  bound t/s ", " % bound "]
    assert set(lines[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    assert lines[1].startswith("| ------------------------------ | ---------: |")
    pp = lines[2]
    assert "mistral Q4_K_M" in pp and "4.07 GiB" in pp and "7.24 B" in pp and "CUDA" in pp and "| upload |" in pp
    assert "pp512" in pp and "5000.25 ± 12.50" in pp and pp.rstrip().endswith("- |")
    tg = lines[3]
    assert "tg128" in tg and "128.00 ± 1.50" in tg and "757.50" in tg and "16.9%" in tg
    assert text.endswith("\nbound: tg = decode floor (read bandwidth / weight bytes per token), pp = prefill "
                         "roofline (GEMM rate / FLOPs per token)\nbuild: abc123 (7)\n")
    # every row has as many cells as the header
    assert len({line.count("|") for line in lines[:4]}) == 1


def test_markdown_bound_is_the_roofline_on_pp_rows_and_peers_get_a_ratio_column():
    pp = bench_row(test="pp512", n_prompt=512, n_gen=0, floor_ts=None, pct_of_floor=None, roofline_ts=9000.0,
                   pct_of_roofline=55.56)
    peer = bench_row(test="pp512", n_prompt=512, n_gen=0, peer="llama.cpp", options="fa=1", qprof_ratio=1.4234,
                     floor_ts=None, pct_of_floor=None, n_gpu_layers=99)
    unpaired = bench_row(peer="llama.cpp", options="fa=0", qprof_ratio=None)
    text = render("md", [pp, peer, unpaired], switches=["options"], device="cuda", peers=True)
    lines = text.splitlines()
    assert lines[0].rstrip().endswith("| qprof/llama.cpp |") and "| mode             |" in lines[0]
    assert "9000.00" in lines[2] and "55.6%" in lines[2] and lines[2].rstrip().endswith("|                 |")
    assert "| llama.cpp |" in lines[3] and "| fa=1 " in lines[3] and lines[3].rstrip().endswith("1.42x |")
    assert lines[4].rstrip().endswith("- |") and "| llama.cpp |" in lines[4]
    assert len({line.count("|") for line in lines[:5]}) == 1
    assert "qprof/llama.cpp: the clean qprof row's t/s over llama.cpp's, same model, test and card" in text


def test_markdown_on_cpu_shows_threads_and_small_sizes_in_mib():
    text = render("md", [bench_row(model_size=1_690_000, model_n_params=2_740_000, backends="CPU")], device="cpu")
    assert "threads" in text.splitlines()[0] and "ngl" not in text.splitlines()[0]
    assert "1.61 MiB" in text and "2.74 M" in text


def test_csv_has_every_field_and_round_trips():
    text = render("csv", ROWS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(FIELDS)
    assert rows[1]["model_type"] == "it's \"quoted\"" and rows[0]["avg_ts"] == "5000.25"
    assert rows[0]["samples_ns"] == "1000000000,1000000000,1000000000"
    assert rows[0]["flash_attn"] == "0" and rows[0]["floor_ts"] == ""


def test_json_is_a_valid_array_even_when_cut_short():
    assert json.loads(render("json", ROWS))[1]["model_type"] == "it's \"quoted\""
    assert json.loads(render("json", [])) == []
    p = make_printer("json")
    partial = p.header() + p.row(ROWS[0]) + p.footer()  # what an interrupted run prints
    assert len(json.loads(partial)) == 1


def test_jsonl_one_object_per_line_with_sample_lists():
    lines = render("jsonl", ROWS).splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["samples_ns"] == [1_000_000_000] * 3 and first["n_prompt"] == 512


def test_nan_is_written_as_null():
    text = render("jsonl", [bench_row(avg_ts=float("nan"), samples_ts=[float("inf")])])
    row = json.loads(text)
    assert row["avg_ts"] is None and row["samples_ts"] == [None]


def test_sql_creates_and_fills_a_sqlite_table():
    script = render("sql", ROWS)
    assert script.startswith("CREATE TABLE IF NOT EXISTS qprof_bench (\n  build_commit TEXT,")
    db = sqlite3.connect(":memory:")
    db.executescript(script)
    got = db.execute("SELECT test, avg_ts, n_prompt, flash_attn, floor_ts, model_type FROM qprof_bench").fetchall()
    assert got == [("pp512", 5000.25, 512, 0, None, "mistral Q4_K_M"), ("tg128", 128.0, 0, 0, 757.5, "it's \"quoted\"")]
    cols = [r[1] for r in db.execute("PRAGMA table_info(qprof_bench)")]
    assert cols == list(FIELDS)


def test_unknown_format_is_an_error():
    assert FORMATS == ("md", "csv", "json", "jsonl", "sql")
    with pytest.raises(QprofError, match="unknown output format 'xml'"):
        make_printer("xml")
