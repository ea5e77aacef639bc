"""The events timer's calibration: the fit against CUPTI durations, its sanity check, and the fallbacks."""

from __future__ import annotations

import pytest

from qprof.errors import QprofError
from qprof.profile import event_calibration as ec


class FakeRig:
    """Markers are fake device times: a pair spans base + each kernel's launch and length + each copy's."""

    def __init__(self, base: int = 1300, launch: int = 1200, kernel: int = 900, handover: int = 2500,
                 copy: int = 1600) -> None:
        self.base, self.launch, self.kernel, self.handover, self.copy = base, launch, kernel, handover, copy
        self.synced = False

    def pair(self, kernels: int, copies: int = 0):
        return 0, self.base + kernels * (self.launch + self.kernel) + copies * (self.handover + self.copy)

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_ns(self, start, end) -> int:
        assert self.synced, "a marker was read before a sync"
        return end - start


def shaped_pairs(rig: FakeRig, n: int = 4):
    pairs = [(shape, rig.pair(*shape)) for _ in range(n) for shape in ec.SHAPES]
    rig.synchronize()
    return pairs


def test_the_fit_recovers_base_per_kernel_and_per_copy_from_cupti_durations():
    rig = FakeRig()
    cal = ec.from_cupti(rig, shaped_pairs(rig), [rig.kernel] * 12, [rig.copy] * 4, empty_pair_ns=1300)
    assert (cal.base_ns, cal.per_kernel_ns, cal.per_copy_ns, cal.source) == (1300, 1200, 2500, "cupti")
    assert cal.correction_ns(0) == 1300 and cal.correction_ns(2) == 3700 and cal.correction_ns(-1) == 1300
    assert cal.correction_ns(0, copies=1) == 3800
    text = cal.describe()
    assert "1.30 µs + 1.20 µs per kernel + 2.50 µs per copy subtracted" in text and "CUPTI" in text


def test_the_fit_refuses_a_wrong_count_and_an_implausible_result():
    rig = FakeRig()
    pairs = shaped_pairs(rig, n=1)
    with pytest.raises(QprofError, match="CUPTI saw 2 empty_kernel kernels and 1 copies, expected 3 and 1"):
        ec.from_cupti(rig, pairs, [900, 900], [1600], 1300)
    with pytest.raises(QprofError, match="implausible fit"):  # durations longer than the spans
        ec.from_cupti(rig, pairs, [5000, 5000, 5000], [1600], 1300)


def test_the_fallback_takes_the_empty_pair_for_both_and_says_why():
    cal = ec.fallback(FakeRig(base=1250), "no CUPTI of our own under nsys", n=8)
    assert (cal.base_ns, cal.per_kernel_ns, cal.per_copy_ns, cal.empty_pair_ns, cal.source) == (
        1250, 1250, 1250, 1250, "empty pair")
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
    assert (cal.source, cal.base_ns, cal.per_kernel_ns, cal.per_copy_ns) == ("empty pair", 1400, 1400, 1400)
    assert "CUPTI calibration failed: CUPTI_ERROR_NOT_INITIALIZED" in cal.why


def test_the_calibration_kernel_is_in_the_gate_module():
    from qprof.runtime.cuda.driver import KERNEL_DIR

    assert 'extern "C" __global__ void empty_kernel()' in (KERNEL_DIR / "profile_hold.cu").read_text()
