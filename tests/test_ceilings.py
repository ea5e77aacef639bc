"""Measured ceilings: the per-card cache, the choice of figure and its source, doctor --measure, and no card's
constant left in qprof/ (the measurement itself runs in tests/gpu/test_ceilings_gpu.py)."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from qprof.ceilings import choose, store
from qprof.ceilings.card import Card
from qprof.ceilings.measure import READ_L2_MULTIPLE, READ_MIN_BYTES, rate_of, read_buffer_bytes
from qprof.ceilings.store import TIME_FORMAT, Ceilings
from qprof.cli import main
from qprof.errors import QprofError

H200 = Card("NVIDIA H200", "GPU-1234", "580.159.04", 3201)
NVML = {"peak_bandwidth_GBps": 4813.8, "driver": "580.159.04", "max_mem_clock_mhz": 3201}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path / "cache"))


def figures(card: Card = H200, read: float = 4216.0, when: datetime | None = None) -> Ceilings:
    when = when or datetime.now(timezone.utc)
    return Ceilings(card=card, measured_at=when.strftime(TIME_FORMAT), read_GBps=read, copy_GBps=3900.0,
                    gemm_fp16_TFLOPS=720.0, gemm_bf16_TFLOPS=730.0, best={"read_GBps": read + 30},
                    method={"read": "stream_read_sum over 1024 MiB"})


def test_card_key_names_every_part_and_marks_the_unknown():
    assert H200.key() == "NVIDIA H200 | GPU-1234 | 580.159.04 | 3201"
    assert Card("NVIDIA H200", None, "", None).key() == "NVIDIA H200 | ? | ? | ?"
    assert Card.from_dict(H200.as_dict()) == H200


def test_cache_round_trip_is_keyed_by_card_driver_and_memory_clock(tmp_path):
    path = store.save(figures())
    assert path == tmp_path / "cache" / "ceilings.json"
    found = store.lookup(H200)
    assert found.read_GBps == 4216.0 and found.best == {"read_GBps": 4246.0} and found.card == H200
    for other in (Card("NVIDIA H200", "GPU-1234", "590.1", 3201), Card("NVIDIA H200", "GPU-1234", "580.159.04", 2619),
                  Card("NVIDIA H200", "GPU-9999", "580.159.04", 3201)):
        assert store.lookup(other) is None
    store.save(figures(Card("NVIDIA H100 80GB HBM3", "GPU-h", "580.159.04", 2619), read=3300.0))
    assert store.lookup(H200).read_GBps == 4216.0  # both cards kept
    assert len(json.loads(path.read_text())["cards"]) == 2


def test_workers_saving_their_cards_at_once_keep_every_record(monkeypatch):
    """`bench --gpus` workers measure their own cards at the same time; each save must keep the others'."""
    real_read = store._read

    def slow_read(path):  # widen the window between reading the cache and writing it back
        found = real_read(path)
        time.sleep(0.2)
        return found

    monkeypatch.setattr(store, "_read", slow_read)
    cards = [Card("NVIDIA H200", f"GPU-{i}", "580.159.04", 3201) for i in range(3)]
    savers = [threading.Thread(target=store.save, args=(figures(c),)) for c in cards]
    for t in savers:
        t.start()
    for t in savers:
        t.join()
    monkeypatch.setattr(store, "_read", real_read)
    assert all(store.lookup(c) is not None for c in cards)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"schema": 999, "cards": {}}), json.dumps([1, 2])])
def test_a_broken_or_older_cache_reads_as_not_measured(tmp_path, text):
    path = tmp_path / "cache" / "ceilings.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert store.lookup(H200) is None
    store.save(figures())  # and is replaced cleanly
    assert store.lookup(H200).read_GBps == 4216.0


def test_age_and_description():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    assert store.age_text("2026-12-01T12:00:00Z", now) == "2 days ago"
    assert store.age_text("2026-12-02T12:00:00Z", now) == "1 day ago"
    assert store.age_text("2026-12-03T07:00:00Z", now) == "5 h ago"
    assert store.age_text("2026-12-03T11:48:00Z", now) == "12 min ago"
    assert store.age_text("2026-12-03T11:59:30Z", now) == "just now"
    assert store.age_text("yesterday", now) == "unknown age"
    lines = store.describe(figures(when=now - timedelta(days=3)), now)
    assert lines[0] == "read bandwidth    4,216.0 GB/s, best 4,246.0"
    assert "720.0 TFLOP/s" in lines[2]
    assert lines[4] == "read by size    not measured (one launch a buffer)"
    assert lines[5].startswith("measured") and "(3 days ago) on NVIDIA H200 | GPU-1234" in lines[5]
    assert lines[6] == "how read        stream_read_sum over 1024 MiB"
    c = figures(when=now)
    c.read_by_size_GBps = {str(8 << 20): 2460.4, str(2 << 20): 1210.0}
    assert store.describe(c, now)[4] == "read by size    2 MiB 1,210 · 8 MiB 2,460 GB/s (one launch a buffer)"


