"""`qprof bench --ray`: a real local Ray cluster (2 CPUs, 2 declared GPUs, no real GPU), and the error lines.

Every qprof task asks Ray for num_gpus=1, as on a real cluster. This box has no GPU, so the cluster is
started with `num_gpus=2`: Ray then counts two GPU slots, schedules at most two tasks at once, and hands
each task a GPU id and CUDA_VISIBLE_DEVICES exactly as it would on GPU nodes. The tasks find no CUDA and
run the CPU reference runtime. A task that asked for no GPU would get no id, and its rows no gpu_index.
The cluster starts once for this module (it takes ~20 s on 2 cores) and the tests skip without Ray.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from qprof.bench.results import read_rows
from qprof.cli import main

REPO = str(Path(__file__).resolve().parents[1])
QUICK = ["-p", "8", "-n", "2", "-r", "1", "--no-warmup"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'qprof[ray]'); --ray tests need it")
    saved = {k: os.environ.get(k) for k in ("QPROF_CACHE", "PYTHONPATH")}
    # Ray's workers inherit this environment when the cluster starts: the same qprof, one workload cache
    os.environ["QPROF_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))
    os.environ["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [saved["PYTHONPATH"]])])
    options = {"num_cpus": 2, "num_gpus": 2, "include_dashboard": False, "log_to_driver": False,
               "object_store_memory": 80 * 2**20,
               # no idle workers started with the cluster: they would compete with the raylet's start,
               # and every GPU task gets a fresh worker anyway
               "_system_config": {"enable_worker_prestart": False, "prestart_worker_first_driver": False}}
    try:
        ray.init(**options)
    except Exception:  # noqa: BLE001 -- Ray gives its raylet a fixed 30 s to start; a busy box can miss it once
        ray.shutdown()
        ray.init(**options)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QPROF_RAY_ADDRESS", raising=False)


def bench(*args, **env):
    return CliRunner(env=env).invoke(main, ["bench", *args])


def test_ray_rows_come_back_naming_host_and_gpu_and_a_path_missing_on_the_worker_fails_alone(ray_cluster,
                                                                                            tmp_path):
    res = bench("--ray", "-m", "tiny-q4_k_m,/no/such/model.gguf,tiny-q8_0", *QUICK,  # --ray alone: auto
                "--tflops", "0.5")
    assert res.exit_code == 2, res.output + str(res.exception)
    err = res.stderr
    user_results = tmp_path / "xdg-data" / "qprof" / "results.jsonl"  # the plain run's default (see conftest)
    assert err.splitlines()[0].startswith(f"qprof bench: results: appending to {user_results} (the user data dir")
    assert "(--ray auto): 2 GPU(s); one task per group, each asking for 1 GPU" in err
    assert "3 group(s) of the plan, each loading its model once, over 2 GPU(s)" in err
    host = socket.gethostname()
    assert f"group 2/3 (/no/such/model.gguf: graphs) on {host} GPU " in err
    assert "failed: model file not found: /no/such/model.gguf; its 0 finished row(s) are kept" in err
    last = err.splitlines()[-1]
    assert last.startswith("qprof: error: 1 of 3 group(s) failed: group 2/3 (/no/such/model.gguf")
    assert last.endswith(f"; 4 finished row(s) kept in {user_results}")
    rows = read_rows(user_results).rows
    assert sorted((r["model"], r["test"]) for r in rows) == [
        ("tiny-q4_k_m", "pp8"), ("tiny-q4_k_m", "tg2"), ("tiny-q8_0", "pp8"), ("tiny-q8_0", "tg2")]
    assert all(r["host"] == host and r["gpu_index"] in (0, 1) and r["device"] == "cpu" for r in rows)
    pp = [r for r in rows if r["test"] == "pp8"]  # the task read its rows against the --tflops given
    assert all(r["gemm_source"] == "--tflops" and r["roofline_ts"] == 0.5e12 / r["flops_per_token"] for r in pp)
    header = res.stdout.splitlines()[0]
    assert "| host         |" in header and "| gpu |" in header


def test_ray_address_from_the_environment_and_ctrl_c_keeps_the_finished_rows(ray_cluster, monkeypatch, tmp_path):
    from qprof.bench import results

    real_append, appended = results.append_row, []

    def interrupt_at_the_second_row(path, row):
        if appended:
            raise KeyboardInterrupt
        appended.append(real_append(path, row))

    monkeypatch.setattr(results, "append_row", interrupt_at_the_second_row)
    res = bench("-m", "tiny-q4_k_m", "-p", "8", "-n", "2,4", "-r", "1", "--no-warmup", "-o", "jsonl",
                QPROF_RAY_ADDRESS="auto",  # no --ray: the environment asks for it
                QPROF_RESULTS=str(tmp_path / "env.jsonl"))
    assert res.exit_code == 130, res.output + str(res.exception)
    assert "Ray cluster at " in res.stderr and "1 group(s) of the plan" in res.stderr
    assert res.stderr.splitlines()[-1] == (f"qprof: interrupted; kept 1 finished row(s) in {tmp_path / 'env.jsonl'}; "
                                           "unfinished: group 1/1 (tiny-q4_k_m: graphs)")
    (row,) = read_rows(tmp_path / "env.jsonl").rows
    assert row["test"] == "pp8" and row["gpu_index"] in (0, 1) and row["host"] == socket.gethostname()
    assert [json.loads(line)["test"] for line in res.stdout.splitlines()] == ["pp8"]


def test_without_ray_it_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    res = bench("--ray", "auto", "-m", "tiny-q4_k_m", "--no-save")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == ("qprof: error: --ray needs Ray, which is not installed here: "
                                           "pip install 'qprof[ray]' (or pip install ray) on the driver and "
                                           "on every node")


def fake_ray(init_error: Exception | None = None, resources: dict | None = None) -> types.ModuleType:
    mod = types.ModuleType("ray")
    mod.is_initialized = lambda: False

    def init(**kwargs):
        if init_error:
            raise init_error

    mod.init = init
    mod.cluster_resources = lambda: resources or {}
    mod.shutdown = lambda: None
    return mod


NO_CLUSTER = ConnectionError("Could not find any running Ray instance.\nPlease specify the address.")


@pytest.mark.parametrize("ray, message", [
    (fake_ray(NO_CLUSTER), ("cannot join the Ray cluster at head-node:6379: Please specify the address.; "
                           "start one with `ray start --head`")),
    (fake_ray(resources={"CPU": 8.0}), ("the Ray cluster at head-node:6379 has no GPUs, and every qprof task "
                                       "asks for one")),
])
def test_ray_cluster_problems_are_one_line(monkeypatch, ray, message):
    from qprof.bench import ray_pool

    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(ray_pool, "probe_head", lambda address: None)  # as if a head answered there
    res = bench("--ray", "head-node:6379", "-m", "tiny-q4_k_m", "--no-save")
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1].startswith("qprof: error: " + message)


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "cannot join the Ray cluster at 127.0.0.1:1: nothing answers at 127.0.0.1:1 (Connection refused)"),
    ("head-without-port", "--ray 'head-without-port': expected HOST:PORT of the Ray head (e.g. head:6379) or auto"),
])
def test_an_address_where_no_head_answers_fails_at_once_instead_of_hanging(monkeypatch, address, message):
    monkeypatch.setitem(sys.modules, "ray", fake_ray())  # ray.init would retry such an address for minutes
    res = bench("--ray", address, "-m", "tiny-q4_k_m", "--no-save")
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1].startswith("qprof: error: " + message)
