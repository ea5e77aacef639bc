"""Every kernels/*.cu compiled with nvcc for sm_90 and assembled by ptxas: no spills, every quantized entry
point present, registers and shared memory printed; plus the ptxas parser and the `qprof kernels` CLI.

The block decoders of kernels/quant_blocks.cuh are also compiled for the host with g++ (a small shim
stands in for the CUDA builtins and aborts on any load narrower-aligned than its width) and run at
exactly the block/offset/run-length combinations the matvec and dequantize kernels use: every value
must match the CPU reference and every vector load must be aligned, without a GPU."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from qprof.check.quant_cases import random_weight_bytes
from qprof.cli import main
from qprof.quant import device_layout
from qprof.quant.dequant import dequantize as cpu_dequantize
from qprof.quant.traits import ALL_TYPES, traits
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
ptxas info    : Compiling entry function 'matvec_q6_k_b3' for 'sm_90'
ptxas info    : Function properties for matvec_q6_k_b3
    88 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 79 registers, used 0 barriers, 88 bytes cumulative stack size, 1024 bytes smem
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
    if report.exit_code == 0:  # a long step: it says what it is doing on stderr first
        assert report.stderr.startswith("qprof kernels: compiling and running ptxas -v on "), report.stderr
    return build, json.loads(report.stdout) if report.exit_code == 0 else report, table, env


def test_parse_ptxas_verbose():
    rows = parse_ptxas_verbose(PTXAS_SAMPLE, "x.cu")
    assert [r.name for r in rows] == ["matvec_q4_k_b1", "dequant_q2_k_f32", "matvec_q6_k_b3"]
    a, b, c = rows
    assert (c.registers, c.smem_bytes, c.stack_bytes, c.spills) == (79, 1024, 88, False)
    assert (a.registers, a.smem_bytes, a.barriers, a.stack_bytes, a.spills, a.arch) == (62, 64, 1, 0, False, "90")
    assert (b.registers, b.smem_bytes, b.stack_bytes, b.spill_stores, b.spill_loads, b.spills) == (255, 0, 24, 12, 16, True)
    text = format_report(rows)
    assert "SPILLS" in text.splitlines()[2] and text.splitlines()[-1].startswith("3 kernels for sm_90, 1 with spills")


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
def test_build_compiles_what_the_runtime_loads_under_kernel_defines(tmp_path, monkeypatch):
    """`qprof kernels build` with QPROF_KERNEL_DEFINES fills the cache entry the runtime's options name, apart from
    the default build's (split10 on the H200 found every module 'cached' under a define: built without it)."""
    from qprof.runtime.cuda.driver import DEFAULT_OPTIONS, KERNEL_DIR, kernel_options, ptx_cache_path
    from qprof.runtime.cuda.ptxas import build_ptx

    monkeypatch.setenv("QPROF_CACHE", str(tmp_path))
    source = KERNEL_DIR / "sample.cu"
    monkeypatch.setenv("QPROF_KERNEL_DEFINES", "-DQP_DECODE_SPLIT_KEYS=32")
    path, compiled = build_ptx(source)
    assert compiled and path == ptx_cache_path(source, "90", kernel_options()) and path.exists()
    assert path != ptx_cache_path(source, "90", DEFAULT_OPTIONS) and not ptx_cache_path(source, "90", DEFAULT_OPTIONS).exists()
    assert build_ptx(source) == (path, False)


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
    # decode attention keeps its per-thread arrays in registers: a stack frame there means an array went to
    # local memory, a round trip on its critical path
    stacked = [r["name"] for r in rows if r["name"].startswith("attn_decode") and r["stack_bytes"]]
    assert not stacked, stacked
    # every decode-attention kernel the host can name exists: head dims the kernels are built for, and the
    # heads-per-KV-head rounding of ops.decode_heads
    from qprof.runtime.cuda.ops import MAX_GQA, decode_heads
    wanted = {f"attn_decode_d{d}_g{decode_heads(n)}{kv}" for d in (32, 64, 96, 128) for n in range(1, MAX_GQA + 1)
              for kv in ("", "_f16kv")}
    assert wanted <= names, sorted(wanted - names)
    # every entry's code size comes from the cubin; decode attention's stays compact: its instructions are
    # fetched again at every launch, and on the H200 a fully unrolled one-launch version (149 KB of SASS)
    # added 13.9 us a layer at position 64, rewritten with loops over the heads (41 KB) 7.8
    # (bench_attention.py, branch issue-9-attn2). The bound counts the shuffles' divergence fallbacks ptxas
    # adds, which never run; the largest entries are the 8-heads ones of D = 96 (51 KB), Mistral-7B's is 35 KB.
    assert all(r["code_bytes"] > 0 for r in rows), [r["name"] for r in rows if not r["code_bytes"]]
    big = [f"{r['name']} {r['code_bytes']} B" for r in rows if r["name"].startswith("attn_decode")
           and r["code_bytes"] > ATTN_DECODE_MAX_CODE]
    assert not big, big
    assert table.exit_code == 0 and all(ln.startswith(("dequant_", "get_rows_")) for ln in table.stdout.splitlines()[1:-1])


