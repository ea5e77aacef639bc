"""`qprof profile` end to end on the CPU (tiny workload), its files, and every bad input's one-line message."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qprof.cli import main

TINY = ["-m", "tiny-q4_k_m", "--device", "cpu"]


def profile(*args):
    return CliRunner().invoke(main, ["profile", *args])


def test_text_report_with_trace_and_out(tmp_path):
    trace, out = tmp_path / "t.json", tmp_path / "out"
    res = profile(*TINY, "-p", "4", "-n", "2", "--timing", "events", "--trace", str(trace), "--out", str(out))
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "config clean | timing events" in text
    assert text.splitlines()[3] == "  decode: eager (the CPU reference runtime)"
    assert "decode:" in text and "per op" in text and "diagnosis" in text
    assert "note: events timing on the CPU runtime uses host timers" in text
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "gpu_user_annotation" and e["name"].endswith("attn_q") for e in events)
    assert (out / "activity.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"] == "clean" and summary["n_gen"] == 2


def test_graphs_on_the_cpu_say_decode_ran_eagerly():
    res = profile(*TINY, "-p", "2", "-n", "1", "--timing", "events", "--graphs", "--json")
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["decode_graph"] is False
    assert run["decode_mode"] == "eager (CUDA graphs asked for but off: the CPU runtime has no CUDA graphs)"


def test_json_output_torch_mode():
    res = profile(*TINY, "-p", "4", "-n", "2", "--timing", "torch", "--json")
    assert res.exit_code == 0, res.output
    (run,) = json.loads(res.stdout)["runs"]
    assert run["timing"] == "torch" and run["tg_tok_s"] > 0 and run["tg_floor_tok_s"] is None
    assert run["peak_Bps"] is None and run["bandwidth_source"].startswith("unknown on the CPU")
    assert run["pp_roofline_tok_s"] is None and run["prefill_flops_per_token"] > 0
    ops = {o["op"] for o in run["phases"]["decode"]["ops"]}
    assert {"attn_q", "ffn_down"} & ops
    assert all(f["severity"] != "fault" for f in run["findings"])


def test_report_reads_the_run_against_the_given_ceilings():
    res = profile(*TINY, "-p", "4", "-n", "2", "--timing", "events", "--bandwidth", "20", "--tflops", "0.5")
    assert res.exit_code == 0, res.output
    head = res.stdout.splitlines()[1:3]
    assert "% of the roofline " in head[0] and "= 0.5 TFLOP/s / " in head[0] and " MFLOP per token)" in head[0]
    assert "% of the decode floor " in head[0] and "= 20 GB/s / " in head[0]
    assert head[1] == "  ceilings: read bandwidth 20.0 GB/s (--bandwidth); GEMM 0.5 TFLOP/s (--tflops)"
    assert "vs the 20 GB/s read bandwidth" in res.stdout
    res = profile(*TINY, "-p", "4", "-n", "2", "--timing", "events")
    assert "decode floor unknown" in res.stdout.splitlines()[1]
    assert "no read bandwidth known for a % of peak" in res.stdout


def test_faults_compare_every_switch_against_clean(tmp_path):
    res = profile(*TINY, "-p", "2", "-n", "1", "--timing", "events", "--faults", "--top", "3", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "fault switches against the clean configuration" in res.stdout
    labels = ["clean", "mask=upload", "mask=device", "scalar-upload", "sync-every-op", "inject=block-dim"]
    table = res.stdout.split("fault switches against the clean configuration")[1]
    assert "CPU runtime: the fault switches act on the CUDA runtime only" in table.splitlines()[1]
    assert [ln.split()[0] for ln in table.splitlines()[3:9]] == labels
    assert all("(noise)" in ln for ln in table.splitlines()[4:9]) and "(noise)" not in table.splitlines()[3]
    assert "  sync-every-op: ignored by the CPU runtime (the clean run again)" in table
    assert "the CPU runtime ignores the fault switches" in res.stderr and "run-to-run noise" in res.stderr
    dirs = ["clean", "mask-upload", "mask-device", "scalar-upload", "sync-every-op", "inject-block-dim"]
    for label, d in zip(labels, dirs):
        assert json.loads((tmp_path / d / "summary.json").read_text())["config"] == label


def test_nvtx_overhead():
    res = profile(*TINY, "-p", "2", "-n", "2", "--nvtx-overhead", "--repeats", "1", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert len(d["on_tok_s"]) == len(d["off_tok_s"]) == len(d["forced_tok_s"]) == 1 and "overhead_pct" in d
    assert d["tool_attached"] is False and "forced_overhead_pct" in d
    text = profile(*TINY, "-p", "2", "-n", "2", "--nvtx-overhead", "--repeats", "1")
    assert text.exit_code == 0, text.output
    assert "on (no tool attached, ranges skipped)" in text.stdout and "forced on (QPROF_NVTX=1" in text.stdout


def test_nsys_missing_falls_back_and_says_why(monkeypatch, tmp_path):
    from qprof.analysis import nsys_tool as nsys
    from qprof.doctor import NsysInfo

    monkeypatch.setattr(nsys, "_nsys_info", lambda: NsysInfo(None, False, "nsys not found on PATH"))
    res = profile(*TINY, "-p", "2", "-n", "1", "--timing", "nsys", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "timing events" in res.stdout
    assert "note: nsys not found on PATH; falling back to --timing events" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--trace", "trace.txt"], "--trace trace.txt: the file must end in .json"),
    (["--trace", "nodir/t.json"], "--trace nodir/t.json: folder nodir/ does not exist (create it first)"),
    (["-t", "0"], "-t: 0 threads; need at least 1"),
    (["-n", "0"], "--n-gen must be at least 1, got 0"),
    (["-p", "0"], "--n-prompt must be at least 1, got 0"),
    (["--faults", "--mask", "upload"], "--faults runs every fault switch itself"),
    (["--bandwidth", "0"], "--bandwidth must be a positive number, got 0"),
    (["--bandwidth", "-3"], "--bandwidth must be a positive number, got -3"),
    (["--tflops", "-2"], "--tflops must be a positive number, got -2"),
    (["-n", "100000"], ("-p 2 + -n 100000 needs 100002 tokens of context, but tiny-q4_k_m declares 512 "
                        "(llama.context_length of workload tiny-q4_k_m)")),
    (["--nvtx-overhead", "--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_input_one_line(args, message):
    res = profile(*TINY, "-p", "2", *args)
    assert res.exit_code == 2, res.output
    assert f"qprof: error: {message}" in res.stderr
    assert "Traceback" not in res.output


def test_bench_and_profile_agree_on_the_declared_context():
    """Both count prompt + decode positions against the model's context, and say it in the same words."""
    fits = profile(*TINY, "-p", "500", "-n", "12", "--timing", "events", "--json")
    assert fits.exit_code == 0, fits.output
    over = profile(*TINY, "-p", "500", "-n", "13")
    bench = CliRunner().invoke(main, ["bench", *TINY, "-p", "0", "-n", "0", "-pg", "500,13", "--no-save"])
    assert over.exit_code == bench.exit_code == 2
    assert over.stderr.strip() == ("qprof: error: -p 500 + -n 13 needs 513 tokens of context, but tiny-q4_k_m declares "
                                   "512 (llama.context_length of workload tiny-q4_k_m)")
    assert bench.stderr.strip() == ("qprof: error: -pg 500,13 needs 513 tokens of context, but tiny-q4_k_m declares "
                                    "512 (llama.context_length of workload tiny-q4_k_m)")


