"""`qprof analyze` on real traces: llama.cpp's llama-bench and transformers' generate (H200), and qprof's own fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from qprof.analysis.pipeline import analyze_file
from qprof.analysis.report import render

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = FIXTURES / "llama_bench_h200.sqlite.xz"
HF = FIXTURES / "hf_generate_h200.sqlite.xz"
QPROF = sorted(FIXTURES.glob("nsys_smollm2_*.sqlite")) + sorted(FIXTURES.glob("kineto_smollm2_*.json.gz"))


@pytest.fixture(scope="module")
def llama():
    summary, table = analyze_file(LLAMA)
    return summary, table, render(summary)


@pytest.fixture(scope="module")
def hf():
    summary, table = analyze_file(HF)
    return summary, table, render(summary)


def _findings(summary: dict) -> dict[str, dict]:
    return {f["rule"]: f for f in summary["findings"]}


def test_llama_finds_load_prefill_and_the_32_decode_steps(llama):
    s, table, text = llama
    assert s["card"] == "NVIDIA H200" and s["source"] == "nsys SQLite export, xz-compressed"
    steps = s["steps"]
    assert steps["method"] == "read-backs" and steps["counts"]["decode"] == 32
    assert steps["counts"]["prefill"] == 2 and steps["counts"]["warmup"] == 1 and steps["counts"]["load"] == 1
    assert steps["step_mode"] == "graph" and steps["step_kernels"] == 614
    load = next(f for f in s["phase_facts"] if f["phase"] == "load")
    assert load["htod_bytes"] > 4.29e9 and "pageable" in load["htod_memory"] and load["kernels"] == 0
    dec = table[(table["phase"] == "decode") & (table["kind"] == "kernel")]
    assert dec.groupby("token").size().eq(614).all() and dec["graph_node"].notna().all()
    assert "32 decode steps repeat one set of 614 kernels (launched as one CUDA graph)" in text
    assert "model load (296 host→device copies, 4.3 GB)" in text and "2 prefill passes" in text


def test_llama_says_where_decode_time_goes_by_kernel_family(llama):
    s, _, text = llama
    fam = {c["category"]: c for c in s["phases"]["decode"]["by_family"]}
    assert next(iter(fam)) == "matvec" and fam["matvec"]["share"] > 0.6  # mul_mat_vec_q dominates decode
    assert {"quantize", "rmsnorm", "flash_attention", "rope"} <= set(fam)
    cats = {c["category"] for c in s["phases"]["decode"]["categories"]}
    assert {"matvec Q4_K", "matvec Q6_K"} <= cats  # the weight type, from mul_mat_vec_q's (ggml_type) argument
    assert s["phases"]["decode"]["engines"][0]["engine"] == "llama.cpp"
    assert s["phases"]["decode"]["overlap_ms"] > 0  # llama.cpp's kernels overlap (programmatic dependent launch)
    assert "decode: where" in text and "matvec Q4_K" in text and "kernels overlap" in text


def test_llama_diagnosis_names_copies_syncs_and_the_step_boundary(llama):
    s, _, _ = llama
    f = _findings(s)
    up = f["uploads_per_step"]
    assert up["numbers"]["per_step"] == 6 and "from pinned memory" in up["message"]
    assert f["syncs_per_step"]["numbers"]["per_step"] == 14
    assert f["readbacks_per_step"]["numbers"]["per_step"] == 1 and "128.0 kB" in f["readbacks_per_step"]["message"]
    edge = f["step_boundary_idle"]
    assert edge["numbers"]["boundaries"] == 31 and 0.05 < edge["numbers"]["share_of_step"] < 0.5
    assert edge["message"].split("spent it in: ")[1].startswith("cudaGraphLaunch")  # the launch, not the copies
    for finding in s["findings"]:
        assert any(w in finding["message"] for w in ("per step", "per decode step", "every decode step boundary"))


def test_hf_names_the_reads_back_to_the_host_the_syncs_and_their_cost(hf):
    s, _table, text = hf
    steps = s["steps"]
    assert steps["counts"]["decode"] == 23 and steps["counts"]["prefill"] == 1 and steps["segments_per_step"] == 2
    assert steps["step_mode"] == "eager" and steps["step_kernels"] == 387
    read = _findings(s)["readbacks_per_step"]
    assert read["severity"] == "fault" and read["numbers"]["per_step"] == 2 and read["numbers"]["syncs"] >= 44
    assert "2 device→host reads per decode step (1 B each" in read["message"]
    assert "cudaStreamSynchronize" in read["message"] and "% of the" in read["message"]
    assert 0 < read["numbers"]["cost_ns"] and read["numbers"]["share_of_step"] < 0.05
    bound = _findings(s)["host_bound"]
    assert bound["numbers"]["launch_gap_share"] + bound["numbers"]["idle_gap_share"] > 0.9
    fam = {c["category"] for c in s["phases"]["decode"]["by_family"]}
    assert {"gemm", "torch_elementwise", "torch_copy", "torch_reduce", "flash_attention"} <= fam
    assert "2 device→host reads (1 B)" in text and "decode syncs: 2.0 per token" in text


@pytest.mark.parametrize("path", QPROF, ids=lambda p: p.name)
def test_qprofs_own_fixtures_go_through_analyze(path):
    s, _table = analyze_file(path)
    assert s["steps"]["method"] == "nvtx" and s["steps"]["counts"]["decode"] == 4
    ops = {o["op"] for o in s["phases"]["decode"]["ops"]}
    assert {"attn_q", "ffn_down", "attention"} <= ops
    faults = [f["rule"] for f in s["findings"] if f["severity"] == "fault"]
    assert faults == (["mask_upload"] if "mask_upload" in path.name else [])
    assert "phases and steps from the trace's NVTX ranges" in render(s)


def test_the_readme_example_is_what_the_command_prints(llama):
    s, _, _ = llama
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    marker = "`qprof analyze tests/fixtures/llama_bench_h200.sqlite.xz --top 5`:\n\n```\n"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("\n```", 1)[0]
    assert block == render(s, top=5)