ATTN_DECODE_MAX_CODE = 52 * 1024


def test_cubin_text_sizes_reads_sections_and_refuses_junk():
    from qprof.runtime.cuda.ptxas import cubin_text_sizes

    assert cubin_text_sizes(b"") == {} and cubin_text_sizes(b"\x7fELF" + b"\0" * 100) == {}
    assert cubin_text_sizes(_elf_with_sections({".text.k1": 4096, ".nv.info": 12, ".text.k2": 16})) == {
        "k1": 4096, "k2": 16}


def _elf_with_sections(sizes: dict[str, int]) -> bytes:
    """A minimal ELF64 little-endian image: a null section, the named ones (no contents), then .shstrtab."""
    import struct

    names = b"\0" + b"".join(n.encode() + b"\0" for n in sizes) + b".shstrtab\0"
    shoff = 64 + len(names)
    sections = [(0, 0)]
    at = 1
    for n, size in sizes.items():
        sections.append((at, size))
        at += len(n) + 1
    sections.append((at, len(names)))
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, len(sections), len(sections) - 1)
    table = b"".join(struct.pack("<IIQQQQ", name, 0, 0, 0, 64 if i == len(sections) - 1 else 0, size) + b"\0" * 24
                     for i, (name, size) in enumerate(sections))
    return bytes(header) + names + table


PTX_SAMPLE = b"""
.visible .entry waits(
\t.param .u64 waits_param_0
)
{
\tgriddepcontrol.launch_dependents;
\tgriddepcontrol.wait;
\tret;
}
.func helper()
{
\tgriddepcontrol.wait;
}
.visible .entry plain(
\t.param .u64 plain_param_0
)
{
\tret;
}
"""


