"""The bench runner: llama-bench's test bodies, warm-up, timing, model reuse and complete rows (fake runtime)."""

from __future__ import annotations

import pytest
from bench_fakes import FakeCudaRuntime, FakeRuntime, fake_env, fake_model, fake_nvml

from qprof.bench.params import BenchParams, BenchTest
from qprof.bench.record import FIELDS
from qprof.bench.runner import BenchRunner, LoadedModel, TokenSource, time_test, warm_up
from qprof.bench.telemetry import NvmlReader, Sampler
from qprof.ceilings.choose import Ceiling, RunCeilings

UNKNOWN = RunCeilings(Ceiling(None, "unknown"), Ceiling(None, "unknown"))


@pytest.fixture(autouse=True)
def _reset_instances():
    FakeRuntime.instances.clear()


def make_runner(params, *, op_s=0.0, sampler=None, env=None, bw=None, loads=None, warn=None, steps=None):
    model = fake_model()

    def load(spec):
        if loads is not None:
            loads.append(spec)
        return LoadedModel(spec, model.path, model)

    def create(m, device, options, annotator, n_ctx):
        return FakeRuntime(m, device, options, annotator, n_ctx, op_s=op_s)

    return BenchRunner(params, env or fake_env(), bw or UNKNOWN,
                       sampler or Sampler(None, "none: test"), load=load, create_runtime=create,
                       on_step=(steps.append if steps is not None else None), warn=warn)


def test_token_source_starts_with_bos_and_stays_in_vocab():
    src = TokenSource(fake_model(n_vocab=50))
    toks = src.tokens(200)
    assert toks[0] == 1 and all(0 <= t < 50 for t in toks)
    assert len(set(toks)) > 10  # random ids, not a constant
    assert src.tokens(3, start=False)[0] in range(50)


def test_pp_is_one_prefill_between_syncs():
    rt = FakeRuntime(fake_model(), n_ctx=64)
    ns = time_test(rt, BenchTest(16, 0), TokenSource(fake_model()))
    assert ns > 0
    kinds = [c[0] for c in rt.calls]
    assert kinds == ["reset", "sync", "prefill", "sync"]
    assert len(rt.calls[2][1]) == 16 and rt.calls[2][1][0] == 1


def test_tg_decodes_one_token_at_a_time_from_bos_with_a_sync_each():
    rt = FakeRuntime(fake_model(), n_ctx=64)
    time_test(rt, BenchTest(0, 5), TokenSource(fake_model()))
    decodes = [c for c in rt.calls if c[0] == "decode"]
    assert len(decodes) == 5 and decodes[0][1] == 1
    kinds = [c[0] for c in rt.calls]
    assert kinds[:2] == ["reset", "sync"]
    assert kinds[2:] == ["decode", "sync"] * 5 + ["sync"]
    assert rt.n_past == 5


def test_pg_is_prefill_then_decode_in_one_timing():
    rt = FakeRuntime(fake_model(), n_ctx=64)
    time_test(rt, BenchTest(8, 3), TokenSource(fake_model()))
    kinds = [c[0] for c in rt.calls if c[0] != "sync"]
    assert kinds == ["reset", "prefill", "decode", "decode", "decode"]
    assert rt.n_past == 11


def test_warm_up_runs_prompt_and_one_token():
    rt = FakeRuntime(fake_model(), n_ctx=64)
    warm_up(rt, BenchTest(8, 100), TokenSource(fake_model()))
    kinds = [c[0] for c in rt.calls if c[0] != "sync"]
    assert kinds == ["reset", "prefill", "decode"]


