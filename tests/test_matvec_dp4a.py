"""The batch-1 decode matvec's dp4a dot product (kernels/qx_dot.cuh: x as 16-bit fixed point per run, two
byte planes) compiled for the host with g++ and checked against the float64 product of the CPU reference
dequantization, for every quantized type; plus the QPROF_MATVEC_X switch that selects the float-x kernel.

The GPU kernel matvec_<type>_b1 sums exactly these per-run dots (qx_run_dot over runs of 16 values),
so this checks x's rounding, the byte packing, the signed/unsigned dp4a arithmetic and the exact
cancellation of code offsets (Q8_0's 128, Q6_K's 32) without a GPU; `qprof check --ops matvec` checks
the kernel itself on one."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from test_kernels_ptxas import HOST_HARNESS  # tests/ is on sys.path under pytest (no package)

from qprof.check.quant_cases import random_weight_bytes
from qprof.errors import QprofError
from qprof.quant.dequant import dequantize as cpu_dequantize
from qprof.quant.traits import QUANTIZED_TYPES, traits
from qprof.runtime.cuda import kernels as K

# The CUDA-builtin shim of the block-decoder host test (alignment-checked __ldg, __byte_perm, fp16), plus
# what the dp4a dot adds.
HARNESS = HOST_HARNESS[:HOST_HARNESS.index('#include "quant_blocks.cuh"')] + r"""
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
// PTX dp4a: the unsigned bytes of a times the bytes of b (signed for _us, unsigned for _uu), plus c.
static int qx_dp4a_us(unsigned a, unsigned b, int c) {
    for (int k = 0; k < 4; ++k) c += (int)((a >> 8 * k) & 0xFF) * (int)(signed char)(b >> 8 * k);
    return c;
}
static int qx_dp4a_uu(unsigned a, unsigned b, int c) {
    for (int k = 0; k < 4; ++k) c += (int)((a >> 8 * k) & 0xFF) * (int)((b >> 8 * k) & 0xFF);
    return c;
}
static float qx_max_nan(float a, float b) { return std::isnan(a) || std::isnan(b) ? NAN : fmaxf(a, b); }
#include "qx_dot.cuh"

// The walk of matvec_<type>_b1: run i of a row covers values 16i .. 16i + 15 of block 16i / QK.
template <int T>
static void walk(const qb_u8* raw, int rows, int cols, long row_bytes, const float* x, float* y) {
    if constexpr (!Block<T>::IS_FLOAT) {
        constexpr int QK = Block<T>::QK, BYTES = Block<T>::BYTES;
        for (int r = 0; r < rows; ++r) {
            float acc = 0.0f;
            for (int c0 = 0; c0 < cols; c0 += QX_RUN)
                acc += qx_run_dot<T>(raw + r * row_bytes + (long)(c0 / QK) * BYTES, c0 % QK, qx_quantize_run(x + c0));
            y[r] = acc;
        }
    }
}

static void* slurp(const char* path, long* size) {
    FILE* f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void* p = aligned_alloc(256, (*size + 255) / 256 * 256);
    if (fread(p, 1, *size, f) != (size_t)*size) exit(4);
    fclose(f);
    return p;
}

int main(int argc, char** argv) {
    const int id = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]);
    long size, xsize;
    const qb_u8* raw = static_cast<const qb_u8*>(slurp(argv[4], &size));
    const float* x = static_cast<const float*>(slurp(argv[5], &xsize));
    g_base = raw;
    float* y = static_cast<float*>(calloc(rows, sizeof(float)));