def test_decode_heads_round_up_to_a_power_of_two_and_refuse_what_no_kernel_has():
    from qprof.errors import QprofError
    from qprof.runtime.cuda.ops import decode_heads

    assert [decode_heads(n) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    for bad in (0, 9):
        with pytest.raises(QprofError, match="query heads per KV head"):
            decode_heads(bad)


def test_ptx_parse_finds_the_kernels_that_wait_upstream():
    from qprof.runtime.cuda.driver import entries_waiting_upstream

    # a wait in a .func after `plain`'s body is not plain's; only entries count
    assert entries_waiting_upstream(PTX_SAMPLE) == {"waits"}
    assert entries_waiting_upstream(b"") == set()


@needs_toolkit
def test_decode_kernels_wait_upstream_and_no_other_kernel_does(built):
    """Only kernels whose PTX holds griddepcontrol.wait are launched as programmatic dependents: every
    kernel of the fused decode step must hold it, and the prefill / unfused ones (no wait) must not."""
    from pathlib import Path

    from qprof.runtime.cuda.driver import entries_waiting_upstream

    *_, env = built
    ptx_files = sorted((Path(env["QPROF_CACHE"]) / "ptx").glob("*-sm90-*.ptx"))
    assert ptx_files, "no sm_90 PTX in the cache"
    waiting = set().union(*(entries_waiting_upstream(f.read_bytes()) for f in ptx_files))
    quantized = [t for t in ALL_TYPES if traits(t).family != "float"]
    decode = {"quantize_q16", "quantize_q8",
              "matvec_qkv", "matvec_qkv_q4_k_v_q6_k"}
    decode |= {f"attn_decode_d{d}_g{g}{kv}" for d in (32, 64, 96, 128) for g in (1, 2, 4, 8) for kv in ("", "_f16kv")}
    decode |= {K.kernel_name("get_rows", t) for t in ALL_TYPES}
    decode |= {K.kernel_name("matvec", t, f"b{b}") for t in ALL_TYPES for b in range(1, K.MATVEC_MAX_BATCH + 1)}
    decode |= {f"matvec_gate_up_{t.lower()}" for t in quantized} | {f"matvec_qkv_{t.lower()}" for t in quantized}
    assert decode <= waiting, sorted(decode - waiting)
    plain = {"rmsnorm_f32", "add_f32", "swiglu_f32", "rope_f32", "kv_write_f32", "argmax_f32", "step_set",
             "rope_table"} | {K.kernel_name("dequant", t, "f16") for t in ALL_TYPES}
    assert not plain & waiting, sorted(plain & waiting)


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


# ------------------------------------------------------------------ host emulation of the decoders

HOST_HARNESS = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define QB_HOST_EMULATION 1
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };
static const unsigned char* g_base;
// The GPU faults on a load whose address is not a multiple of its width: so does this one.
template <class T> static T __ldg(const T* p) {
    if (reinterpret_cast<uintptr_t>(p) % sizeof(T)) {
        fprintf(stderr, "misaligned %zu-byte load at byte offset %ld\n", sizeof(T),
                (long)(reinterpret_cast<const unsigned char*>(p) - g_base));
        exit(3);
    }
    T v; memcpy(&v, p, sizeof v); return v;
}
static unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned char b[8]; memcpy(b, &x, 4); memcpy(b + 4, &y, 4);
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)b[(s >> (4 * i)) & 7] << (8 * i);
    return r;
}
static float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static float qb_half_to_float(unsigned short h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
static unsigned short qb_float_to_half(float f) { _Float16 v = (_Float16)f; unsigned short h; memcpy(&h, &v, 2); return h; }
static unsigned qc_funnel(unsigned lo, unsigned hi, int s) { return s ? (lo >> s) | (hi << (32 - s)) : lo; }
#include "quant_blocks.cuh"
#include "quant_codes.cuh"

template <int T, int N>
static void put_run(const QbAt& at, int s, float* out) {
    float q[N], d, m;
    Block<T>::template run<N>(at, s, q, d, m);
    for (int k = 0; k < N; ++k) out[k] = Block<T>::IS_FLOAT ? q[k] : fmaf(d, q[k], m);
}

// The matvec kernel's walk: run i of a row starts at value c0 = i * RUN of block c0 / QK.
template <int T, int RUN>
static void matvec_walk(const qb_u8* raw, int rows, int cols, float* out) {
    constexpr int QK = Block<T>::QK;
    for (int r = 0; r < rows; ++r)
        for (int i = 0; i < cols / RUN; ++i) {
            const int c0 = i * RUN;
            put_run<T, RUN>(qb_row_at<T>(qb_row<T>(raw, r, cols / QK, rows), c0 / QK), c0 % QK,
                            out + (long)r * cols + c0);
        }
}

// The dequantize kernel's walk: thread t of TPB decodes values [t*VPT, (t+1)*VPT) of each block.
template <int T, int TPB>
static void dequant_walk(const qb_u8* raw, long n_blocks, float* out) {
    constexpr int QK = Block<T>::QK, VPT = QK / TPB, N = VPT > 8 ? 8 : VPT;
    for (long b = 0; b < n_blocks; ++b)
        for (int t = 0; t < TPB; ++t)
            for (int s = t * VPT; s < (t + 1) * VPT; s += N)
                put_run<T, N>(qb_at<T>(raw, b, n_blocks), s, out + b * QK + s);
}

// The dp4a matvec's walk: every lane task of every block, each run's codes as d * code + m. A value
// written twice, or never, is an error (exit 6).
template <int T>
static void codes_walk(const qb_u8* raw, int rows, int cols, float* out) {
    if constexpr (!Block<T>::IS_FLOAT) {
        using C = Codes<T>;
        constexpr int QK = Block<T>::QK;
        for (long i = 0; i < (long)rows * cols; ++i) out[i] = NAN;
        for (int r = 0; r < rows; ++r)
            for (int b = 0; b < cols / QK; ++b)
                for (int t = 0; t < C::TASKS; ++t) {
                    typename C::Raw x;
                    C::load(qb_row_at<T>(qb_row<T>(raw, r, cols / QK, rows), b), t, x);
                    for (int run = 0; run < C::RUNS; ++run) {
                        qb_u32 c[4];
                        float d, m;
                        int v;
                        C::decode(x, t, run, c, d, m, v);
                        for (int k = 0; k < 16; ++k) {
                            float* o = out + (long)r * cols + (long)b * QK + v + k;
                            if (!std::isnan(*o)) exit(6);
                            *o = fmaf(d, (float)((c[k / 4] >> (8 * (k % 4))) & 0xFFu), m);
                        }
                    }
                }
        for (long i = 0; i < (long)rows * cols; ++i)
            if (std::isnan(out[i])) exit(6);
    }
}

// The matvec's shared-memory stage of the type: blocks a row and bytes (quant_codes.cuh Stage<T>).
template <int T>
static void stage_print() {
    if constexpr (!Block<T>::IS_FLOAT) printf("%d %d\n", qc_streams<T>() ? Stage<T>::BLOCKS : 0, Stage<T>::BYTES);
}

int main(int argc, char** argv) {
    const int id = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]);
    const char* mode = argv[4];
    FILE* f = fopen(argv[5], "rb");
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    qb_u8* raw = static_cast<qb_u8*>(aligned_alloc(256, (size + 255) / 256 * 256));
    if (fread(raw, 1, size, f) != (size_t)size) return 4;
    fclose(f);
    g_base = raw;
    float* out = static_cast<float*>(calloc((size_t)rows * cols, sizeof(float)));
    bool known = false;