def test_the_read_by_size_is_kept_chosen_and_survives_an_override():
    c = figures()
    c.read_by_size_GBps = {str(2 << 20): 1200.0, str(32 << 20): 3000.0, "junk": 5.0, str(8 << 20): float("nan")}
    store.save(c)
    found = store.lookup(H200)
    assert found.read_by_size_GBps[str(2 << 20)] == 1200.0
    chosen = choose.from_measured(found)
    assert chosen.read_by_size == {2 << 20: 1200.0, 32 << 20: 3000.0}  # unreadable entries dropped, sizes as ints
    kept = choose.overridden(chosen, 5000.0, None)
    assert kept.bandwidth.value == 5000.0 and kept.read_by_size == chosen.read_by_size


def test_read_buffer_is_at_least_eight_l2s_and_fits_in_free_memory():
    l2 = 60 * 2**20
    assert read_buffer_bytes(l2, 140 * 2**30) == max(READ_L2_MULTIPLE * l2, READ_MIN_BYTES)
    assert read_buffer_bytes(200 * 2**20, 140 * 2**30) == READ_L2_MULTIPLE * 200 * 2**20  # beyond the 1 GiB minimum
    assert read_buffer_bytes(l2, 1 * 2**30) == 512 * 2**20  # half the free memory, still >= 8 x L2
    with pytest.raises(QprofError, match=r"not enough free GPU memory .* need 480 MiB \(8 x the 60 MiB L2\), 600 MiB free"):
        read_buffer_bytes(l2, 600 * 2**20)


def test_rates_are_the_median_and_the_best_repeat():
    r = rate_of([2.0, 1.0, 4.0], work=1e9)
    assert r.median == pytest.approx(1e9 / 2e-3) and r.best == pytest.approx(1e9 / 1e-3)
    with pytest.raises(QprofError, match="no usable samples"):
        rate_of([], 1.0)
    with pytest.raises(QprofError, match="no usable samples"):
        rate_of([0.0, 1.0], 1.0)


def test_the_read_times_its_launches_back_to_back_and_counts_every_launchs_bytes(monkeypatch):
    """Each timed sample holds READ_LAUNCHES_PER_SAMPLE launches (on the H200 one launch a sample read 3,980
    GB/s, 16 read 4,455: the card starts each sample idle), and the rate counts the bytes of all of them."""
    import torch

    from qprof.ceilings import measure
    from qprof.runtime.cuda import driver

    launches = []

    class FakeLibrary:  # stream_read_sum on the CPU: block 0 sums the whole buffer, the others 0
        def kernel(self, module, name):
            return (module, name)

        def launch(self, kernel, grid, block, buf, n_vec, sums):
            assert kernel == ("ceiling", "stream_read_sum") and n_vec.value * 16 == buf.numel() * 4
            sums.zero_()
            sums[0] = (int(buf.sum(dtype=torch.int64).item()) + 2**31) % 2**32 - 2**31
            launches.append(grid)

    def on_cpu(make):
        return lambda *a, device=None, **k: make(*a, **k)

    def timed(fn, repeats):  # every sample 1 ms
        for _ in range(repeats):
            fn()
        return [1.0] * repeats

    monkeypatch.setattr(torch, "randint", on_cpu(torch.randint))
    monkeypatch.setattr(torch, "zeros", on_cpu(torch.zeros))
    monkeypatch.setattr(driver.KernelLibrary, "get", staticmethod(lambda: FakeLibrary()))
    monkeypatch.setattr(measure, "time_ms", timed)
    rate = measure.measure_read(1 << 16, sm_count=2, launches=4)
    assert len(launches) == 4 * measure.BANDWIDTH_REPEATS
    assert rate.median == pytest.approx(4 * (1 << 16) / 1e-3)
    assert measure.measure_read.__defaults__ == (measure.READ_LAUNCHES_PER_SAMPLE,)
    assert measure.READ_LAUNCHES_PER_SAMPLE >= 4


def test_cpu_ceilings_are_unknown_unless_overridden():
    c = choose.run_ceilings("cpu")
    assert c.bandwidth.value is None and c.gemm.value is None
    assert c.bandwidth.source == "unknown on the CPU: no GPU's figure applies (--bandwidth GB/s sets one)"
    c = choose.run_ceilings("cpu", bandwidth=50.0)
    assert (c.bandwidth.value, c.bandwidth.source, c.gemm.value) == (50.0, "--bandwidth", None)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_overrides_are_refused(value):
    with pytest.raises(QprofError, match="--tflops must be a positive number"):
        choose.run_ceilings("cpu", tflops=value)


@pytest.fixture
def on_h200(monkeypatch):
    """run_ceilings on 'cuda' sees the H200 above; the measurement is a recorded fake."""
    calls = []
    monkeypatch.setattr(choose, "card_and_nvml", lambda info: (H200, NVML if info is None else info))

    def measure(card, log=None):
        calls.append(card)
        log("streaming read ...")
        return figures(card)

    return calls, measure