#define QX_WALK(NAME, name, ID, QK, BYTES, DT, MT, MR) \
    if (id == ID) walk<ID>(raw, rows, cols, size / rows, x, y);
    QPROF_QUANT_TYPES(QX_WALK)
    fwrite(y, sizeof(float), rows, stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def dp4a_walk(tmp_path_factory):
    """A directory holding `walk`, the harness built with g++."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the host build of the dp4a matvec dot needs a C++17 compiler")
    d = tmp_path_factory.mktemp("dp4a")
    (d / "walk.cpp").write_text(HARNESS)
    cmd = ["g++", "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-I{K.KERNEL_DIR}", "-o", str(d / "walk"), str(d / "walk.cpp")]
    built = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return d


def host_matvec(d, qtype: str, raw: np.ndarray, x: np.ndarray) -> np.ndarray:
    rows, cols = raw.shape[0], x.shape[0]
    (d / "raw.bin").write_bytes(raw.tobytes())
    (d / "x.bin").write_bytes(x.astype(np.float32).tobytes())
    proc = subprocess.run([str(d / "walk"), str(traits(qtype).ggml_type), str(rows), str(cols), str(d / "raw.bin"),
                           str(d / "x.bin")], check=False, capture_output=True)
    assert proc.returncode == 0, f"{qtype}: {proc.stderr.decode().strip()}"
    return np.frombuffer(proc.stdout, dtype=np.float32)


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sum((got - want) ** 2) / np.sum(want**2))


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_dp4a_dot_matches_the_reference_product(qtype, dp4a_walk):
    # 64 rows: row starts at every alignment the layout allows (e.g. 210-byte Q6_K rows are 2-aligned),
    # and enough dot products that the NMSE is not one row's luck
    rows, cols = 64, 1024 if traits(qtype).block_values == 256 else 160
    raw = random_weight_bytes(qtype, rows, cols, seed=5)
    w = cpu_dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    x = np.random.default_rng(3).standard_normal(cols).astype(np.float32)
    x[16:32] = 0.0  # an all-zero run has scale 0, not 127 / 0
    # Gaussian x costs ~4e-10 (a 16-value run's max is ~2 sigma: steps of sigma / 16000); outliers, as real
    # activations have, coarsen the steps of their own run only (~2e-9). One byte plane alone would cost
    # ~2e-5, an uncancelled code offset > 1e-2.
    for outlier, limit in ((1.0, 2e-9), (30.0, 1e-8)):
        xo = x.copy()
        xo[::37] *= outlier
        got = host_matvec(dp4a_walk, qtype, raw, xo)
        assert np.all(np.isfinite(got))
        err = nmse(got.astype(np.float64), w @ xo.astype(np.float64))
        assert err < limit, f"{qtype} (outliers x{outlier:g}): NMSE {err:.2e}, limit {limit:.0e}"


def test_a_nan_in_x_reaches_every_output(dp4a_walk):
    # the float kernel propagates a poisoned activation; the fixed-point one must not round it away
    qtype, rows, cols = "Q4_K", 3, 512
    raw = random_weight_bytes(qtype, rows, cols, seed=6)
    x = np.random.default_rng(7).standard_normal(cols).astype(np.float32)
    x[300] = np.nan
    assert np.all(np.isnan(host_matvec(dp4a_walk, qtype, raw, x)))
    x[:] = np.nan  # an all-NaN run too (max |x| is not 0 there)
    assert np.all(np.isnan(host_matvec(dp4a_walk, qtype, raw, x)))


def test_dp4a_dot_is_exact_when_x_is_already_fixed_point(dp4a_walk):
    # x = integers in [-32767, 32767] with each run's max |x| = 32767: rounding is exact, only float32 sums differ
    qtype, rows, cols = "Q8_0", 5, 256
    raw = random_weight_bytes(qtype, rows, cols, seed=2)
    w = cpu_dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    rng = np.random.default_rng(4)
    x = rng.integers(-32767, 32768, size=cols).astype(np.float32)
    x[::16] = 32767.0
    want = w @ x.astype(np.float64)
    got = host_matvec(dp4a_walk, qtype, raw, x).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_matvec_variant_follows_the_environment(monkeypatch):
    for value, b1 in ((None, "b1"), ("dp4a", "b1"), ("F32", "b1f32"), ("", "b1")):
        monkeypatch.setattr(K, "_matvec_x", None)
        if value is None:
            monkeypatch.delenv(K.MATVEC_X_ENV, raising=False)
        else:
            monkeypatch.setenv(K.MATVEC_X_ENV, value)
        assert K.matvec_variant(1) == b1 and K.matvec_variant(3) == "b3"
        assert K.parse_kernel_name(K.kernel_name("matvec", "Q4_K", b1)) == ("matvec", "Q4_K", b1)
    monkeypatch.setattr(K, "_matvec_x", None)
    monkeypatch.setenv(K.MATVEC_X_ENV, "fp8")
    with pytest.raises(QprofError) as err:
        K.matvec_variant(1)
    assert str(err.value) == "QPROF_MATVEC_X='fp8': choose from dp4a, f32"
