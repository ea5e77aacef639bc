"""Telemetry: NVML sampling with a fake pynvml, summaries, throttle warnings, and graceful absence."""

from __future__ import annotations

import sys
import time

import pytest
from bench_fakes import fake_nvml

from qprof.bench import telemetry as t


def test_reader_reads_every_metric():
    s = t.NvmlReader(fake_nvml(reasons=0x1), "h").read()
    assert s.sm_clock_mhz in (1980, 1755) and s.mem_clock_mhz == 2619
    assert s.power_w == 350.0 and s.temp_c == 61 and s.mem_used_mib == 5120 and s.reasons == 0x1


def test_unsupported_metric_reads_none_without_stopping_the_rest():
    s = t.NvmlReader(fake_nvml(fail=("nvmlDeviceGetPowerUsage", "nvmlDeviceGetCurrentClocksEventReasons")), "h").read()
    assert s.power_w is None and s.reasons is None
    assert s.temp_c == 61


def test_old_drivers_fall_back_to_throttle_reasons():
    nvml = fake_nvml(fail=("nvmlDeviceGetCurrentClocksEventReasons",))
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0x20
    assert t.NvmlReader(nvml, "h").read().reasons == 0x20


def test_info_names_driver_cuda_board_and_peak_bandwidth():
    info = t.NvmlReader(fake_nvml(), "h").info()
    assert info["driver"] == "580.65.06" and info["cuda_driver"] == "13.0"
    assert info["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert info["peak_bandwidth_GBps"] == 3352.3  # 2 x 2619 MHz x 5120 bit / 8


def test_open_reader_without_pynvml_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    reader, source = t.open_reader(0)
    assert reader is None and source.startswith("none: pynvml not installed")


def test_open_reader_when_nvml_cannot_start():
    reader, source = t.open_reader(0, nvml=fake_nvml(init_error=True))
    assert reader is None and "NVML unavailable" in source and "Shared Library" in source


def test_open_reader_falls_back_to_index_and_honours_visible_devices(monkeypatch):
    nvml = fake_nvml(fail=("nvmlDeviceGetHandleByUUID",))
    seen = []
    nvml.nvmlDeviceGetHandleByIndex = lambda i: seen.append(i) or f"h{i}"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    reader, source = t.open_reader(1, nvml=nvml)
    assert source == "pynvml" and reader.handle == "h1" and seen == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    reader, source = t.open_reader(0, nvml=nvml)
    assert reader is None and "no NVML device matches CUDA device 0" in source


def test_sampler_samples_during_the_test_and_summarises():
    sampler = t.Sampler(t.NvmlReader(fake_nvml(), "h"), "pynvml", interval=0.005)
    sampler.start()
    time.sleep(0.06)
    summary = sampler.stop()
    assert summary["telemetry_samples"] >= 4
    assert summary["sm_clock_mhz_min"] == 1755 and summary["sm_clock_mhz_max"] == 1980
    assert 1755 < summary["sm_clock_mhz_mean"] < 1980
    assert summary["throttled"] is False and summary["throttle_reasons"] == "none"
    assert set(summary) == set(t.SUMMARY_FIELDS)
    assert sampler._thread is None


def test_short_test_still_gets_two_samples():
    sampler = t.Sampler(t.NvmlReader(fake_nvml(), "h"), "pynvml", interval=10.0)
    sampler.start()
    summary = sampler.stop()
    assert summary["telemetry_samples"] == 2


def test_no_reader_gives_empty_summary_with_reason():
    sampler = t.Sampler(None, "none: CPU run")
    sampler.start()
    summary = sampler.stop()
    assert summary["telemetry_source"] == "none: CPU run" and summary["telemetry_samples"] == 0
    assert summary["power_w_mean"] is None and summary["throttled"] is None


def test_idle_and_sync_boost_are_not_throttling():
    samples = [t.Sample(0, reasons=0x1), t.Sample(1, reasons=0x10)]
    s = t.summarize(samples, "pynvml")
    assert s["throttled"] is False and s["throttle_reasons"] == "gpu_idle,sync_boost"
    assert t.throttle_warning(s, "tg128") is None


def test_throttle_warning_names_reasons_and_counts():
    samples = [t.Sample(0, reasons=0x0), t.Sample(1, reasons=0x40 | 0x1), t.Sample(2, reasons=0x4)]
    s = t.summarize(samples, "pynvml")
    assert s["throttled_samples"] == 2
    msg = t.throttle_warning(s, "pp512 clean")
    assert msg.startswith("warning: GPU throttled during pp512 clean")
    assert "sw_power_cap" in msg and "hw_thermal_slowdown" in msg and "gpu_idle" not in msg
    assert "2 of 3 samples" in msg and "\n" not in msg


def test_real_nvml_without_a_gpu_says_why():
    import torch

    if torch.cuda.is_available():
        return  # covered by the GPU test below
    reader, source = t.open_reader(0)
    assert reader is None and source.startswith("none: ")


@pytest.mark.gpu
def test_real_nvml_reads_the_gpu_torch_uses():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    pytest.importorskip("pynvml", reason="pynvml (nvidia-ml-py) not installed")
    reader, source = t.open_reader(torch.cuda.current_device())
    assert reader is not None, source
    info = reader.info()
    assert info["gpu_name"] == torch.cuda.get_device_name(torch.cuda.current_device())
    assert info["driver"] and info["peak_bandwidth_GBps"] > 100
    s = reader.read()
    assert s.sm_clock_mhz > 0 and s.mem_used_mib > 0 and s.temp_c > 0 and s.reasons is not None