def test_first_use_measures_and_caches_then_reads_the_cache(on_h200):
    calls, measure = on_h200
    said = []
    c = choose.run_ceilings("cuda", log=said.append, measure=measure)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert c.bandwidth.value == 4216.0 and c.bandwidth.source == f"measured on this GPU {today} (streaming read)"
    assert c.gemm.value == 720.0 and c.gemm.source == f"measured on this GPU {today} (fp16 GEMM)"
    assert said[0].startswith("measuring the ceilings of NVIDIA H200 (first use on this card; cached in ")
    assert said[1] == "  streaming read ..."
    again = choose.run_ceilings("cuda", log=said.append, measure=measure)
    assert again == c and len(calls) == 1 and len(said) == 2
    mixed = choose.run_ceilings("cuda", bandwidth=4000.0, measure=measure)
    assert mixed.bandwidth.source == "--bandwidth" and mixed.gemm.value == 720.0
    both = choose.run_ceilings("cuda", bandwidth=1.0, tflops=2.0, measure=measure)
    assert (both.bandwidth.value, both.gemm.value) == (1.0, 2.0)


def test_a_failed_measurement_falls_back_to_nvml_theoretical_and_says_so(on_h200):
    def broken(card, log=None):
        raise QprofError("out of GPU memory while measuring the ceilings")

    said = []
    c = choose.run_ceilings("cuda", log=said.append, measure=broken)
    assert c.bandwidth.value == 4813.8
    assert c.bandwidth.source == ("NVML theoretical (2 x max memory clock x bus width; not measured: out of GPU memory "
                                  "while measuring the ceilings)")
    assert c.gemm.value is None and c.gemm.source.startswith("unknown: not measured (out of GPU memory")
    assert said[-1] == "warning: could not measure this GPU's ceilings: out of GPU memory while measuring the ceilings"
    assert store.lookup(H200) is None  # nothing cached: the next command tries again
    blind = choose.run_ceilings("cuda", nvml_info={"driver": "x"}, measure=broken)
    assert blind.bandwidth.value is None and "NVML gives no peak; pass --bandwidth GB/s" in blind.bandwidth.source


def test_doctor_on_the_cpu_says_there_are_no_ceilings_and_measure_is_refused():
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0
    text = res.output
    assert "\nceilings\n  none: no CUDA GPU (on the CPU bench and profile say the decode floor is unknown)\n" in text
    res = CliRunner().invoke(main, ["doctor", "--measure"])
    assert res.exit_code == 2
    assert res.stderr.strip() == ("qprof: error: no CUDA GPU available: nothing to measure (on the CPU the decode "
                                  "floor is unknown)")


def test_doctor_prints_this_cards_figures_and_age_and_measure_measures_again(on_h200, monkeypatch):
    import torch

    import qprof.ceilings.measure as measure_mod

    calls, measure = on_h200
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(measure_mod, "measure_card", measure)
    res = CliRunner().invoke(main, ["doctor"])
    assert res.exit_code == 0, res.output
    assert "  not measured on this card yet: `qprof doctor --measure` (bench and profile measure on first use)" \
        in res.output
    store.save(figures(when=datetime.now(timezone.utc) - timedelta(days=2)))
    res = CliRunner().invoke(main, ["doctor"])
    assert "\n  read bandwidth    4,216.0 GB/s, best 4,246.0\n" in res.output
    assert "(2 days ago) on NVIDIA H200 | GPU-1234" in res.output
    assert "\n  fp16 GEMM           720.0 TFLOP/s\n" in res.output and not calls
    res = CliRunner().invoke(main, ["doctor", "--measure", "--json"])
    assert res.exit_code == 0 and len(calls) == 1
    assert "measuring the ceilings of NVIDIA H200 (asked; cached in" in res.stderr
    view = json.loads(res.stdout)["ceilings"]
    assert view["status"] == "measured" and view["age"] == "just now" and view["figures"]["read_GBps"] == 4216.0


def test_no_cards_constant_is_left_in_qprof():
    """Ceilings are measured on the card at hand: no H100 (or other card's) figure may stand in for one."""
    root = Path(__file__).resolve().parents[1] / "qprof"
    pattern = re.compile(r"\b3030(?:\.0)?\b|3\.03\s*(?:e12|TB)|\b3352(?:\.\d)?\b|\b4814\b|\b4\.8\s*TB")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_a_failed_read_by_size_leaves_the_other_figures_standing(monkeypatch):
    """measure_card's sized reads run after the 1 GiB read: their failure is said in `method`, not raised."""
    from qprof.ceilings import measure, read_sizes

    def boom(*a, **k):
        raise RuntimeError("CUDA error: out of memory\nmore")

    monkeypatch.setattr(read_sizes, "measure_read_sizes", boom)
    assert measure.read_by_size(132, 60 << 20) == ({}, "not measured: CUDA error: out of memory")
