"""The normalized activity table: schema, validation, kernel classifier, NVTX context and launch charging."""

from __future__ import annotations

import pandas as pd
import pytest

from qprof.analysis.activity import (
    COLUMNS,
    assign_ranges,
    context_of,
    copy_kind_from_label,
    family_of_category,
    fill_kernel_bytes,
    from_records,
    level_of,
    make_table,
    restrict_to_run,
    to_records,
    validate,
    work_rows,
)
from qprof.errors import QprofError


@pytest.mark.parametrize("label, kind", [
    ("Memcpy HtoD (Pageable -> Device)", "HtoD"),
    ("Memcpy DtoH (Device -> Pinned)", "DtoH"),
    ("CUDA_MEMCPY_OPER_DTOD", "DtoD"),
    ("Host-to-Device", "HtoD"),
    ("Device-to-Host", "DtoH"),
    ("Peer-to-Peer", "DtoD"),
    ("Host-to-Host", "HtoH"),
    ("nonsense", None),
])
def test_copy_kind_from_label(label, kind):
    assert copy_kind_from_label(label) == kind


def test_make_table_fills_schema_and_duration():
    df = make_table([{"kind": "kernel", "name": "rmsnorm_f32", "start_ns": 10, "end_ns": 25}])
    assert list(df.columns) == list(COLUMNS)
    assert df.loc[0, "dur_ns"] == 15
    assert pd.isna(df.loc[0, "stream"]) and df.loc[0, "qtype"] is None
    validate(df)


def test_make_table_names_missing_required_column():
    with pytest.raises(QprofError, match="lack required column.*end_ns"):
        make_table([{"kind": "kernel", "name": "x", "start_ns": 1}])


@pytest.mark.parametrize("row, message", [
    ({"kind": "teleport", "name": "x", "start_ns": 0, "end_ns": 1}, "unknown kind"),
    ({"kind": "memcpy", "name": "x", "start_ns": 0, "end_ns": 1, "copy_kind": "sideways"}, "unknown copy kind"),
    ({"kind": "range", "name": "x", "start_ns": 0, "end_ns": 1, "level": "galaxy"}, "unknown range level"),
])
def test_validate_names_the_problem(row, message):
    with pytest.raises(QprofError, match=message):
        validate(make_table([row]))


def test_validate_rejects_negative_duration_and_missing_columns():
    df = make_table([{"kind": "kernel", "name": "k", "start_ns": 0, "end_ns": 5}])
    bad = df.copy()
    bad.loc[0, "end_ns"] = -3
    with pytest.raises(QprofError, match="'k' ends before it starts"):
        validate(bad)
    with pytest.raises(QprofError, match="lacks column"):
        validate(df.drop(columns=["nvtx_path"]))


def test_level_and_context_of_paths():
    assert level_of("prefill", None) == "phase"
    assert level_of("token 7", None) == "token"
    assert level_of("blk.3", None) == "layer"
    assert level_of("blk.3.attn_q", "matvec/Q4_K") == "op"
    assert level_of("decode", "phase") == "phase"
    ctx = context_of(["run", "decode", "token 7", "blk.3", "blk.3.attn_q"])
    assert ctx == {"nvtx_range": "blk.3.attn_q", "nvtx_path": "run/decode/token 7/blk.3/blk.3.attn_q",
                   "token": 7, "phase": "decode", "layer": 3}
    assert family_of_category("matvec/Q4_K") == ("matvec", "Q4_K")
    assert family_of_category("rmsnorm") == ("rmsnorm", None)
    assert family_of_category("layer") == (None, None)


def _launch_table() -> pd.DataFrame:
    """Two ops launch one kernel each; the first kernel RUNS while the second op's range is open."""
    rows = [
        {"kind": "range", "name": "run", "level": "run", "start_ns": 0, "end_ns": 1000, "tid": 1},
        {"kind": "range", "name": "decode", "level": "phase", "start_ns": 10, "end_ns": 900, "tid": 1},
        {"kind": "range", "name": "token 4", "level": "token", "start_ns": 10, "end_ns": 900, "tid": 1},
        {"kind": "range", "name": "blk.0", "level": "layer", "start_ns": 20, "end_ns": 800, "tid": 1},
        {"kind": "range", "name": "blk.0.attn_q", "level": "op", "family": "matvec", "qtype": "Q4_K",
         "start_ns": 30, "end_ns": 60, "tid": 1},
        {"kind": "range", "name": "blk.0.ffn_up", "level": "op", "family": "matvec", "qtype": "Q6_K",
         "start_ns": 60, "end_ns": 90, "tid": 1},
        {"kind": "api", "name": "cuLaunchKernel", "start_ns": 30, "end_ns": 40, "tid": 1, "correlation_id": 5},
        {"kind": "api", "name": "cuLaunchKernel", "start_ns": 65, "end_ns": 75, "tid": 1, "correlation_id": 6},
        {"kind": "kernel", "name": "matvec_q4_k", "family": "matvec", "qtype": "Q4_K", "start_ns": 70, "end_ns": 300,
         "stream": 7, "correlation_id": 5},
        {"kind": "kernel", "name": "matvec_q6_k", "family": "matvec", "qtype": "Q6_K", "start_ns": 300,
         "end_ns": 400, "stream": 7, "correlation_id": 6},
        # a launch on another thread with no ranges stays unattributed
        {"kind": "api", "name": "cuLaunchKernel", "start_ns": 50, "end_ns": 52, "tid": 2, "correlation_id": 9},
        {"kind": "kernel", "name": "other_k", "start_ns": 500, "end_ns": 510, "stream": 7, "correlation_id": 9},
        # warm-up work after the run range closes
        {"kind": "kernel", "name": "late_k", "start_ns": 5000, "end_ns": 5010, "stream": 7},
    ]
    return assign_ranges(make_table(rows))


def test_gpu_work_is_charged_to_the_launching_range():
    df = _launch_table()
    k = df[df["kind"] == "kernel"].set_index("name")
    # matvec_q4_k ran while blk.0.ffn_up was open, but attn_q launched it
    assert k.loc["matvec_q4_k", "nvtx_range"] == "blk.0.attn_q"
    assert k.loc["matvec_q6_k", "nvtx_range"] == "blk.0.ffn_up"
    assert k.loc["matvec_q4_k", "nvtx_path"] == "run/decode/token 4/blk.0/blk.0.attn_q"
    assert (k.loc["matvec_q4_k", "token"], k.loc["matvec_q4_k", "phase"], k.loc["matvec_q4_k", "layer"]) == \
        (4, "decode", 0)
    assert k.loc["other_k", "nvtx_range"] is None


def test_restrict_to_run_and_work_rows():
    df = restrict_to_run(_launch_table())
    assert "late_k" not in set(df["name"])
    assert "other_k" in set(df["name"])  # no launch context, but it ran inside the run window
    assert set(work_rows(df)["kind"]) == {"kernel"}
    ops_only = make_table([{"kind": "op", "name": "blk.0.attn_q", "start_ns": 0, "end_ns": 5}])
    assert list(work_rows(ops_only)["kind"]) == ["op"]


def test_fill_kernel_bytes_joins_through_the_op_range():
    df = fill_kernel_bytes(_launch_table(), {"blk.0.attn_q": 1234, "blk.0.ffn_up": 99})
    k = df[df["kind"] == "kernel"].set_index("name")
    assert k.loc["matvec_q4_k", "bytes"] == 1234 and k.loc["matvec_q6_k", "bytes"] == 99
    assert pd.isna(k.loc["other_k", "bytes"])


def test_records_round_trip():
    df = _launch_table()
    back = from_records(to_records(df))
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False)
