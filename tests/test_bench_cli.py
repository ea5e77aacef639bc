"""`qprof bench` end to end: the real CPU path on the tiny workload, a faked GPU path, bad input, Ctrl-C."""

from __future__ import annotations

import io
import json
import os

import pytest
from bench_fakes import FakeCudaRuntime, FakeRuntime, fake_model, fake_nvml
from click.testing import CliRunner

from qprof.bench.progress import Progress
from qprof.bench.results import read_rows
from qprof.cli import main

USER_CACHE = os.environ.get("QPROF_CACHE")  # before the fixture below points it at a temporary folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory lands here
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path / "cache"))
    FakeRuntime.instances.clear()


@pytest.fixture
def user_results(tmp_path):
    """Where bench appends without --results: the user data dir (XDG_DATA_HOME is the test's, see conftest)."""
    return tmp_path / "xdg-data" / "qprof" / "results.jsonl"


def bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch says there is an H100; runtimes, models and NVML are fakes. Exercises every CUDA-only branch."""
    import torch

    import qprof.bench.runner as runner_mod
    import qprof.bench.telemetry as tele
    from qprof.bench.runner import LoadedModel
    from qprof.runtime import factory

    model = fake_model(name="qprof synthetic Mistral-7B", file_type=15)
    loaded = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(runner_mod, "load_spec", lambda spec, log=None: loaded.append(spec) or
                        LoadedModel(spec, model.path, model))
    monkeypatch.setattr(factory, "create_runtime", lambda m, d, o, a, n: FakeCudaRuntime(m, d, o, a, n, op_s=0.001))
    real_open = tele.open_reader
    monkeypatch.setattr(tele, "open_reader", lambda idx: real_open(idx, nvml=fake_nvml(reasons=0x4)))
    fake_card_ceilings(monkeypatch)
    return loaded


MEASURED = []  # cards the fake measurement ran on


def fake_card_ceilings(monkeypatch, read_GBps: float = 3000.0):
    """This 'H100' is identified without CUDA, and measuring its ceilings returns fixed figures (and is counted)."""
    from datetime import datetime, timezone

    from qprof.ceilings import choose, measure
    from qprof.ceilings.card import Card
    from qprof.ceilings.store import TIME_FORMAT, Ceilings

    MEASURED.clear()
    card = Card("NVIDIA H100 80GB HBM3", "GPU-fake", "580.65.06", 2619)
    monkeypatch.setattr(choose, "card_and_nvml", lambda info: (card, info or {}))

    def measure_card(c, device_index=0, log=None):
        MEASURED.append(c)
        return Ceilings(card=c, measured_at=datetime.now(timezone.utc).strftime(TIME_FORMAT), read_GBps=read_GBps,
                        copy_GBps=2900.0, gemm_fp16_TFLOPS=600.0, gemm_bf16_TFLOPS=610.0)

    monkeypatch.setattr(measure, "measure_card", measure_card)


def test_cpu_run_on_the_tiny_default_says_so_and_saves_rows(tmp_path, user_results):
    res = bench("-p", "16", "-n", "4", "-r", "2")
    assert res.exit_code == 0, res.output + str(res.exception)
    err = res.stderr
    assert err.splitlines()[0] == (f"qprof bench: results: appending to {user_results} (the user data dir; set "
                                   "$QPROF_RESULTS or --results FILE to choose)")
    assert "device cpu (no CUDA GPU found): CPU reference runtime" in err
    assert "no -m given: using the embedded default workload 'tiny-q4_k_m'" in err and "no download" in err
    assert "decode floor: unknown on the CPU: no GPU's figure applies (--bandwidth GB/s sets one)" in err
    assert f"2 row(s) appended in {user_results}; runtime: CpuRuntime" in err
    assert not (tmp_path / "results").exists()  # nothing lands in the working directory
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| model") and "| threads |" in lines[0]
    assert "pp16" in lines[2] and "tg4" in lines[3] and "CPU" in lines[2]
    rows = read_rows(user_results).rows
    assert [r["test"] for r in rows] == ["pp16", "tg4"]
    r = rows[1]
    assert r["device"] == "cpu" and r["runtime"] == "CpuRuntime" and r["model"] == "tiny-q4_k_m"
    assert r["quant"] == "Q4_K_M" and r["avg_ts"] > 0 and len(r["samples_ns"]) == 2
    assert r["telemetry_source"] == "none: CPU run" and r["floor_ts"] is None and r["bandwidth_GBps"] is None
    assert r["bandwidth_source"].startswith("unknown on the CPU") and rows[0]["roofline_ts"] is None
    assert r["bytes_per_token"] > 0 and r["torch_version"] and r["build_commit"] and r["test_time"].endswith("Z")


def test_cpu_switch_lists_make_a_product_and_jsonl_output(tmp_path):
    res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "3", "-r", "1", "--no-warmup", "--sync-every-op", "0,1",
                "--bandwidth", "20", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["test"], r["sync_every_op"], r["options"]) for r in rows] == [
        ("tg3", False, "in-flight"), ("tg3", True, "sync-every-op,in-flight")]
    assert rows[0]["floor_ts"] == pytest.approx(20e9 / rows[0]["bytes_per_token"])
    assert rows[0]["bandwidth_source"] == "--bandwidth" and rows[0]["warmup"] is False
    assert not (tmp_path / "results").exists()
    assert "not saved (--no-save)" in res.stderr


def test_faults_flag_gives_clean_plus_each_fault_with_a_mode_column():
    res = bench("-p", "0", "-n", "2", "-r", "1", "--no-warmup", "--faults", "--no-save", "--device", "cpu")
    assert res.exit_code == 0, res.output + str(res.exception)
    lines = res.stdout.splitlines()
    assert "| mode             |" in lines[0]
    modes = [line.split("|")[6].strip() for line in lines[2:7]]
    assert modes == ["in-flight", "mask=upload,in-flight", "scalar-upload,in-flight", "sync-every-op,in-flight",
                     "inject=block-dim,in-flight"]


def test_explicit_model_file_pg_and_custom_results_path(tmp_path):
    from qprof.workloads import resolve_model

    path = resolve_model("tiny-q8_0")
    (tmp_path / "out").mkdir()
    res = bench("-m", str(path), "-p", "0", "-n", "0", "-pg", "8,2", "-r", "1", "--results", "out/x.jsonl",
                "-o", "csv")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "no -m given" not in res.stderr
    rows = read_rows("out/x.jsonl").rows
    assert len(rows) == 1 and rows[0]["test"] == "pp8+tg2" and rows[0]["model_filename"] == str(path)
    assert res.stdout.splitlines()[0].startswith("build_commit,build_number,")


def test_fake_gpu_path_defaults_to_cuda_and_the_mistral_workload(fake_gpu, user_results):
    res = bench("-p", "8", "-n", "4", "-r", "2", "--mask", "upload,skip", "--graphs", "0,1")
    assert res.exit_code == 0, res.output + str(res.exception)
    err = res.stderr
    assert "device cuda (NVIDIA H100 80GB HBM3; a CUDA GPU is available): CUDA runtime; telemetry pynvml" in err
    assert "'mistral-7b-q4_k_m'" in err and fake_gpu == ["mistral-7b-q4_k_m"]
    assert "measuring the ceilings of NVIDIA H100 80GB HBM3 (first use on this card; cached in " in err
    assert "decode floor: 3,000.0 GB/s read bandwidth (measured on this GPU 20" in err
    assert "prefill roofline: 600.0 TFLOP/s GEMM rate (measured on this GPU 20" in err
    assert "warning: GPU throttled during pp8" in err and "sw_power_cap" in err
    header = res.stdout.splitlines()[0]
    assert "| ngl |" in header and "| mask   |" in header and "| graphs |" in header
    rows = read_rows(user_results).rows
    assert len(rows) == 2 * 2 * 2
    # cuda_graphs is what ran: mask=upload cannot be captured, so its graphs=1 row is eager and says why
    assert [(r["mask"], r["cuda_graphs"], bool(r["notes"])) for r in rows[::2]] == [
        ("upload", False, False), ("upload", False, True), ("skip", False, False), ("skip", True, False)]
    assert "CUDA graphs off: mask=upload" in rows[2]["notes"] and rows[2]["options"] == "mask=upload"
    assert rows[6]["options"] == "graphs"
    assert "CUDA graphs: as --graphs says" in err
    tg = rows[1]
    assert tg["device"] == "cuda" and tg["gpu_name"] == "NVIDIA H100 80GB HBM3" and tg["backends"] == "CUDA"
    assert tg["driver"] == "580.65.06" and tg["cuda_driver"] == "13.0" and tg["n_gpu_layers"] == 2
    assert tg["bandwidth_GBps"] == 3000.0 and tg["pct_of_floor"] > 0
    assert tg["bandwidth_source"].startswith("measured on this GPU 20") and "streaming read" in tg["bandwidth_source"]
    pp = rows[0]
    assert pp["gemm_TFLOPS"] == 600.0 and pp["roofline_ts"] == pytest.approx(600e12 / pp["flops_per_token"])
    # measured once, then read from the cache by the next command on the same card
    assert len(MEASURED) == 1
    again = bench("-p", "0", "-n", "2", "-r", "1", "--no-save")
    assert again.exit_code == 0 and "measuring the ceilings" not in again.stderr and len(MEASURED) == 1
    assert tg["throttled"] is True and tg["power_w_max"] == 350.0
    assert FakeRuntime.instances[0].options.mask == "upload" and FakeRuntime.instances[0].device == "cuda"


def test_fake_gpu_uses_graphs_by_default_where_the_step_can_be_captured(fake_gpu):
    res = bench("-p", "0", "-n", "2", "-r", "1", "--mask", "upload,device,skip", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["mask"], r["cuda_graphs"], r["options"], r["notes"]) for r in rows] == [
        ("upload", False, "mask=upload,in-flight", None), ("device", True, "mask=device,graphs,in-flight", None),
        ("skip", True, "graphs,in-flight", None)]  # a default needs no fallback warning
    assert [i.options.cuda_graphs for i in FakeRuntime.instances] == [False, True, True]
    assert "CUDA graphs: on for decode (the GPU default; --graphs 0 for eager); eager where the step cannot be " \
           "captured: mask=upload" in res.stderr
    assert "CUDA graphs off" not in res.stderr


def test_fake_gpu_default_table_has_no_graphs_column_when_every_set_is_captured(fake_gpu):
    res = bench("-p", "0", "-n", "2", "-r", "1", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "| graphs |" not in res.stdout.splitlines()[0]
    assert FakeRuntime.instances[0].options.cuda_graphs is True


def test_fake_gpu_replays_prefill_graphs_by_default_and_each_row_says_how_prefill_ran(fake_gpu):
    res = bench("-p", "4", "-n", "0", "-r", "2", "--prefill-graphs", "0,1", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["cuda_graphs"], r["prefill_graphs"], r["notes"]) for r in rows] == [(True, False, None), (True, True, None)]
    assert "prefill too: a chunk shape replays its graph after its first, eager run" in res.stderr
    md = bench("-p", "4", "-n", "0", "-r", "1", "--prefill-graphs", "0,1", "--no-save")
    assert "| pp_graphs |" in md.stdout.splitlines()[0]
    default = bench("-p", "4", "-n", "0", "-r", "1", "--no-save")
    assert default.exit_code == 0 and "pp_graphs" not in default.stdout.splitlines()[0]


def test_fake_gpu_faults_keep_graphs_off_unless_asked(fake_gpu):
    res = bench("-p", "0", "-n", "2", "-r", "1", "--faults", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 5 and not any(r["cuda_graphs"] or r["notes"] for r in rows)
    assert "off by default under --faults, so clean and fault rows compare like with like" in res.stderr
    FakeRuntime.instances.clear()
    res = bench("-p", "0", "-n", "2", "-r", "1", "--faults", "--graphs", "1", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = {r["options"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["graphs,in-flight"]["cuda_graphs"] is True
    assert rows["inject=block-dim,graphs,in-flight"]["cuda_graphs"] is True
    off = rows["sync-every-op,in-flight"]
    assert off["cuda_graphs"] is False and "CUDA graphs off" in off["notes"]


def test_cpu_records_graphs_as_not_used_even_when_asked():
    res = bench("-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--graphs", "1", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert row["cuda_graphs"] is False and row["options"] == "in-flight"
    assert "CUDA graphs: not applicable on the CPU" in res.stderr


def test_interrupt_keeps_finished_rows_and_says_so_in_one_line(fake_gpu, monkeypatch, user_results):
    calls = {"n": 0}
    original = FakeRuntime.decode

    def decode(self, token):
        calls["n"] += 1
        if calls["n"] > 2:  # the warm-up's two in-flight steps, then the first timed step of tg4
            raise KeyboardInterrupt
        return original(self, token)

    monkeypatch.setattr(FakeRuntime, "decode", decode)
    res = bench("-p", "8", "-n", "4", "-r", "1", "-o", "json")
    assert res.exit_code == 130
    assert res.stderr.splitlines()[-1] == f"qprof: interrupted; kept 1 finished row(s) in {user_results}"
    assert [r["test"] for r in read_rows(user_results).rows] == ["pp8"]
    assert len(json.loads(res.stdout)) == 1  # the printed JSON array is closed


def test_cuda_requested_without_a_gpu_is_a_one_line_error():
    res = bench("--device", "cuda", "-p", "8")
    assert res.exit_code == 2
    assert res.stderr.startswith("qprof: error: no CUDA GPU available") and "--device cpu" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["-p", "abc"], "-p: 'abc' is not an integer"),
    (["-n", "-3"], "-n: -3 is below the minimum 0"),
    (["-pg", "512"], "-pg: '512' must be two integers PP,TG"),
    (["--mask", "gpu"], "--mask: unknown value 'gpu'; choose from upload, device, skip"),
    (["--inject", "grid"], "--inject: unknown value 'grid'"),
    (["--graphs", "2"], "--graphs: '2' is not 0 or 1"),
    (["-p", "0", "-n", "0"], "nothing to run"),
    (["-r", "0"], "-r: 0 repetitions; need at least 1"),
    (["--ctx", "64"], "--ctx 64 is too small: the longest test needs 512 tokens"),
    (["-m", "no-such-workload"], "no-such-workload"),
    (["-m", "./missing.gguf"], "model file not found: ./missing.gguf"),
    (["--faults", "--mask", "upload"], "--faults runs each fault switch itself"),
    (["--bandwidth", "0"], "--bandwidth must be a positive number, got 0"),
    (["--bandwidth", "-5"], "--bandwidth must be a positive number, got -5"),
    (["--tflops", "0"], "--tflops must be a positive number, got 0"),
    (["--tflops", "nan"], "--tflops must be a positive number, got nan"),
    (["--bandwidth", "-3"], "--bandwidth must be a positive number, got -3"),
    (["-t", "0"], "-t: 0 is below the minimum 1"),
    (["-t", "2,x"], "-t: 'x' is not an integer"),
    (["-p", "1000"], ("-p 1000 needs 1000 tokens of context, but tiny-q4_k_m declares 512 (llama.context_length of "
                      "workload tiny-q4_k_m)")),
    (["-p", "0", "-n", "0", "-pg", "500,100"], "-pg 500,100 needs 600 tokens of context, but tiny-q4_k_m declares 512"),
    (["--ctx", "1024"], "--ctx 1024 is more than the 512 tokens of context tiny-q4_k_m declares"),
])
def test_bad_input_is_one_line_error(args, message):
    res = bench("--device", "cpu", "--no-save", *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1].startswith("qprof: error: ")
    assert message in res.stderr.splitlines()[-1]


def test_bad_output_format_is_rejected_by_click():
    res = bench("-o", "xml")
    assert res.exit_code == 2 and "'xml' is not one of" in res.stderr


def test_pg_short_option_coexists_with_p():
    res = bench("--device", "cpu", "--no-save", "-p512x")
    assert "-p: '512x' is not an integer" in res.stderr


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    tty = Tty()
    bar = Progress(4, stream=tty)
    assert bar.enabled
    bar.step("tg128 clean")
    bar.clear()
    bar.close()
    out = tty.getvalue()
    assert "tg128 clean" in out and "1/4" in out and "\x1b[K" in out
    quiet = io.StringIO()
    bar = Progress(4, stream=quiet)
    bar.step("x")
    bar.clear()
    bar.close()
    assert not bar.enabled and quiet.getvalue() == ""


@pytest.mark.gpu
def test_cuda_bench_on_the_tiny_workload_end_to_end(monkeypatch):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    if USER_CACHE:  # keep the compiled-PTX cache warm on the GPU machine
        monkeypatch.setenv("QPROF_CACHE", USER_CACHE)
    else:
        monkeypatch.delenv("QPROF_CACHE")
    res = bench("-m", "tiny-q4_k_m", "-p", "32", "-n", "8", "-r", "2", "--faults", "--graphs", "0,1",
                "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "device cuda (" in res.stderr and "CUDA runtime" in res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 2 * 5 * 2
    for r in rows:
        assert r["runtime"] == "CudaRuntime" and r["device"] == "cuda" and r["gpu_name"]
        assert r["avg_ts"] > 0 and len(r["samples_ns"]) == 2 and r["type_k"] == "f32"
        assert r["n_gpu_layers"] == 4
    tg = [r for r in rows if r["test"] == "tg8"]
    if tg[0]["bandwidth_GBps"]:
        assert all(r["floor_ts"] > 0 and r["pct_of_floor"] > 0 for r in tg)
    if tg[0]["telemetry_source"] == "pynvml":
        assert all(r["telemetry_samples"] >= 2 and r["sm_clock_mhz_max"] > 0 for r in rows)
    # graphs can't capture a step that uploads or syncs: those rows ran eagerly and say so
    upload_asked = [r for r in rows if r["mask"] == "upload" and "CUDA graphs off" in (r["notes"] or "")]
    assert upload_asked and not any(r["cuda_graphs"] for r in upload_asked)
    assert any(r["cuda_graphs"] and r["options"] == "graphs" for r in rows)
    # prefill replays its graph (captured in the warm-up) wherever decode ran as a graph; tg rows have no prefill
    assert all(r["prefill_graphs"] == (r["cuda_graphs"] and r["test"] == "pp32") for r in rows)


@pytest.mark.parametrize("models, message", [
    ("tiny-q4_k_m,./missing.gguf", "model file not found: ./missing.gguf"),
    ("tiny-q4_k_m,no-such-workload", "unknown model or workload 'no-such-workload'"),
])
def test_a_bad_model_late_in_the_list_fails_before_any_benchmark(models, message, user_results):
    res = bench("--device", "cpu", "-m", models, "-p", "8", "-n", "2", "-r", "1")
    assert res.exit_code == 2 and res.stdout == "", res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qprof: error: {message}"), res.stderr
    assert not user_results.exists()


def test_results_in_a_missing_folder_is_refused_before_the_work():
    res = bench("--device", "cpu", "-p", "8", "-n", "2", "-r", "1", "--results", "nodir/rows.jsonl")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [("qprof: error: --results nodir/rows.jsonl: folder nodir/ does not exist "
                                       "(create it first)")]
    assert not os.path.exists("nodir")


def test_threads_list_is_a_configuration_recorded_in_each_row():
    res = bench("--device", "cpu", "-p", "0", "-n", "2", "-r", "1", "--no-warmup", "-t", "1,2", "-o", "jsonl",
                "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert [json.loads(line)["n_threads"] for line in res.stdout.splitlines()] == [1, 2]
    assert "CPU threads: 1,2 (-t)" in res.stderr
    res = bench("--device", "cpu", "-p", "0", "-n", "2", "-r", "1", "--no-warmup", "--no-save")
    from qprof.runtime.threads import default_threads, usable_cpus

    assert f"CPU threads: {default_threads()} (default: half of the {usable_cpus()} CPUs" in res.stderr


def test_cpu_faults_run_and_say_their_differences_are_noise():
    res = bench("--device", "cpu", "-p", "0", "-n", "2", "-r", "1", "--no-warmup", "--faults", "-o", "jsonl",
                "--no-save")
    assert res.exit_code == 0, res.output
    assert "the CPU runtime ignores the fault switches" in res.stderr and "run-to-run noise" in res.stderr
    rows = {r["options"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["in-flight"]["notes"] is None
    assert all("noise" in rows[f"{k},in-flight"]["notes"] for k in ("mask=upload", "scalar-upload", "sync-every-op",
                                                                    "inject=block-dim"))