def test_rows_reuse_runtime_per_option_set_and_load_each_model_once():
    loads, steps = [], []
    params = BenchParams(models=["a", "b"], n_prompt=[8], n_gen=[4], repetitions=3, mask=["upload", "skip"])
    runner = make_runner(params, loads=loads, steps=steps)
    rows = list(runner.rows())
    assert loads == ["a", "b"]
    assert len(FakeRuntime.instances) == 4  # one per (model, option set)
    assert [(r["model"], r["mask"], r["test"]) for r in rows] == [
        ("a", "upload", "pp8"), ("a", "upload", "tg4"), ("a", "skip", "pp8"), ("a", "skip", "tg4"),
        ("b", "upload", "pp8"), ("b", "upload", "tg4"), ("b", "skip", "pp8"), ("b", "skip", "tg4")]
    assert len(steps) == runner.steps() == 8 * (3 + 1)
    rt = FakeRuntime.instances[0]
    assert rt.options.mask == "upload" and rt.n_ctx == 256
    # warm-up + 3 reps for each of two tests, each starting from an empty cache
    assert sum(1 for c in rt.calls if c[0] == "reset") == 2 * 4


def test_row_fields_statistics_and_floor():
    params = BenchParams(models=["m"], n_prompt=[8], n_gen=[4], repetitions=3, warmup=False)
    runner = make_runner(params, op_s=0.002, bw=RunCeilings(Ceiling(1000.0, "--bandwidth"), Ceiling(50.0, "--tflops")))
    pp, tg = list(runner.rows())
    assert set(FIELDS) <= set(tg)
    assert len(tg["samples_ns"]) == 3 and all(ns >= 4 * 2_000_000 for ns in tg["samples_ns"])
    assert tg["avg_ns"] == int(sum(tg["samples_ns"]) / 3)
    assert tg["samples_ts"] == pytest.approx([4e9 / ns for ns in tg["samples_ns"]])
    assert tg["avg_ts"] == pytest.approx(sum(tg["samples_ts"]) / 3)
    assert tg["stddev_ts"] >= 0
    model = fake_model()
    from qprof.runtime.base import decode_weight_bytes

    assert tg["bytes_per_token"] == decode_weight_bytes(model)
    assert tg["floor_ts"] == pytest.approx(1000e9 / tg["bytes_per_token"])
    assert tg["pct_of_floor"] == pytest.approx(100 * tg["avg_ts"] / tg["floor_ts"])
    assert pp["floor_ts"] is None and pp["pct_of_floor"] is None  # prompt processing is not weight-bound
    assert tg["bandwidth_source"] == "--bandwidth" and tg["gemm_source"] == "--tflops"
    # prompt processing is read against the GEMM rate over the model's FLOPs per prompt token
    from qprof.bench.roofline import prefill_flops

    assert pp["flops_per_token"] == pytest.approx(prefill_flops(model, 8) / 8)
    assert pp["roofline_ts"] == pytest.approx(50e12 / pp["flops_per_token"])
    assert pp["pct_of_roofline"] == pytest.approx(100 * pp["avg_ts"] / pp["roofline_ts"])
    assert tg["roofline_ts"] is None and tg["flops_per_token"] is None
    assert (tg["n_prompt"], tg["n_gen"], tg["test"]) == (0, 4, "tg4")
    assert tg["model_size"] == model.size_bytes and tg["model_n_params"] == model.n_params
    assert tg["quant"] == "Q8_0" and tg["model_type"] == "fake model Q8_0"
    assert tg["type_k"] == "f16" and tg["runtime"] == "FakeRuntime"
    assert tg["build_commit"] == "abc123" and tg["backends"] == "CPU" and tg["options"] == "in-flight"
    assert (pp["decode_loop"], pp["options"], tg["decode_loop"]) == (None, "clean", "in-flight")  # the default loop
    assert tg["warmup"] is False and tg["repetitions"] == 3


def test_single_repetition_has_zero_stddev():
    runner = make_runner(BenchParams(models=["m"], n_prompt=[0], n_gen=[2], repetitions=1))
    (row,) = list(runner.rows())
    assert row["stddev_ns"] == 0 and row["stddev_ts"] == 0.0