#define QB_WALK(NAME, name, ID, QK, BYTES, DT, MT, MR, SB)                                   \
    if (id == ID) {                                                                     \
        known = true;                                                                   \
        if (!strcmp(mode, "matvec16")) matvec_walk<ID, 16>(raw, rows, cols, out);          \
        if (!strcmp(mode, "matvec8")) matvec_walk<ID, 8>(raw, rows, cols, out);            \
        if (!strcmp(mode, "dequant")) dequant_walk<ID, DT>(raw, size / BYTES, out);        \
        if (!strcmp(mode, "codes")) codes_walk<ID>(raw, rows, cols, out);                  \
        if (!strcmp(mode, "stage")) return stage_print<ID>(), 0;                              \
    }
    QPROF_QUANT_TYPES(QB_WALK)
    if (!known) return 5;
    fwrite(out, sizeof(float), (size_t)rows * cols, stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def host_decoder(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the host emulation of the block decoders needs a C++17 compiler")
    d = tmp_path_factory.mktemp("host-decode")
    (d / "harness.cpp").write_text(HOST_HARNESS)
    proc = subprocess.run([gxx, "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-I{K.KERNEL_DIR}", "-o",
                           str(d / "decode"), str(d / "harness.cpp")], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def host_decode(host_decoder, qtype: str, rows: int, cols: int, mode: str, device_bytes: np.ndarray):
    """The host-compiled decoders' values of device-layout bytes, and the harness's exit status and stderr."""
    (host_decoder / "raw.bin").write_bytes(device_bytes.tobytes())
    proc = subprocess.run([str(host_decoder / "decode"), str(traits(qtype).ggml_type), str(rows), str(cols), mode,
                           str(host_decoder / "raw.bin")], check=False, capture_output=True)
    got = np.frombuffer(proc.stdout, dtype=np.float32).reshape(rows, cols) if proc.returncode == 0 else None
    return got, proc.returncode, proc.stderr.decode().strip()


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_host_compiled_decoders_match_the_reference_with_aligned_loads(qtype, host_decoder):
    """The kernels' decoders, on a tensor's device layout (qprof.quant.device_layout: Q6_K repacked), give the
    CPU reference's values of its GGUF bytes: the repack's check against the GGUF bytes, and every load's."""
    # 7 rows: row starts at every alignment GGUF's layout allows (e.g. 210-byte Q6_K rows are 2-aligned)
    rows, cols = 7, 768 if traits(qtype).block_values == 256 else 96
    raw = random_weight_bytes(qtype, rows, cols, seed=11)
    ref = cpu_dequantize(raw, qtype, (rows, cols))
    modes = ("matvec16", "matvec8", "dequant") + (("codes",) if traits(qtype).family != "float" else ())
    for mode in modes:
        got, rc, err = host_decode(host_decoder, qtype, rows, cols, mode, device_layout.to_device(qtype, raw))
        assert rc == 0, f"{qtype} {mode}: {err}"
        # the kernels fuse d*q + m into one rounding; the reference rounds twice
        np.testing.assert_allclose(got, ref, rtol=2e-7, atol=1e-9, err_msg=f"{qtype} {mode}")


@pytest.mark.parametrize("qtype", sorted(device_layout.HEADS))
def test_split_types_decoders_read_the_repacked_layout_not_ggufs(qtype, host_decoder):
    """Fed GGUF's bytes unrepacked, a split type's decoders read other values: the device layout is the one in use."""
    rows, cols = 7, 768
    raw = random_weight_bytes(qtype, rows, cols, seed=11)
    ref = cpu_dequantize(raw, qtype, (rows, cols))
    got, rc, _ = host_decode(host_decoder, qtype, rows, cols, "codes", raw)
    assert rc != 0 or not np.allclose(got, ref, rtol=1e-3), f"{qtype} decoded GGUF's layout as if it were the device's"


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_the_device_layout_is_a_permutation_of_the_gguf_bytes(qtype):
    raw = random_weight_bytes(qtype, 5, 512, seed=3)
    dev = device_layout.to_device(qtype, raw)
    assert dev.shape == raw.shape and dev.dtype == raw.dtype
    np.testing.assert_array_equal(device_layout.from_device(qtype, dev), raw)
    if device_layout.repacked(qtype):  # every block's body first, then every block's head
        at, size = device_layout.HEADS[qtype]
        blocks, flat = raw.reshape(-1, traits(qtype).block_bytes), dev.reshape(-1)
        n, body = blocks.shape[0], traits(qtype).block_bytes - size
        assert body % 16 == 0 and not np.array_equal(dev, raw)
        np.testing.assert_array_equal(flat[:n * body].reshape(n, body), np.delete(blocks, np.s_[at:at + size], axis=1))
        np.testing.assert_array_equal(flat[n * body:].reshape(n, size), blocks[:, at:at + size])
        import torch

        t = device_layout.to_device(qtype, torch.from_numpy(raw))  # torch tensors alike (the upload's path)
        np.testing.assert_array_equal(t.numpy(), dev)
    else:
        assert dev is raw


def test_the_device_layout_refuses_a_partial_block():
    qtype = min(device_layout.HEADS)
    size = traits(qtype).block_bytes
    with pytest.raises(ValueError, match=f"{qtype} bytes must be whole {size}-byte blocks"):
        device_layout.to_device(qtype, np.zeros(size + 1, np.uint8))


def test_the_kernels_split_the_types_the_device_layout_splits():
    """kernels/quant_layout.cuh DeviceSplit mirrors device_layout.HEADS: a type split on one side only would be
    decoded from the wrong bytes."""
    import re

    text = (K.KERNEL_DIR / "quant_layout.cuh").read_text()
    rows = re.findall(r"^QB_DEVICE_SPLIT\(QB_(\w+), (\d+), (\d+)\)", text, re.MULTILINE)
    split = {name: (int(at), int(size)) for name, at, size in rows}
    assert split == device_layout.HEADS


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if traits(t).family != "float"])
def test_matvec_stage_mirror_matches_the_kernels(qtype, host_decoder):
    """kernels.py sizes the matvec's shared memory from the traits' stage blocks: the kernels' Stage<T>."""
    t = traits(qtype)
    (host_decoder / "raw.bin").write_bytes(bytes(t.block_bytes))
    proc = subprocess.run([str(host_decoder / "decode"), str(t.ggml_type), "1", str(t.block_values), "stage",
                           str(host_decoder / "raw.bin")], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    blocks, stage_bytes = map(int, proc.stdout.split())
    assert blocks == t.matvec_stage_blocks
    shared = K.matvec_shared_bytes((t,), t.matvec_threads)
    if not blocks:  # the register path: no ring
        assert shared == 0
        return
    assert stage_bytes == K.matvec_stage_bytes(t)
    assert shared % (t.matvec_threads // 32 * stage_bytes) == 0  # whole stages for every warp
    assert shared // (t.matvec_threads // 32) % 128 == 0  # the kernel rounds each warp's share down to 128
    assert t.matvec_threads // 32 * stage_bytes <= shared <= K.MATVEC_SHARED_BUDGET



def test_kernel_defines_extend_the_build_options_and_bad_words_are_one_line(monkeypatch):
    from qprof.errors import QprofError
    from qprof.runtime.cuda.driver import DEFAULT_OPTIONS, kernel_options

    monkeypatch.delenv("QPROF_KERNEL_DEFINES", raising=False)
    assert kernel_options() == DEFAULT_OPTIONS
    monkeypatch.setenv("QPROF_KERNEL_DEFINES", "-DQP_MV_WARM_BYTES=0  -DQP_X")
    assert kernel_options() == (*DEFAULT_OPTIONS, "-DQP_MV_WARM_BYTES=0", "-DQP_X")
    monkeypatch.setenv("QPROF_KERNEL_DEFINES", "-DQP_X -O0")
    with pytest.raises(QprofError, match="QPROF_KERNEL_DEFINES: '-O0' is not a -DNAME"):
        kernel_options()
