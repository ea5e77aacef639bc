"""`qprof check` without a GPU: the registry, case selection, NMSE, launch shapes from the traits table,
report formatting, and the CLI's one-line refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qprof.check import quant_cases
from qprof.check.harness import CaseResult, collect_cases, inject_verdict, load_ops, run_case
from qprof.check.registry import (
    EXACT_NMSE,
    MATMUL_NMSE,
    REGISTRY,
    Case,
    CheckContext,
    Measurement,
    Op,
    Selection,
    measure,
    nmse,
    register,
)
from qprof.check.report import format_table, summary_lines, to_json
from qprof.cli import main
from qprof.errors import QprofError
from qprof.quant.dequant import dequantize as cpu_dequantize
from qprof.quant.traits import ALL_TYPES, QUANT_TRAITS, traits
from qprof.runtime.cuda import kernels as K

QUANT_OPS = ("dequantize", "dequantize_f16", "get_rows", "matvec", "matmul")


def test_registry_holds_the_quant_ops_with_their_thresholds():
    ops = load_ops()
    assert set(QUANT_OPS) <= set(ops)
    assert ops["dequantize"].threshold == EXACT_NMSE == 1e-7
    assert ops["get_rows"].threshold == EXACT_NMSE
    assert ops["matvec"].threshold == ops["matmul"].threshold == MATMUL_NMSE == 5e-4
    assert load_ops() == ops  # loading twice registers nothing twice


def test_a_second_op_under_a_taken_name_is_refused():
    with pytest.raises(QprofError, match="check op 'matvec' is registered twice"):
        register(Op("matvec", 1.0, lambda sel: []))
    assert register(REGISTRY["matvec"]) is REGISTRY["matvec"]


def test_cases_cover_every_type_shape_and_n():
    cases = [c for _, c in collect_cases(Selection(shapes="all", ops=QUANT_OPS))]
    shapes = {f"{r}x{c}" for r, c in quant_cases.SMALL_SHAPES + quant_cases.MISTRAL_SHAPES}
    for op, ns in (("dequantize", {None}), ("get_rows", set(quant_cases.N_VALUES)),
                   ("matvec", set(range(1, 9))), ("matmul", {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 512})):
        got = {(c.qtype, c.shape, c.n) for c in cases if c.op == op}
        assert got == {(t, s, n) for t in ALL_TYPES for s in shapes for n in ns}, op
    # one weight (group) at a time: a group's cases are contiguous
    groups = [c.group for c in cases]
    assert len(set(groups)) == sum(1 for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g)


def test_selection_filters_ops_types_and_n():
    sel = Selection(shapes="mistral", ops=("matvec",), types=("Q6_K",), n=(3, 16))
    cases = [c for _, c in collect_cases(sel)]
    assert {(c.op, c.qtype, c.n) for c in cases} == {("matvec", "Q6_K", 3)}
    assert {c.shape for c in cases} == {"4096x4096", "14336x4096", "4096x14336", "32000x4096"}
    with pytest.raises(QprofError, match="unknown shape set 'huge'"):
        Selection(shapes="huge")
    with pytest.raises(QprofError, match="unknown check op 'matvek'"):
        collect_cases(Selection(ops=("matvek",)))


def test_inject_expectations_follow_the_traits_table():
    affected = set(K.inject_affected_types())
    assert affected == {t.name for t in QUANT_TRAITS.values() if t.dequant_threads > K.INJECT_BLOCK_DIM}
    assert affected and not affected & {"Q4_0", "Q8_0", "F32"}
    cases = [c for _, c in collect_cases(Selection(shapes="small", inject="block-dim"))]
    flagged = {(c.op, c.qtype) for c in cases if c.expect_inject_failure}
    injectable = {name for name, op in load_ops().items() if op.injectable}
    assert injectable == {"dequantize", "dequantize_f16", "matmul"}
    assert flagged == {(op, t) for op in injectable for t in affected}
    assert not any(c.expect_inject_failure for _, c in collect_cases(Selection(shapes="small")))


@pytest.mark.parametrize("name", ALL_TYPES)
def test_launch_shapes_come_from_the_traits_table(name):
    t = traits(name)
    cfg = K.dequant_launch(t, 1000)
    assert cfg.block[0] == t.dequant_threads and cfg.grid[0] * cfg.block[1] >= 1000
    bad = K.dequant_launch(t, 1000, inject="block-dim")
    assert bad.block[0] == K.INJECT_BLOCK_DIM and bad.threads_per_cta <= K.MAX_CTA_THREADS
    assert bad.grid[0] * bad.block[1] >= 1000
    mv = K.matvec_launch(t, 4097)
    assert mv.block == (t.matvec_threads, 1, 1) and mv.grid[0] * t.matvec_rows_per_cta >= 4097
    gr = K.get_rows_launch(t, 16, 5)
    assert gr.block[0] == t.dequant_threads and gr.grid[1] == 5
    with pytest.raises(QprofError, match="unknown fault 'oops'"):
        K.dequant_launch(t, 10, inject="oops")


def test_kernel_names_parse_back_to_family_and_type():
    for name in ALL_TYPES:
        for family, variant in (("dequant", "f16"), ("get_rows", None), ("matvec", "b8")):
            assert K.parse_kernel_name(K.kernel_name(family, name, variant)) == (family, name, variant)
    assert K.parse_kernel_name("rmsnorm_f32") is None
    with pytest.raises(QprofError, match="unsupported tensor type 'Q7_K'"):
        K.kernel_name("matvec", "Q7_K")


def test_the_kernels_mirror_of_the_traits_table_agrees(tmp_path):
    assert K.mirror_mismatches() == []
    broken = tmp_path / "quant_blocks.cuh"
    broken.write_text(K.TRAITS_HEADER.read_text().replace("X(Q6_K, q6_k, 14, 256, 210, 64,", "X(Q6_K, q6_k, 14, 256, 210, 32,"))
    assert K.mirror_mismatches(broken) == ["Q6_K.dequant_threads: traits 64 != kernel 32"]


def test_nmse_and_measure():
    ref = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert nmse(ref.float(), ref) == 0.0
    got = ref * (1 + 1e-3)
    assert nmse(got, ref) == pytest.approx(1e-6)
    m = measure(torch.tensor([1.0, float("nan"), 3.5]), ref, MATMUL_NMSE)
    assert math.isinf(m.nmse) and m.n_nan == 1 and m.max_abs_err == pytest.approx(0.5) and not m.passed
    assert Measurement(1e-8, 0.0, 0, EXACT_NMSE).passed and not Measurement(2e-7, 0.0, 0, EXACT_NMSE).passed
    with pytest.raises(QprofError, match=r"result shape \[2\] differs from the reference's \[3\]"):
        measure(torch.zeros(2), ref, 1.0)


@pytest.mark.parametrize("name", ALL_TYPES)
def test_random_weights_are_finite_and_deterministic(name):
    raw = quant_cases.random_weight_bytes(name, 3, 256, seed=5)
    assert raw.shape == (3, traits(name).row_bytes(256))
    assert np.array_equal(raw, quant_cases.random_weight_bytes(name, 3, 256, seed=5))
    vals = quant_cases.reference_values(raw, name, 3, 256)
    assert np.isfinite(vals).all() and np.abs(vals).max() > 0


def test_chunked_reference_equals_one_shot(monkeypatch):
    raw = quant_cases.random_weight_bytes("Q5_K", 37, 512, seed=2)
    monkeypatch.setattr(quant_cases, "_CHUNK_VALUES", 2048)  # 4 rows per chunk
    assert np.array_equal(quant_cases.reference_values(raw, "Q5_K", 37, 512),
                          cpu_dequantize(raw, "Q5_K", (37, 512)))


def _result(op, qtype, n, nmse_value, n_nan=0, expect=False, status=None):
    case = Case(op, qtype, "64x256", n, expect_inject_failure=expect)
    m = Measurement(nmse_value, 0.01, n_nan, MATMUL_NMSE)
    return CaseResult(case, m, status or ("PASS" if m.passed else "FAIL"))


def test_table_and_summary():
    results = [_result("matvec", "Q4_K", 1, 1e-9), _result("dequantize", "Q6_K", None, math.inf, n_nan=8192, expect=True),
               CaseResult(Case("matmul", "Q2_K", "13x768", 9), None, "ERROR", "CudaError: launch failed")]
    table = format_table(results).splitlines()
    assert table[0].split() == ["op", "type", "shape", "n", "NMSE", "max", "abs", "err", "status"]
    assert table[1].split()[:6] == ["matvec", "Q4_K", "64x256", "1", "1.00e-09", "1.00e-02"]
    assert "FAIL (8192 NaN)" in table[2] and "inf" in table[2] and " - " in table[2]
    assert "ERROR: CudaError: launch failed" in table[3]
    assert len(format_table(results, failures_only=True).splitlines()) == 3
    lines = summary_lines(results, Selection(shapes="small", inject="block-dim"), "H100")
    assert lines[0].startswith("qprof check on H100: 3 cases, 1 passed, 2 failed (1 with NaN, 1 errors)")
    assert "matvec 1/1" in lines[1] and "Q6_K 0/1" in lines[2]
    assert "traits predict failures in [Q6_K]; failing: [Q2_K, Q6_K] -> MISMATCH" in lines[3]
    assert "unexpected failure: matmul Q2_K 13x768 n=9" in lines[4]


def test_inject_verdict_and_json():
    good = [_result("dequantize", "Q6_K", None, math.inf, 10, expect=True), _result("dequantize", "Q4_0", None, 0.0)]
    v = inject_verdict(good)
    assert v.matches and v.expected_types == ("Q6_K",) and v.failing_types == ("Q6_K",)
    missed = inject_verdict([_result("matmul", "Q5_K", 9, 1e-6, expect=True)])
    assert not missed.matches and missed.missed == ("matmul Q5_K 64x256 n=9",)
    doc = json.loads(json.dumps(to_json(good, Selection(shapes="small", inject="block-dim"), "H100")))
    assert doc["inject"]["matches"] and doc["cases"][0]["nmse"] is None and doc["cases"][0]["n_nan"] == 10
    assert doc["summary"] == {"cases": 2, "failed": 1}


def test_an_exception_inside_a_case_becomes_an_error_row():
    def boom(case, ctx):
        raise QprofError("weight upload failed")

    op = Op("boom", 1.0, lambda sel: [], boom, boom)
    res = run_case(op, Case("boom", "Q4_0", "1x32", 1), CheckContext(Selection()))
    assert res.status == "ERROR" and res.message == "weight upload failed"


def test_check_cli_without_a_gpu_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(main, ["check", "--shapes", "small"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "qprof: error: no CUDA GPU: qprof check runs the kernels on a GPU (torch.cuda.is_available() is False)"]


@pytest.mark.parametrize("args, message", [
    (["--types", "Q4_K,Q9_X"], "unsupported tensor type 'Q9_X'"),
    (["--n", "1,0"], "--n takes positive integers separated by commas, got '0'"),
    (["--n", "two"], "--n takes positive integers separated by commas, got 'two'"),
    (["--ops", "matvec,nope"], "unknown check op 'nope'; known: dequantize, dequantize_f16, get_rows, matvec"),
    (["--types", ","], "empty list ','"),
])
def test_check_cli_bad_input_is_one_line(args, message):
    res = CliRunner().invoke(main, ["check", *args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_check_cli_rejects_unknown_choices():
    res = CliRunner().invoke(main, ["check", "--inject", "everything"])
    assert res.exit_code == 2 and "Invalid value for '--inject'" in res.output