def test_telemetry_is_summarised_per_row_and_throttling_warns():
    warnings = []
    reader = NvmlReader(fake_nvml(reasons=0x4 | 0x1), "h")
    runner = make_runner(BenchParams(models=["m"], n_prompt=[0], n_gen=[3], repetitions=2),
                         op_s=0.01, sampler=Sampler(reader, "pynvml", interval=0.005), warn=warnings.append,
                         env=fake_env("cuda", "NVIDIA H100 80GB HBM3"))
    (row,) = list(runner.rows())
    assert row["telemetry_source"] == "pynvml" and row["telemetry_samples"] >= 2
    assert row["sm_clock_mhz_min"] == 1755 and row["sm_clock_mhz_max"] == 1980
    assert row["power_w_mean"] == 350.0 and row["temp_c_max"] == 61 and row["mem_used_mib_max"] == 5120
    assert row["throttled"] is True and "sw_power_cap" in row["throttle_reasons"]
    assert row["n_gpu_layers"] == 2 and row["device"] == "cuda"
    assert len(warnings) == 1 and "throttled during tg3" in warnings[0] and "sw_power_cap" in warnings[0]


def test_interrupt_stops_cleanly_and_keeps_earlier_rows():
    params = BenchParams(models=["m"], n_prompt=[4], n_gen=[2], repetitions=2)
    runner = make_runner(params)
    calls = {"n": 0}
    original = FakeRuntime.decode

    def interrupting(self, token):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(self, token)

    FakeRuntime.decode = interrupting
    got = []
    try:
        with pytest.raises(KeyboardInterrupt):
            got.extend(runner.rows())
    finally:
        FakeRuntime.decode = original
    assert [r["test"] for r in got] == ["pp4"]
    assert runner.sampler._thread is None


def test_runtime_warnings_are_reported_and_kept_in_rows():
    import warnings

    from qprof.bench.runner import BenchRunner

    model = fake_model()
    said = []

    def create(m, device, options, annotator, n_ctx):
        if options.mask == "upload":
            warnings.warn("CUDA graphs off: mask=upload copies a host-built mask every step", stacklevel=2)
        return FakeRuntime(m, device, options, annotator, n_ctx)

    params = BenchParams(models=["m"], n_prompt=[0], n_gen=[2], repetitions=1, mask=["upload", "skip"],
                         cuda_graphs=[True])
    runner = BenchRunner(params, fake_env("cuda", "H100"), UNKNOWN, Sampler(None, "none"),
                         load=lambda spec: LoadedModel(spec, model.path, model), create_runtime=create,
                         warn=said.append)
    upload, skip = list(runner.rows())
    assert upload["notes"] == "CUDA graphs off: mask=upload copies a host-built mask every step"
    assert skip["notes"] is None
    assert said == ["warning: m [mask=upload,graphs]: CUDA graphs off: mask=upload copies a host-built mask every step"]


def test_rows_record_whether_graphs_were_really_used():
    from qprof.bench.runner import graphs_in_use
    from qprof.runtime.options import RuntimeOptions

    model = fake_model()
    params = BenchParams(models=["m"], n_prompt=[2], n_gen=[2], repetitions=1, warmup=False,
                         mask=["upload", "skip"], cuda_graphs=[True])
    said = []
    runner = BenchRunner(params, fake_env("cuda", "NVIDIA H100 80GB HBM3"), UNKNOWN,
                         Sampler(None, "none"), load=lambda spec: LoadedModel(spec, model.path, model),
                         create_runtime=FakeCudaRuntime, warn=said.append)
    rows = list(runner.rows())
    assert [(r["test"], r["mask"], r["cuda_graphs"], r["options"]) for r in rows] == [
        ("pp2", "upload", False, "mask=upload"), ("tg2", "upload", False, "mask=upload,in-flight"),
        ("pp2", "skip", True, "graphs"), ("tg2", "skip", True, "graphs,in-flight")]
    assert "CUDA graphs off: mask=upload" in rows[0]["notes"] and rows[2]["notes"] is None
    assert said == [("warning: m [mask=upload,graphs]: CUDA graphs off: mask=upload copies a host-built mask "
                     "every step; decode runs eagerly")]
    # the CPU runtime (no .graph) never counts as graphs, whatever was asked
    assert not graphs_in_use(FakeRuntime(model, n_ctx=8)) and graphs_in_use(FakeCudaRuntime(model, options=RuntimeOptions(cuda_graphs=True), n_ctx=8))
    cpu = make_runner(BenchParams(models=["m"], n_prompt=[0], n_gen=[1], repetitions=1, cuda_graphs=[True]))
    assert [r["cuda_graphs"] for r in cpu.rows()] == [False]


