"""`qprof bench --gpus`: the plan's split, and real worker processes on the CPU runtime with fake GPU indices.

The workers are real child processes (`python -m qprof.bench.gpu_worker`) pinned with CUDA_VISIBLE_DEVICES
to fake GPUs; without CUDA they run the CPU reference runtime, so the pool, the pipe protocol, streaming,
failures, crashes and Ctrl-C are all exercised for real, only the GPU is pretend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qprof.bench import gpus as gpu_info
from qprof.bench import workers
from qprof.bench.gpu_worker import ORPHANED_EXIT, job_message
from qprof.bench.params import BenchParams
from qprof.bench.results import read_rows
from qprof.bench.slice_run import pinned_gpu
from qprof.bench.slices import GpuInfo, SliceJob, split_plan
from qprof.bench.workers import LocalPool, worker_env
from qprof.cli import main
from qprof.errors import QprofError

FAKE_GPUS = [GpuInfo(0, "Fake GPU", "GPU-fake-0"), GpuInfo(1, "Fake GPU", "GPU-fake-1")]
QUICK = ["-p", "8", "-n", "2", "-r", "1", "--no-warmup"]
CRASH_WORKER = str(Path(__file__).with_name("spread_crash_worker.py"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One workload cache for the module: the tiny models are made once, not once per test."""
    return tmp_path_factory.mktemp("spread-cache")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, shared_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QPROF_CACHE", str(shared_cache))


@pytest.fixture
def user_results(tmp_path):
    """Where bench appends without --results: the user data dir (XDG_DATA_HOME is the test's, see conftest)."""
    return tmp_path / "xdg-data" / "qprof" / "results.jsonl"


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.setattr(gpu_info, "list_gpus", lambda nvml=None: list(FAKE_GPUS))
    return FAKE_GPUS


def bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


def plan(models, **over) -> BenchParams:
    return BenchParams(models=models, n_prompt=[8], n_gen=[2], repetitions=1, warmup=False, **over)


# ---- the split ----

def test_each_model_gets_a_slice_and_idle_workers_split_the_widest():
    params = plan(["a", "b"], sync_every_op=[False, True], mask=["skip", "device"])  # 4 groups per model
    slices = split_plan(params, 3)
    assert [(s.model, len(s.groups)) for s in slices] == [("a", 2), ("a", 2), ("b", 4)]
    assert [g for s in slices for g in s.groups] == params.groups()  # every group once, in plan order
    assert all(len({g.model for g in s.groups}) == 1 for s in slices)  # one model load per slice
    assert slices[0].label() == "group 1/3 (a: clean, sync-every-op)" and slices[2].n_rows() == 8


def test_models_never_share_a_slice_and_a_slice_never_goes_empty():
    assert [s.model for s in split_plan(plan(["a", "b", "c"]), 2)] == ["a", "b", "c"]
    assert len(split_plan(plan(["a"]), 8)) == 1
    five = split_plan(plan(["a"], mask=["skip", "device", "upload"], sync_every_op=[False, True]), 4)
    assert [len(s.groups) for s in five] == [2, 2, 1, 1]


# ---- which GPUs ----

def test_select_gpus_all_a_list_dedupe_and_bad_input():
    assert gpu_info.select_gpus("all", FAKE_GPUS) == FAKE_GPUS
    assert gpu_info.select_gpus("1,0,1", FAKE_GPUS) == [FAKE_GPUS[1], FAKE_GPUS[0]]  # never two workers on one
    with pytest.raises(QprofError, match=r"--gpus: 'x' is not a GPU index"):
        gpu_info.select_gpus("0,x", FAKE_GPUS)
    with pytest.raises(QprofError, match=r"there is no GPU 5 here \(this host has GPU 0, 1"):
        gpu_info.select_gpus("5", FAKE_GPUS)
    with pytest.raises(QprofError, match="needs 'all' or a comma list"):
        gpu_info.select_gpus(",", FAKE_GPUS)


class FakeNvml:
    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}aaa-bbb"


