"""The read at the size of one launch (qprof.ceilings.read_sizes): interpolation, and kernels read against it
in the profile table and the diagnosis (the measurement itself needs a GPU: tests/gpu/test_ceilings_gpu.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qprof.analysis import attribution as attr
from qprof.analysis.activity import make_table
from qprof.analysis.diagnosis import diagnose
from qprof.analysis.report import render_body, summarize_table
from qprof.ceilings.read_sizes import READ_SIZES, curve_of, describe_curve, read_at

MIB = 1 << 20
CURVE = {2 * MIB: 1000.0, 8 * MIB: 2000.0, 32 * MIB: 3000.0, 128 * MIB: 3800.0}


def test_read_at_interpolates_in_log_size_and_holds_the_ends():
    assert read_at(CURVE, 8 * MIB) == 2000.0
    assert read_at(CURVE, 4 * MIB) == pytest.approx(1500.0)  # halfway in log between 2 and 8 MiB
    assert read_at(CURVE, 16 * MIB) == pytest.approx(2500.0)
    assert read_at(CURVE, 1024) == 1000.0 and read_at(CURVE, 1 << 34) == 3800.0
    assert read_at({}, 8 * MIB) is None and read_at(CURVE, 0) is None and read_at(CURVE, math.nan) is None


def test_curve_of_reads_json_keys_and_drops_what_is_not_a_figure():
    assert curve_of({str(8 * MIB): "2000", str(2 * MIB): 1000, "x": 1, str(MIB): -3, str(4 * MIB): None}) == {
        2 * MIB: 1000.0, 8 * MIB: 2000.0}
    assert list(curve_of({str(32 * MIB): 1.0, str(2 * MIB): 2.0})) == [2 * MIB, 32 * MIB]  # ascending sizes
    assert describe_curve({}) == "not measured"
    assert all(s % 16 == 0 for s in READ_SIZES) and list(READ_SIZES) == sorted(READ_SIZES)


def _decode_kernels() -> pd.DataFrame:
    """Two decode kernels: a small matvec (9.4 MB a launch in 15 µs: 15% of a 4.2 TB/s peak) and a large one
    (66 MB a launch in 20 µs)."""
    rows = []
    for i in range(4):
        t0 = i * 100_000
        for name, start, dur, n_bytes in (("matvec_q4_k_b1", 0, 15_000, 9_400_000),
                                          ("matvec_gate_up_q4_k", 20_000, 20_000, 66_000_000)):
            rows.append({"kind": "kernel", "name": name, "family": "matvec", "qtype": "Q4_K", "phase": "decode",
                         "start_ns": t0 + start, "end_ns": t0 + start + dur, "dur_ns": dur, "bytes": n_bytes})
    return make_table(rows)


def test_top_kernels_read_each_kernel_against_the_read_at_its_launch_size():
    top = attr.top_kernels(_decode_kernels(), peak_Bps=4.2e12, phase="decode", read_by_size=CURVE).set_index("name")
    small, large = top.loc["matvec_q4_k_b1"], top.loc["matvec_gate_up_q4_k"]
    assert small["launch_bytes"] == 9_400_000 and large["launch_bytes"] == 66_000_000
    assert small["size_read_Bps"] == pytest.approx(read_at(CURVE, 9_400_000) * 1e9)
    assert small["pct_of_size_read"] == pytest.approx(100 * (9.4e6 / 15e-6) / small["size_read_Bps"])
    assert large["pct_of_size_read"] == pytest.approx(100 * (66e6 / 20e-6) / (read_at(CURVE, 66e6) * 1e9))
    no_curve = attr.top_kernels(_decode_kernels(), peak_Bps=4.2e12, phase="decode")
    assert no_curve["pct_of_size_read"].isna().all() and no_curve["launch_bytes"].notna().all()


def test_the_diagnosis_names_a_launch_too_small_to_stream():
    df = _decode_kernels()
    (small,) = [f for f in diagnose(df, 4.2e12, CURVE) if f.rule == "low_bandwidth" and "q4_k_b1" in f.message]
    assert "a pure read of its 9.4 MB a launch reaches" in small.message
    assert "(the launch size caps any kernel there" in small.message and "reaches 30% of that" in small.message  # the read at 9.4 MB is < 70% of peak
    assert small.numbers["pct_of_size_read"] == pytest.approx(100 * (9.4e6 / 15e-6) / (read_at(CURVE, 9.4e6) * 1e9))
    (plain,) = [f for f in diagnose(df, 4.2e12) if f.rule == "low_bandwidth" and "q4_k_b1" in f.message]
    assert "pure read" not in plain.message and "pct_of_size_read" not in plain.numbers


def test_the_report_shows_the_launch_size_columns_only_with_a_curve():
    s = summarize_table(_decode_kernels(), 4.2e12, read_by_size=CURVE)
    assert s["read_by_size_GBps"][str(2 * MIB)] == 1000.0
    text = "\n".join(render_body(s))
    assert "% size" in text and "MB/launch" in text and "of a pure read of the kernel's bytes per launch" in text
    plain = "\n".join(render_body(summarize_table(_decode_kernels(), 4.2e12)))
    assert "% size" not in plain