def test_rows_record_whether_the_timed_prefills_replayed_graphs():
    model = fake_model()

    def rows(**kw):
        FakeRuntime.instances.clear()
        params = BenchParams(models=["m"], n_prompt=[4], n_gen=[2], pg=[(4, 2)], repetitions=3, cuda_graphs=[True],
                             **kw)
        runner = BenchRunner(params, fake_env("cuda", "NVIDIA H100 80GB HBM3"), UNKNOWN, Sampler(None, "none"),
                             load=lambda spec: LoadedModel(spec, model.path, model), create_runtime=FakeCudaRuntime)
        return [(r["test"], r["cuda_graphs"], r["prefill_graphs"], r["notes"]) for r in runner.rows()]

    # the warm-up's prefill runs eagerly and is captured; every timed one replays; tg has no prefill
    assert rows() == [("pp4", True, True, None), ("tg2", True, False, None), ("pp4+tg2", True, True, None)]
    graphs = FakeRuntime.instances[0].prefill_graphs
    assert (graphs.eager, graphs.captures, graphs.replays) == (1, 1, 3 + 1 + 3)
    first_eager = rows(warmup=False)  # the first timed prefill is the shape's first run: the row says so
    note = "prefill: 2 of 3 timed chunks replayed a CUDA graph; the others ran eagerly (a shape's first run, or no " \
           "graph slot free)"
    assert first_eager[0] == ("pp4", True, False, note)
    assert first_eager[2] == ("pp4+tg2", True, True, None)
    assert [r[2] for r in rows(prefill_graphs=[False])] == [False, False, False]
    assert FakeRuntime.instances[0].prefill_graphs is None


def test_kv_type_and_ubatch_follow_the_runtime():
    from types import SimpleNamespace

    import torch

    from qprof.bench.record import kv_type, prefill_ubatch

    assert kv_type(SimpleNamespace(cache=SimpleNamespace(k=torch.zeros(1)))) == "f32"
    assert kv_type(SimpleNamespace(k_cache=torch.zeros(1, dtype=torch.bfloat16))) == "bf16"
    assert kv_type(object()) == "unknown"
    assert prefill_ubatch(FakeRuntime(fake_model(), n_ctx=8), 700) == 700  # no PREFILL_CHUNK in its module
    import qprof.runtime.cuda.forward as fwd

    cuda_like = type("CudaLike", (), {"__module__": fwd.__name__})()
    assert prefill_ubatch(cuda_like, 700) == min(700, fwd.PREFILL_CHUNK)


def test_cpu_rows_with_fault_switches_say_they_are_noise_and_record_threads():
    from qprof.bench.runner import BenchRunner

    model = fake_model()
    params = BenchParams(models=["m"], n_prompt=[0], n_gen=[2], repetitions=1, mask=["skip", "upload"],
                         n_threads=[1, 3])
    runner = BenchRunner(params, fake_env(), UNKNOWN, Sampler(None, "none"),
                         load=lambda spec: LoadedModel(spec, model.path, model),
                         create_runtime=lambda m, d, o, a, n: FakeRuntime(m, d, o, a, n))
    rows = list(runner.rows())
    assert [(r["mask"], r["n_threads"]) for r in rows] == [("skip", 1), ("skip", 3), ("upload", 1), ("upload", 3)]
    assert [r["notes"] for r in rows if r["mask"] == "skip"] == [None, None]
    for r in rows[2:]:
        assert "the CPU runtime ignores this switch" in r["notes"] and "noise" in r["notes"]
