"""The events timer's calibration: the fit against CUPTI durations, its sanity check, and the fallbacks."""

from __future__ import annotations

import pytest

from qprof.errors import QprofError
from qprof.profile import event_calibration as ec


class FakeRig:
    """Markers are fake device times; a pair around k kernels spans base + k * (launch + kernel)."""

    def __init__(self, base: int = 1300, launch: int = 1200, kernel: int = 900) -> None:
        self.base, self.launch, self.kernel = base, launch, kernel
        self.synced = False

    def pair(self, kernels: int):
        return 0, self.base + kernels * (self.launch + self.kernel)

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_ns(self, start, end) -> int:
        assert self.synced, "a marker was read before a sync"
        return end - start


def test_the_fit_recovers_base_and_per_kernel_from_cupti_durations():
    rig = FakeRig()
    one, two = [rig.pair(1) for _ in range(4)], [rig.pair(2) for _ in range(4)]
    rig.synchronize()
    cal = ec.from_cupti(rig, [rig.kernel] * 12, one, two, empty_pair_ns=1300)
    assert (cal.base_ns, cal.per_kernel_ns, cal.source) == (1300, 1200, "cupti")
    assert cal.correction_ns(0) == 1300 and cal.correction_ns(2) == 3700 and cal.correction_ns(-1) == 1300
    assert "1.30 µs + 1.20 µs per kernel subtracted" in cal.describe() and "CUPTI" in cal.describe()


def test_the_fit_refuses_a_wrong_kernel_count_and_an_implausible_result():
    rig = FakeRig()
    one, two = [rig.pair(1)], [rig.pair(2)]
    rig.synchronize()
    with pytest.raises(QprofError, match="CUPTI saw 2 empty_kernel kernels, expected 3"):
        ec.from_cupti(rig, [900, 900], one, two, 1300)
    with pytest.raises(QprofError, match="implausible fit"):  # durations longer than the spans
        ec.from_cupti(rig, [5000, 5000, 5000], one, two, 1300)


def test_the_fallback_takes_the_empty_pair_for_both_and_says_why():
    cal = ec.fallback(FakeRig(base=1250), "no CUPTI of our own under nsys", n=8)
    assert (cal.base_ns, cal.per_kernel_ns, cal.empty_pair_ns, cal.source) == (1250, 1250, 1250, "empty pair")
    assert "no CUPTI of our own under nsys" in cal.describe()


def test_under_nsys_the_calibration_does_not_start_torch_profiler(monkeypatch):
    from qprof.profile import kineto

    monkeypatch.setattr(kineto, "under_nsys", lambda: True)
    monkeypatch.setattr(kineto, "kineto_capture", lambda *a: pytest.fail("torch.profiler started under nsys"))
    cal = ec.calibrate(FakeRig(), n=4)
    assert cal.source == "empty pair" and "under nsys" in cal.why


def test_a_failed_cupti_capture_falls_back_with_the_reason(monkeypatch):
    from contextlib import contextmanager

    from qprof.profile import kineto

    @contextmanager
    def broken(device, path):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")
        yield

    monkeypatch.setattr(kineto, "under_nsys", lambda: False)
    monkeypatch.setattr(kineto, "kineto_capture", broken)
    cal = ec.calibrate(FakeRig(base=1400), n=4)
    assert (cal.source, cal.base_ns, cal.per_kernel_ns) == ("empty pair", 1400, 1400)
    assert "CUPTI calibration failed: CUPTI_ERROR_NOT_INITIALIZED" in cal.why


def test_the_calibration_kernel_is_in_the_gate_module():
    from qprof.runtime.cuda.driver import KERNEL_DIR

    assert 'extern "C" __global__ void empty_kernel()' in (KERNEL_DIR / "profile_hold.cu").read_text()
