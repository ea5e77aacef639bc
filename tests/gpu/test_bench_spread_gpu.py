"""`qprof bench --gpus/--ray` on a real GPU: a pinned worker runs on the GPU it was given, and says which.

A one-GPU machine runs `--gpus all` in-process (as the CLI promises), so these tests drive the pools
directly: one slice on the first GPU through a worker process, and through a Ray task when Ray is there.
"""

from __future__ import annotations

import pytest

from qprof.bench.gpus import list_gpus
from qprof.bench.params import BenchParams
from qprof.bench.slices import SliceJob, split_plan

pytestmark = pytest.mark.gpu


def tiny_plan() -> BenchParams:
    return BenchParams(models=["tiny-q4_k_m"], n_prompt=[32], n_gen=[8], repetitions=2, cuda_graphs=[True],
                       graphs_auto=True)


def run_all(pool, params):
    events = []
    try:
        events = list(pool.run([SliceJob(params, s) for s in split_plan(params, 1)]))
    finally:
        pool.close()
    errors = [e["message"] for _, e in events if e["kind"] == "error"]
    return [e["row"] for _, e in events if e["kind"] == "row"], errors


def test_a_pinned_worker_process_runs_on_its_gpu():
    from qprof.bench.workers import LocalPool

    gpu = list_gpus()[0]
    rows, errors = run_all(LocalPool([gpu]), tiny_plan())
    assert not errors
    assert [r["test"] for r in rows] == ["pp32", "tg8"]
    for r in rows:
        assert r["device"] == "cuda" and r["runtime"] == "CudaRuntime" and r["avg_ts"] > 0
        assert (r["gpu_index"], r["gpu_uuid"]) == (gpu.index, gpu.uuid) and r["gpu_name"]
    assert rows[1]["cuda_graphs"] is True
    # the worker read its rows against its own card's ceilings (measured, or NVML's labelled fallback)
    assert rows[1]["floor_ts"] > 0
    assert rows[1]["bandwidth_source"].startswith(("measured on this GPU", "NVML theoretical"))


def test_a_ray_task_runs_on_the_gpu_ray_gives_it():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'qprof[ray]')")
    from qprof.bench.ray_pool import RayPool

    gpu = list_gpus()[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = RayPool("auto")
        pool.connect()
        rows, errors = run_all(pool, tiny_plan())
    finally:
        ray.shutdown()
    assert not errors
    assert [r["test"] for r in rows] == ["pp32", "tg8"]
    assert all(r["device"] == "cuda" and r["gpu_uuid"] and r["host"] for r in rows)
    assert gpu.uuid in {r["gpu_uuid"] for r in rows} or len(list_gpus()) > 1