def test_list_gpus_numbers_boards_as_nvml_does_and_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [(g.index, g.name, g.uuid) for g in gpu_info.list_gpus(FakeNvml())] == [
        (0, "NVIDIA H200", "GPU-0aaa-bbb"), (1, "NVIDIA H200", "GPU-1aaa-bbb"), (2, "NVIDIA H200", "GPU-2aaa-bbb")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-1aaa")  # a Slurm allocation: an index and a short UUID
    assert [g.index for g in gpu_info.list_gpus(FakeNvml())] == [2, 1]


def test_worker_env_pins_one_gpu_by_uuid_and_imports_this_qprof():
    env = worker_env(GpuInfo(3, "H200", "GPU-abc"))
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-abc" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(workers.__file__).resolve().parents[2])
    assert worker_env(GpuInfo(2))["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_worker_that_sees_another_gpu_than_it_was_pinned_to_fails():
    with pytest.raises(QprofError, match=r"pinned to GPU 1 .* but CUDA device 0 is GPU 0"):
        pinned_gpu(GpuInfo(1, "A", "GPU-a"), GpuInfo(0, "B", "GPU-b"))
    assert pinned_gpu(GpuInfo(1, None, None), None) == GpuInfo(1, None, None)  # CPU: the pin is all we know


# ---- the pool, for real ----

def test_pool_streams_rows_one_load_per_slice_and_never_two_workers_on_a_gpu():
    params = plan(["tiny-q4_k_m", "tiny-q8_0"], sync_every_op=[False, True])
    slices = split_plan(params, 3)  # tiny-q4_k_m cut in two, tiny-q8_0 whole (2 groups, 4 rows)
    pool = LocalPool(FAKE_GPUS)
    live: dict[int, int] = {}  # GPU index -> slice running there
    seen: dict[int, list[str]] = {s.index: [] for s in slices}
    streamed = False
    try:
        for job, event in pool.run([SliceJob(params, s) for s in slices]):
            gpu, kind = job.gpu.index, event["kind"]
            seen[job.slice.index].append(kind)
            if kind == "spawn":
                assert gpu not in live, f"slice {job.slice.index} started on GPU {gpu} beside {live[gpu]}"
                live[gpu] = job.slice.index
            elif kind == "exit":
                del live[gpu]
            elif kind == "row":
                assert event["row"]["gpu_index"] == gpu and event["row"]["gpu_uuid"] == job.gpu.uuid
                assert event["row"]["host"] and event["row"]["model"] == job.slice.model
                if seen[job.slice.index].count("row") == 1 and job.slice.n_rows() == 4:
                    # the first row of four reached us while its worker still runs: streamed, not batched
                    streamed = pool.running[gpu].proc.poll() is None
    finally:
        pool.close()
    assert streamed
    for s in slices:
        kinds = seen[s.index]
        assert kinds[0] == "spawn" and kinds[-2:] == ["done", "exit"]
        assert kinds.count("load") == 1 and kinds.count("row") == s.n_rows()


def test_cli_gpus_all_spreads_the_plan_and_every_row_names_its_gpu(fake_gpus, user_results, tmp_path):
    res = bench("--gpus", "all", "-m", "tiny-q4_k_m,tiny-q8_0", *QUICK, "--sync-every-op", "0,1")
    assert res.exit_code == 0, res.output + str(res.exception)
    err = res.stderr
    assert err.splitlines()[0] == (f"qprof bench: results: appending to {user_results} (the user data dir; set "
                                   "$QPROF_RESULTS or --results FILE to choose)")  # the plain run's rule
    assert "--gpus all: one worker process per GPU, pinned with CUDA_VISIBLE_DEVICES: GPU 0 (Fake GPU), " \
           "GPU 1 (Fake GPU)" in err
    assert "2 group(s) of the plan, each loading its model once, over 2 GPU(s)" in err
    assert f"8 row(s) appended in {user_results} from 2 group(s) on GPU 0 (Fake GPU), GPU 1 (Fake GPU)" in err
    assert "| gpu |" in res.stdout.splitlines()[0] and "|  bound t/s | % bound |" in res.stdout.splitlines()[0]
    assert not (tmp_path / "results").exists()  # nothing lands in the working directory
    rows = read_rows(user_results).rows
    assert len(rows) == 8
    by_model = {m: {(r["gpu_index"], r["gpu_uuid"]) for r in rows if r["model"] == m}
                for m in ("tiny-q4_k_m", "tiny-q8_0")}
    assert sorted(by_model.values()) == [{(0, "GPU-fake-0")}, {(1, "GPU-fake-1")}]
    assert {(r["test"], r["sync_every_op"]) for r in rows} == {("pp8", False), ("tg2", False), ("pp8", True),
                                                               ("tg2", True)}


def test_workers_read_their_rows_against_the_ceilings_given_and_no_save_writes_nothing(fake_gpus, user_results):
    res = bench("--gpus", "all", "-m", "tiny-q4_k_m", *QUICK, "--bandwidth", "100", "--tflops", "0.5",
                "--no-save", "-o", "jsonl")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert res.stderr.splitlines()[0] == "qprof bench: results: not saved (--no-save)"
    assert "] decode floor: 100.0 GB/s read bandwidth (--bandwidth)" in res.stderr  # from the worker
    assert "] prefill roofline: 0.5 TFLOP/s GEMM rate (--tflops)" in res.stderr
    assert "2 row(s) not saved (--no-save) from 1 group(s) on GPU 0 (Fake GPU)" in res.stderr
    pp, tg = [json.loads(line) for line in res.stdout.splitlines()]
    assert (pp["test"], tg["test"]) == ("pp8", "tg2")
    assert tg["bandwidth_source"] == "--bandwidth" and tg["floor_ts"] == pytest.approx(100e9 / tg["bytes_per_token"])
    assert pp["gemm_source"] == "--tflops" and pp["roofline_ts"] == pytest.approx(0.5e12 / pp["flops_per_token"])
    assert pp["pct_of_roofline"] == pytest.approx(100 * pp["avg_ts"] / pp["roofline_ts"])
    assert not user_results.exists()


def test_without_overrides_cpu_workers_say_the_bounds_are_unknown(fake_gpus):
    res = bench("--gpus", "0", "-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--no-warmup", "--no-save",
                "-o", "jsonl")
    assert res.exit_code == 0, res.output + str(res.exception)
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert row["bandwidth_source"].startswith("unknown on the CPU") and row["floor_ts"] is None
    assert row["gemm_source"].startswith("unknown on the CPU")


REFUSED_PEERS = ("qprof: error: --llama-bench, --llama-bench-json and --peer-only run in one process, not with "
                 "--gpus/--ray: record llama.cpp's rows in a separate `qprof bench` run")


@pytest.mark.parametrize("spread", [["--gpus", "all"], ["--gpus", "0"], ["--ray", "auto"]])
@pytest.mark.parametrize("peer", [["--llama-bench", "/no/llama-bench"], ["--llama-bench-json", "saved.json"],
                                  ["--peer-only", "--llama-bench-json", "saved.json"]])
def test_llama_cpp_rows_with_a_spread_are_refused_in_one_line_before_anything_runs(fake_gpus, spread, peer):
    res = bench(*spread, *peer, "-m", "tiny-q4_k_m")
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines() == [REFUSED_PEERS]
    assert res.stdout == ""


def test_a_failed_group_is_named_and_the_rest_carry_on(fake_gpus, tmp_path, user_results):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    res = bench("--gpus", "0", "-m", "bad.gguf,tiny-q4_k_m,tiny-q8_0", *QUICK)  # one GPU: slices in turn
    assert res.exit_code == 2, res.output
    assert "group 1/3 (bad.gguf: graphs) on GPU 0 (Fake GPU) failed: bad.gguf: file is truncated in the header" \
           in res.stderr and "carrying on with the rest" in res.stderr
    last = res.stderr.splitlines()[-1]
    assert last.startswith("qprof: error: 1 of 3 group(s) failed: group 1/3 (bad.gguf")
    assert last.endswith(f"; 4 finished row(s) kept in {user_results}")
    assert [r["model"] for r in read_rows(user_results).rows] == ["tiny-q4_k_m"] * 2 + ["tiny-q8_0"] * 2


def test_fail_fast_stops_at_the_first_failed_group(fake_gpus, tmp_path, user_results):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    res = bench("--gpus", "0", "-m", "bad.gguf,tiny-q4_k_m", *QUICK, "--fail-fast")
    assert res.exit_code == 2, res.output
    assert "stopping the rest (--fail-fast)" in res.stderr
    assert "group 2/2" not in res.stderr  # never started
    last = res.stderr.splitlines()[-1]
    assert last.startswith("qprof: error: 1 of 2 group(s) failed")
    assert "; 1 more group(s) stopped or never started (--fail-fast); 0 finished row(s) kept" in last
    assert not user_results.exists()


def test_a_worker_crash_keeps_its_rows_names_the_error_and_the_rest_carry_on(fake_gpus, monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "WORKER_ARGV", [sys.executable, CRASH_WORKER])
    out = tmp_path / "bench.jsonl"  # --results must name an existing folder
    res = bench("--gpus", "0", "-m", "tiny-q8_0,tiny-q4_k_m", *QUICK, "--results", str(out))
    assert res.exit_code == 2, res.output
    assert "group 1/2 (tiny-q8_0: graphs) on GPU 0 (Fake GPU) failed: worker killed by SIGKILL: crashing on " \
           "purpose after one row; its 1 finished row(s) are kept; carrying on with the rest" in res.stderr
    rows = read_rows(out).rows
    assert [(r["model"], r["test"]) for r in rows] == [("tiny-q8_0", "pp8"), ("tiny-q4_k_m", "pp8"),
                                                       ("tiny-q4_k_m", "tg2")]


def test_ctrl_c_keeps_finished_rows_and_leaves_no_worker_running(fake_gpus, monkeypatch, tmp_path):
    from qprof.bench import results

    procs = []
    launch = LocalPool._launch
    monkeypatch.setattr(LocalPool, "_launch", lambda self, job: procs.append(launch(self, job)) or procs[-1])
    real_append = results.append_row
    appended = []

    def interrupt_at_the_second_row(path, row):  # Ctrl-C while the second row comes in
        if appended:
            raise KeyboardInterrupt
        appended.append(real_append(path, row))

    monkeypatch.setattr(results, "append_row", interrupt_at_the_second_row)
    monkeypatch.setenv("QPROF_RESULTS", str(tmp_path / "env.jsonl"))  # $QPROF_RESULTS, as for a plain run
    res = bench("--gpus", "all", "-m", "tiny-q4_k_m,tiny-q8_0", "-p", "8", "-n", "2,4", "-r", "1", "--no-warmup",
                "-o", "json")
    assert res.exit_code == 130, res.output
    assert f"results: appending to {tmp_path / 'env.jsonl'} ($QPROF_RESULTS)" in res.stderr.splitlines()[0]
    assert res.stderr.splitlines()[-1].startswith(f"qprof: interrupted; kept 1 finished row(s) in "
                                                  f"{tmp_path / 'env.jsonl'}; unfinished: group ")
    assert len(read_rows(tmp_path / "env.jsonl").rows) == 1
    assert len(json.loads(res.stdout)) == 1  # the JSON array on stdout is closed
    assert procs and all(w.proc.poll() is not None for w in procs)


def test_a_worker_whose_driver_went_away_exits_instead_of_holding_its_gpu():
    params = plan(["tiny-q4_k_m"])
    job = SliceJob(params, split_plan(params, 1)[0], gpu=FAKE_GPUS[0])
    proc = subprocess.Popen(workers.WORKER_ARGV, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=worker_env(FAKE_GPUS[0]))
    proc.stdin.write(job_message(job))
    proc.stdin.close()  # the driver is gone (killed): its end of the pipe closes
    assert proc.wait(timeout=60) == ORPHANED_EXIT


@pytest.mark.parametrize("found, says", [
    ([], "--gpus all: this host has no GPU; running in this process, as without --gpus"),
    (FAKE_GPUS[:1], "--gpus all: this host has one GPU, GPU 0 (Fake GPU); running in this process, as without"),
])
def test_gpus_with_one_gpu_or_none_runs_as_today_and_says_so(monkeypatch, found, says):
    monkeypatch.setattr(gpu_info, "list_gpus", lambda nvml=None: list(found))
    res = bench("--gpus", "all", "-m", "tiny-q4_k_m", "-p", "8", "-n", "0", "-r", "1", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    assert says in res.stderr and "device cpu (no CUDA GPU found)" in res.stderr
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert row["test"] == "pp8" and row["host"] and row["gpu_index"] is None  # the CPU ran it, no GPU


@pytest.mark.parametrize("args, message", [
    (["--gpus", "x"], "--gpus: 'x' is not a GPU index"),
    (["--gpus", "7"], "--gpus: there is no GPU 7 here (this host has GPU 0, 1; see nvidia-smi)"),
    (["--gpus", "0", "--ray", "auto"], "--gpus and --ray: choose one"),
    (["--gpus", "all", "-p", "zz"], "-p: 'zz' is not an integer"),
    (["--gpus", "all", "--tflops", "-1"], "--tflops must be a positive number, got -1"),
    (["--ray", "auto", "--bandwidth", "0"], "--bandwidth must be a positive number, got 0"),
])
def test_bad_spread_input_is_one_line_error(fake_gpus, args, message):
    res = bench("--no-save", *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1].startswith("qprof: error: ") and message in res.stderr.splitlines()[-1]