def test_threads_are_set_and_recorded(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        res = profile(*TINY, "-p", "2", "-n", "1", "--timing", "events", "-t", "1", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["runs"][0]["n_threads"] == 1 and torch.get_num_threads() == 1
        assert "CPU threads 1" in res.stderr
    finally:
        torch.set_num_threads(before)


def test_missing_model_file():
    res = profile("-m", "no/such/model.gguf", "--device", "cpu")
    assert res.exit_code == 2
    assert "qprof: error: model file not found: no/such/model.gguf" in res.stderr


def test_click_rejects_unknown_choices():
    res = profile(*TINY, "--timing", "sundial")
    assert res.exit_code == 2 and "'sundial' is not one of" in res.stderr
    res = profile(*TINY, "--decode-loop", "chained")
    assert res.exit_code == 2 and "'chained' is not one of" in res.stderr
    res = profile(*TINY, "--mask", "sometimes")
    assert res.exit_code == 2 and "'sometimes' is not one of" in res.stderr


def test_cuda_without_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = profile("-m", "tiny-q4_k_m", "--device", "cuda")
    assert res.exit_code == 2
    assert "qprof: error: no CUDA GPU available" in res.stderr


def test_agreement_on_the_cpu_compares_to_torch_and_states_host_timers(monkeypatch, tmp_path):
    from qprof.analysis import nsys_tool as nsys
    from qprof.doctor import NsysInfo

    monkeypatch.setattr(nsys, "_nsys_info", lambda: NsysInfo(None, False, "nsys not found on PATH"))
    res = profile(*TINY, "-p", "2", "-n", "1", "--agreement", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "events: events timing on the CPU runtime uses host timers" in res.stderr
    header = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("op "))
    assert header.split()[1:] == ["events", "torch", "events", "vs", "torch", "%"]  # nsys fell back: left out
    total = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("TOTAL")).split()
    assert float(total[1]) > 0 and float(total[2]) > 0


def test_decode_loop_is_run_and_reported(tmp_path):
    """--decode-loop in-flight decodes the same n steps through qprof.runtime.in_flight (on the CPU: decode, then
    sample, one after the other, and the report says so); the default stays synced."""
    import pandas as pd

    runs = {}
    for loop in ("synced", "in-flight"):
        out = tmp_path / loop
        res = profile(*TINY, "-p", "4", "-n", "3", "--timing", "events", "--decode-loop", loop, "--out", str(out))
        assert res.exit_code == 0, res.output
        runs[loop] = res.stdout, json.loads((out / "summary.json").read_text()), pd.read_csv(out / "activity.csv")
    for loop, (text, summary, activity) in runs.items():
        assert summary["decode_loop"] == loop
        decode = activity[activity["phase"] == "decode"]
        assert sorted(decode["token"].dropna().unique()) == [4, 5, 6]  # positions 4..6: three steps either way
        assert (decode["name"] == "blk.0.attn_q").sum() == 3
        assert (activity["name"] == "sample").sum() == 4  # the prompt's token and every step's
    assert "  decode loop: synced (each token sampled and read back" in runs["synced"][0]
    assert ("  decode loop: in-flight asked for; the CPU runtime decodes and samples one step after the other"
            in runs["in-flight"][0])
    default = profile(*TINY, "-p", "2", "-n", "1", "--json")
    assert default.exit_code == 0 and json.loads(default.stdout)["runs"][0]["decode_loop"] == "synced"


def test_the_decode_loop_travels_to_the_nsys_child_and_is_checked():
    from qprof.errors import QprofError
    from qprof.profile.spec import WorkloadSpec

    spec = WorkloadSpec("tiny-q4_k_m", "cpu", 4, 2, decode_loop="in-flight")
    again = WorkloadSpec.from_json(spec.to_json())
    assert again == spec and again.with_options(nvtx=True).decode_loop == "in-flight"
    with pytest.raises(QprofError, match="unknown decode loop 'chained'; choose from in-flight, synced"):
        WorkloadSpec("tiny-q4_k_m", "cpu", 4, 2, decode_loop="chained")


@pytest.mark.parametrize("loop, calls", [("synced", []), ("in-flight", [2, 3])])
def test_the_in_flight_run_decodes_through_decode_greedy(monkeypatch, loop, calls):
    """Warm-up (2 steps) and the measured run (-n 3) go through qprof.runtime.in_flight.decode_greedy only in flight."""
    from qprof.runtime import in_flight

    seen, real = [], in_flight.decode_greedy
    monkeypatch.setattr(in_flight, "decode_greedy", lambda rt, first, n: seen.append(n) or real(rt, first, n))
    res = profile(*TINY, "-p", "4", "-n", "3", "--timing", "events", "--decode-loop", loop, "--json")
    assert res.exit_code == 0, res.output
    assert seen == calls
