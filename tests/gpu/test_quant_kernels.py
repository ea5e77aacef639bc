"""Quantized kernels on the GPU: every type on dequantize/get_rows/matvec/matmul vs the float64 reference,
the block-dim fault breaking exactly the types the traits table predicts, both compile paths, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qprof.check.harness import inject_verdict, run_checks
from qprof.check.quant_cases import MISTRAL_SHAPES, N_VALUES, SMALL_SHAPES, random_weight_bytes
from qprof.check.registry import Selection
from qprof.errors import QprofError
from qprof.quant.traits import ALL_TYPES, traits

pytestmark = pytest.mark.gpu

QUANT_OPS = ("dequantize", "dequantize_f16", "get_rows", "matvec", "matmul")


def _failures(results):
    return [f"{r.case.label}: {r.status} nmse={r.measurement.nmse if r.measurement else None} {r.message}"
            for r in results if r.failed]


@pytest.fixture(scope="module")
def clean():
    return run_checks(Selection(shapes="small", ops=QUANT_OPS))


@pytest.fixture(scope="module")
def injected():
    return run_checks(Selection(shapes="small", ops=QUANT_OPS, inject="block-dim"))


def _weight(qtype: str, rows: int, cols: int, seed: int = 1):
    from qprof.runtime.cuda.quant_ops import DeviceWeight

    return DeviceWeight.from_bytes("t", qtype, (rows, cols), random_weight_bytes(qtype, rows, cols, seed))


def test_every_type_passes_every_quant_op(clean):
    assert not _failures(clean)
    seen = {(r.case.op, r.case.qtype, r.case.n) for r in clean}
    for qtype in ALL_TYPES:
        assert ("dequantize", qtype, None) in seen
        for n in range(1, 9):
            assert ("matvec", qtype, n) in seen
        for n in N_VALUES:
            assert ("matmul", qtype, n) in seen and ("get_rows", qtype, n) in seen
    assert len(clean) == len(ALL_TYPES) * len(SMALL_SHAPES) * (2 + 2 * len(N_VALUES) + 8)


def test_block_dim_fault_breaks_exactly_the_predicted_types(injected):
    from qprof.runtime.cuda.kernels import inject_affected_types

    verdict = inject_verdict(injected)
    assert verdict.matches, (verdict.unexpected[:5], verdict.missed[:5])
    predicted = set(inject_affected_types())
    assert set(verdict.failing_types) == predicted
    assert predicted and predicted != set(ALL_TYPES)  # the fault discriminates between types
    # matvec and get_rows never use the faulty launch
    assert all(not r.failed for r in injected if r.case.op in ("matvec", "get_rows"))


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_injected_dequant_leaves_the_tail_of_each_block_unwritten(qtype, nan_buffer):
    from qprof.runtime.cuda.kernels import INJECT_BLOCK_DIM
    from qprof.runtime.cuda.quant_ops import dequantize

    t = traits(qtype)
    w = _weight(qtype, 8, 512)
    out = dequantize(w, nan_buffer(8, 512), inject="block-dim")
    blocks = out.reshape(-1, t.block_values).isnan().cpu()
    written = min(t.dequant_threads, INJECT_BLOCK_DIM) * t.values_per_dequant_thread
    assert not blocks[:, :written].any()
    assert blocks[:, written:].all()  # empty slice (nothing missing) for types the fault spares


def test_mistral_shapes_for_the_q4_k_m_types():
    res = run_checks(Selection(shapes="mistral", ops=("matvec", "matmul", "get_rows"), types=("Q4_K", "Q6_K"),
                               n=(1, 8, 16)))
    assert not _failures(res)
    assert {r.case.shape for r in res} == {f"{r}x{c}" for r, c in MISTRAL_SHAPES}


def test_both_compile_paths_produce_loadable_modules():
    from cuda.bindings import driver as drv

    from qprof.runtime.cuda import driver
    from qprof.runtime.cuda.ptxas import find_tool

    driver.ensure_context()
    arch = driver.device_arch()
    for stem in ("dequant", "matvec"):
        source = driver.KERNEL_DIR / f"{stem}.cu"
        ptx = driver._nvrtc_compile(source, arch, driver.DEFAULT_OPTIONS)
        driver.check(drv.cuModuleLoadData(ptx), f"load NVRTC {stem}")
        if find_tool("nvcc"):
            ptx = driver.nvcc_compile(source, arch, driver.DEFAULT_OPTIONS, nvcc=find_tool("nvcc"))
            driver.check(drv.cuModuleLoadData(ptx), f"load nvcc {stem}")


def test_get_rows_out_of_range_id_gives_a_nan_row(nan_buffer):
    from qprof.runtime.cuda.quant_ops import get_rows

    w = _weight("Q4_K", 4, 256)
    ids = torch.tensor([1, 4, -1, 0], dtype=torch.int32, device="cuda")
    out = get_rows(w, ids, nan_buffer(4, 256)).cpu()
    assert out[[0, 3]].isfinite().all() and out[[1, 2]].isnan().all()


def test_float_weights_keep_their_exact_values(nan_buffer):
    from qprof.runtime.cuda.quant_ops import DeviceWeight, dequantize

    vals = np.array([[0.0, -0.0, 1.5, -2.25, 65504.0, 6.1e-5, 3.0, 7.0]], dtype=np.float16)
    w = DeviceWeight.from_bytes("f16", "F16", (1, 8), vals.view(np.uint8))
    assert torch.equal(dequantize(w, nan_buffer(1, 8)).cpu(), torch.from_numpy(vals.astype(np.float32)))


def test_bad_arguments_are_one_line_errors(nan_buffer):
    from qprof.runtime.cuda.quant_ops import DeviceWeight, get_rows, matmul, matvec

    w = _weight("Q4_0", 16, 64)
    x9 = torch.zeros(9, 64, device="cuda")
    with pytest.raises(QprofError, match="matvec takes 1..8 columns, got 9"):
        matvec(w, x9, nan_buffer(9, 16))
    with pytest.raises(QprofError, match="matvec input must be float32"):
        matvec(w, x9[:2].half(), nan_buffer(2, 16))
    with pytest.raises(QprofError, match=r"matvec output must have shape \[2, 16\]"):
        matvec(w, x9[:2], nan_buffer(2, 17))
    with pytest.raises(QprofError, match="ids must be a 1-D int32 CUDA tensor"):
        get_rows(w, torch.zeros(3, dtype=torch.int64, device="cuda"), nan_buffer(3, 64))
    with pytest.raises(QprofError, match="scratch must be a contiguous float16 CUDA buffer of >= 1024"):
        matmul(w, x9, nan_buffer(9, 16), torch.empty(100, dtype=torch.float16, device="cuda"))
    with pytest.raises(QprofError, match="Q8_0 2x64 needs 136 bytes, got 135"):
        DeviceWeight.from_bytes("short", "Q8_0", (2, 64), np.zeros(135, np.uint8))
    for _ in range(3):  # the device is still healthy after the refusals
        assert matvec(w, x9[:1], nan_buffer(1, 16)).isfinite().all()


def test_check_cli_on_the_gpu():
    from qprof.cli import main

    ok = CliRunner().invoke(main, ["check", "--shapes", "small", "--types", "Q4_K,Q8_0", "--ops", "matvec"])
    assert ok.exit_code == 0, ok.output
    assert "0 failed" in ok.output
    bad = CliRunner().invoke(main, ["check", "--shapes", "small", "--types", "Q6_K,Q4_0", "--ops", "dequantize",
                                    "--inject", "block-dim"])
    assert bad.exit_code == 1, bad.output
    assert "-> match" in bad.output and "failing: [Q6_K]" in bad.output
