"""Every kernels/*.cu compiled with nvcc for sm_90 and assembled by ptxas: no spills, every quantized entry
point present, registers and shared memory printed; plus the ptxas parser and the `qprof kernels` CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qprof.cli import main
from qprof.quant.traits import ALL_TYPES
from qprof.runtime.cuda import kernels as K
from qprof.runtime.cuda.ptxas import find_tool, format_report, parse_ptxas_verbose

needs_toolkit = pytest.mark.skipif(not (find_tool("nvcc") and find_tool("ptxas")),
                                   reason="nvcc/ptxas not found (CUDA toolkit not installed)")

PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'matvec_q4_k_b1' for 'sm_90'
ptxas info    : Function properties for matvec_q4_k_b1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 62 registers, used 1 barriers, 64 bytes smem
ptxas info    : Compile time = 47.180 ms
ptxas info    : Function properties for helper_not_an_entry
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'dequant_q2_k_f32' for 'sm_90'
ptxas info    : Function properties for dequant_q2_k_f32
    24 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`qprof kernels build` into a fresh cache, then the ptxas report of everything (JSON through the CLI)."""
    import json

    env = {"QPROF_CACHE": str(tmp_path_factory.mktemp("qprof-cache"))}
    runner = CliRunner()
    build = runner.invoke(main, ["kernels", "build"], env=env)
    report = runner.invoke(main, ["kernels", "report", "--json"], env=env)
    table = runner.invoke(main, ["kernels", "report", "--file", "dequant"], env=env)
    return build, json.loads(report.output) if report.exit_code == 0 else report, table, env


def test_parse_ptxas_verbose():
    rows = parse_ptxas_verbose(PTXAS_SAMPLE, "x.cu")
    assert [r.name for r in rows] == ["matvec_q4_k_b1", "dequant_q2_k_f32"]
    a, b = rows
    assert (a.registers, a.smem_bytes, a.barriers, a.stack_bytes, a.spills, a.arch) == (62, 64, 1, 0, False, "90")
    assert (b.registers, b.smem_bytes, b.stack_bytes, b.spill_stores, b.spill_loads, b.spills) == (255, 0, 24, 12, 16, True)
    text = format_report(rows)
    assert "SPILLS" in text.splitlines()[2] and text.splitlines()[-1].startswith("2 kernels for sm_90, 1 with spills")


@needs_toolkit
def test_build_fills_the_runtime_cache(built):
    build, _, _, env = built
    assert build.exit_code == 0, build.output
    from qprof.runtime.cuda.driver import kernel_sources

    lines = build.output.strip().splitlines()
    assert len(lines) == len(kernel_sources())
    assert all(env["QPROF_CACHE"] in ln and "compiled in" in ln for ln in lines)
    again = CliRunner().invoke(main, ["kernels", "build"], env=env)
    assert again.exit_code == 0 and all(ln.endswith("(cached)") for ln in again.output.strip().splitlines())


@needs_toolkit
def test_no_kernel_spills_and_every_quant_entry_exists(built, capsys):
    _, rows, table, _ = built
    assert isinstance(rows, list), rows.output
    names = {r["name"] for r in rows}
    for qtype in ALL_TYPES:
        for family, variants in (("dequant", ("f32", "f16")), ("get_rows", (None,)),
                                 ("matvec", [f"b{b}" for b in range(1, K.MATVEC_MAX_BATCH + 1)])):
            for v in variants:
                assert K.kernel_name(family, qtype, v) in names
    # every kernel runs per token or per prefill chunk, so every kernel counts as hot
    spilled = [f"{r['name']} ({r['spill_stores']}/{r['spill_loads']} B)" for r in rows
               if r["spill_stores"] or r["spill_loads"]]
    hot = [r for r in rows if r["name"].startswith(("matvec_q4_k", "matvec_q6_k", "dequant_q4_k", "dequant_q6_k"))]
    with capsys.disabled():
        print("\nptxas sm_90 (registers / smem bytes):", ", ".join(
            f"{r['name']} {r['registers']}/{r['smem_bytes']}" for r in hot))
        print(f"{len(rows)} kernels for sm_90, {len(spilled)} with spills, max {max(r['registers'] for r in rows)} registers")
    assert not spilled, "spills to local memory: " + ", ".join(spilled)
    assert table.exit_code == 0 and all(ln.startswith(("dequant_", "get_rows_")) for ln in table.output.splitlines()[1:-1])


def test_kernels_cli_bad_input_is_one_line(tmp_path):
    env = {"QPROF_CACHE": str(tmp_path)}
    res = CliRunner().invoke(main, ["kernels", "report", "--arch", "hopper"], env=env)
    assert res.exit_code == 2 and res.output.strip() == (
        "qprof: error: bad CUDA arch 'hopper'; give the compute capability digits, e.g. 90")
    res = CliRunner().invoke(main, ["kernels", "report", "--file", "nosuch"], env=env)
    assert res.exit_code == 2 and "no kernel source 'nosuch'; have: " in res.output


def test_missing_toolkit_is_one_line(tmp_path, monkeypatch):
    from qprof.runtime.cuda import ptxas

    monkeypatch.setattr(ptxas, "find_tool", lambda name: None)
    res = CliRunner().invoke(main, ["kernels", "build"], env={"QPROF_CACHE": str(tmp_path)})
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "qprof: error: nvcc not found on PATH or in /usr/local/cuda/bin, /usr/local/bin; install the CUDA toolkit"]
