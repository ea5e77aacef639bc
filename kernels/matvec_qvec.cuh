// The QVec: a decode matvec's activations, quantized per 32 values x ~ dx * xi by the kernel that
// produced them (the previous matvec's epilogue, attention's combine, or quantize_f32), and what its
// consumers need of it (matvec_core.cuh).
//   With one column (decode) xi is 16-bit, a signed high byte plane and an unsigned low byte plane
//   (xi = 256 hi + lo), because 8-bit activations flip greedy tokens of small models against the float
//   reference; with 2..8 columns xi is one signed 8-bit plane. Each 16 values keep their float sum for
//   the blocks' offsets: sum_k (d q_k + m) x_k = d dx sum_k q_k xi_k + m sum_k x_k.
//   A fused RMSNorm: the producer quantizes x * norm_w and keeps sum(x^2) per 32 values; the consumer
//   sums those partials, and 1/rms scales its finished dot products.
// NVRTC-safe like the headers it includes.
#pragma once

#include "common.cuh"
#include "quant_blocks.cuh"

// Planes of the quantized activations: 2 (16-bit) for one column, else 1 (8-bit).
template <int NB>
struct XPlanes {
    static constexpr int N = NB == 1 ? 2 : 1;
    static constexpr int QMAX = NB == 1 ? 32767 : 127;
};

// One column of a QVec: the planes (plane p at p * cols), then float dx per 32 values, float sum
// per 16 and float sum(x^2) per 32 (the norm partials), padded to 16 bytes so that every column's
// planes take 16-byte loads. qprof/runtime/cuda/kernels.py has the host's copy of this formula.
static __host__ __device__ __forceinline__ int qp_xq_column_bytes(int planes, int cols) {
    return (planes * cols + cols / 32 * 4 + cols / 16 * 4 + cols / 32 * 4 + 15) / 16 * 16;
}

struct XColumn {
    const qb_u8* planes;
    const float* dx;  // [cols / 32]
    const float* sx;  // [cols / 16]
    const float* ss;  // [cols / 32]
};

template <int NB>
static __device__ __forceinline__ XColumn qp_x_column(const qb_u8* xq, int cols, int c) {
    const qb_u8* base = xq + (long)c * qp_xq_column_bytes(XPlanes<NB>::N, cols);
    const float* dx = reinterpret_cast<const float*>(base + XPlanes<NB>::N * cols);
    return XColumn{base, dx, dx + cols / 32, dx + cols / 32 + cols / 16};
}

// A NaN anywhere in a block must reach the output: fmaxf would drop it.
static __device__ __forceinline__ float qp_nan_max(float a, float b) {
    return (a > b || a != a) ? a : b;
}

// Warp-wide: lane l holds value l of 32-block `blk` of a column (v: what is quantized, raw: what
// the norm partial sums, x before its norm weight). Writes the block's codes, dx, sums and partial.
template <int NB>
static __device__ __forceinline__ void qp_quantize_block32(float v, float raw, qb_u8* xq, int cols, int c, int blk) {
    constexpr int P = XPlanes<NB>::N;
    constexpr float QMAX = (float)XPlanes<NB>::QMAX;
    const int lane = threadIdx.x & 31;
    qb_u8* base = xq + (long)c * qp_xq_column_bytes(P, cols);
    float* dx = reinterpret_cast<float*>(base + P * cols);
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = qp_nan_max(amax, __shfl_xor_sync(QP_FULL_MASK, amax, o));
    float sum = v;
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(QP_FULL_MASK, sum, o);  // within each half
    const float ss = qp_warp_sum(raw * raw);
    const float inv = amax > 0.0f ? QMAX / amax : 0.0f;
    const int xi = max(-(int)QMAX, min((int)QMAX, __float2int_rn(v * inv)));
    const int at = 32 * blk + lane;
    if (P == 2) {
        base[at] = (qb_u8)((xi >> 8) & 0xFF);
        base[cols + at] = (qb_u8)(xi & 0xFF);
    } else {
        base[at] = (qb_u8)(xi & 0xFF);
    }
    if (lane == 0) {
        dx[blk] = amax / QMAX;
        dx[cols / 32 + cols / 16 + blk] = ss;
    }
    if ((lane & 15) == 0) dx[cols / 32 + 2 * blk + (lane >> 4)] = sum;
}

// 1 / rms of column c from the producer's partials (every lane gets it); 1 without a norm.
template <int NB>
static __device__ __forceinline__ float qp_rms_scale(const qb_u8* xq, int cols, int c, int use_norm, float eps) {
    if (!use_norm) return 1.0f;
    const XColumn xc = qp_x_column<NB>(xq, cols, c);
    float ss = 0.0f;
    for (int i = threadIdx.x & 31; i < cols / 32; i += 32) ss += __ldg(xc.ss + i);
    return rsqrtf(qp_warp_sum(ss) / (float)cols + eps);
}

// Epilogue of a producer of a one-column QVec: the CTA's 32 consecutive outputs (row0 .. row0+31,
// staged in shared memory by the warps) quantized by warp 0, times next_norm when given.
static __device__ __forceinline__ void qp_quantize_staged32(const float* staged, qb_u8* yq, int rows, int row0,
                                                          const float* __restrict__ next_norm) {
    if ((threadIdx.x >> 5) != 0) return;
    const int lane = threadIdx.x & 31;
    const float raw = staged[lane];
    const float v = next_norm != nullptr ? raw * __ldg(next_norm + row0 + lane) : raw;
    qp_quantize_block32<1>(v, raw, yq, rows, 0, row0 / 32);
}
