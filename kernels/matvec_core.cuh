// The decode matvec's machinery, shared by the single-matrix kernels (matvec.cu) and the fused
// QKV / gate+up kernels (matvec_fused.cu).
//
// 1. Activations. A CTA reads its float input x [NB, cols] once, optionally multiplied by an
//    RMSNorm weight (the norm is fused: the row's 1/rms is a scalar applied to the finished dot
//    product), and quantizes it into shared memory per 32 values: x ~ dx * xi. With one column
//    (decode) xi is 16-bit, held as a signed high byte plane and an unsigned low byte plane
//    (xi = 256 hi + lo), because 8-bit activations flip greedy tokens of small models against the
//    float reference; with 2..8 columns xi is one signed 8-bit plane, so that 8 columns of a
//    14336-wide row still fit in shared memory. Each 16 values also keep their float sum, for the
//    blocks' offsets: sum_k (d q_k + m) x_k = d dx sum_k q_k xi_k + m sum_k x_k.
// 2. Weights. A warp computes two rows at once (a pair: two rows of one matrix, or gate and up),
//    lane by lane over the blocks' lane tasks of quant_codes.cuh, UNROLL tasks' loads in flight
//    before any is used. Each 16-value run is an exact int32 dot of codes against xi: __dp4a.
// 3. The pair's sums meet through warp shuffles; lane 0 runs the caller's epilogue.
// NVRTC-safe like the headers it includes.
#pragma once

#include "common.cuh"
#include "quant_codes.cuh"

#define QP_MV_WARPS 8    // warps per CTA: QuantTraits.matvec_threads / 32
#define QP_MV_PAIRS_PER_WARP 1
#define QP_MV_ROWS_PER_CTA (2 * QP_MV_WARPS * QP_MV_PAIRS_PER_WARP)  // QuantTraits.matvec_rows_per_cta

#ifndef QB_HOST_EMULATION
static __device__ __forceinline__ int qp_dp4a_us(qb_u32 a, qb_u32 b, int c) {  // unsigned a . signed b
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

static __device__ __forceinline__ int qp_dp4a_uu(qb_u32 a, qb_u32 b, int c) {  // unsigned a . unsigned b
    int d;
    asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#endif

// Planes of the quantized activations: 2 (16-bit) for one column, else 1 (8-bit).
template <int NB>
struct XPlanes {
    static constexpr int N = NB == 1 ? 2 : 1;
    static constexpr int QMAX = NB == 1 ? 32767 : 127;
};

// Bytes of shared memory one column of cols quantized activations takes: the planes, then one
// float scale per 32 values and one float sum per 16, padded to 16 bytes so that every column's
// planes take 16-byte loads. qprof/runtime/cuda/kernels.py has the host's copy of this formula.
static __host__ __device__ __forceinline__ int qp_xq_column_bytes(int planes, int cols) {
    return (planes * cols + cols / 32 * 4 + cols / 16 * 4 + 15) / 16 * 16;
}

// A NaN anywhere in a block must reach the output: fmaxf would drop it.
static __device__ __forceinline__ float qp_nan_max(float a, float b) {
    return (a > b || a != a) ? a : b;
}

struct XColumn {
    const qb_u8* planes;  // plane p at planes + p * cols
    const float* dx;      // [cols / 32]
    const float* sx;      // [cols / 16]
};

template <int NB>
static __device__ __forceinline__ XColumn qp_x_column(const qb_u8* smem, int cols, int c) {
    const qb_u8* base = smem + (long)c * qp_xq_column_bytes(XPlanes<NB>::N, cols);
    const float* dx = reinterpret_cast<const float*>(base + XPlanes<NB>::N * cols);
    return XColumn{base, dx, dx + cols / 32};
}

// Quantize x [NB, cols] (times norm_w when given) into shared memory; rms[c] = 1 / rms(x[c]) when
// norm_w is given, else 1. Every thread of the CTA takes part; the caller syncs after.
// Thread i of a pass owns 16 values; threads 2j and 2j+1 (neighbour lanes) share one 32-block.
template <int NB>
static __device__ void qp_quantize_x(const float* __restrict__ x, const float* __restrict__ norm_w, float eps,
                                     int cols, qb_u8* smem, float* rms, float* scratch) {
    constexpr int P = XPlanes<NB>::N;
    constexpr float QMAX = (float)XPlanes<NB>::QMAX;
    const int n_runs = cols / 16;
    for (int c = 0; c < NB; ++c) {
        const float* xc = x + (long)c * cols;
        qb_u8* base = smem + (long)c * qp_xq_column_bytes(P, cols);
        float* dxs = reinterpret_cast<float*>(base + P * cols);
        float* sxs = dxs + cols / 32;
        float ss = 0.0f;
        for (int r0 = 0; r0 < n_runs; r0 += blockDim.x) {  // uniform trip count: the shuffles need whole warps
            const int i = r0 + threadIdx.x;
            const bool live = i < n_runs;
            float v[16];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                float4 a = live ? __ldg(reinterpret_cast<const float4*>(xc) + 4 * i + q) : make_float4(0, 0, 0, 0);
                ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
                if (norm_w != nullptr && live) {
                    const float4 w = __ldg(reinterpret_cast<const float4*>(norm_w) + 4 * i + q);
                    a.x *= w.x, a.y *= w.y, a.z *= w.z, a.w *= w.w;
                }
                v[4 * q] = a.x, v[4 * q + 1] = a.y, v[4 * q + 2] = a.z, v[4 * q + 3] = a.w;
            }
            float amax = 0.0f, sum = 0.0f;
#pragma unroll
            for (int k = 0; k < 16; ++k) amax = qp_nan_max(amax, fabsf(v[k])), sum += v[k];
            amax = qp_nan_max(amax, __shfl_xor_sync(QP_FULL_MASK, amax, 1));
            const float inv = amax > 0.0f ? QMAX / amax : 0.0f;
            if (!live) continue;
            qb_u32 hi[4] = {0, 0, 0, 0}, lo[4] = {0, 0, 0, 0};
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const int xi = max(-(int)QMAX, min((int)QMAX, __float2int_rn(v[k] * inv)));
                if (P == 2) {
                    hi[k / 4] |= (qb_u32)((xi >> 8) & 0xFF) << (8 * (k % 4));
                    lo[k / 4] |= (qb_u32)(xi & 0xFF) << (8 * (k % 4));
                } else {
                    hi[k / 4] |= (qb_u32)(xi & 0xFF) << (8 * (k % 4));
                }
            }
            reinterpret_cast<uint4*>(base)[i] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            if (P == 2) reinterpret_cast<uint4*>(base + cols)[i] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
            if ((i & 1) == 0) dxs[i / 2] = amax / QMAX;
            sxs[i] = sum;
        }
        if (norm_w != nullptr) {
            ss = qp_block_sum(ss, scratch);
            if (threadIdx.x == 0) rms[c] = rsqrtf(ss / (float)cols + eps);
        } else if (threadIdx.x == 0) {
            rms[c] = 1.0f;
        }
    }
}

// Pull a warp's rows towards L2 while the CTA quantizes its activations (one prefetch per 128-byte line).
static __device__ __forceinline__ void qp_prefetch_row(const qb_u8* row, int row_bytes) {
#ifndef QB_HOST_EMULATION
    for (int off = (threadIdx.x & 31) * 128; off < row_bytes; off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
#endif
}

// Lane tasks whose loads are in flight at once (Codes<T>::UNROLL): about 64 registers of raw block
// bytes for the two rows, tuned so that the hot kernels do not spill (ptxas report).
// acc[r][c] += row r (ra or rb) . x column c over all cols, this lane's share; not yet warp-reduced.
template <int T, int NB>
static __device__ __forceinline__ void qp_rows_dot2(const qb_u8* __restrict__ ra, const qb_u8* __restrict__ rb,
                                                    int cols, const qb_u8* xs, float (&acc)[2][NB]) {
    using C = Codes<T>;
    constexpr int QK = Block<T>::QK, BYTES = Block<T>::BYTES, TASKS = C::TASKS, U = C::UNROLL;
    constexpr int P = XPlanes<NB>::N;
    const int lane = threadIdx.x & 31;
    const int n_tasks = cols / QK * TASKS;
    for (int base = 0; base < n_tasks; base += 32 * U) {
        typename C::Raw raw[U][2];
        int task[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            task[u] = min(base + 32 * u + lane, n_tasks - 1);  // past the end: a valid task, weighted 0 below
            const long off = (long)(task[u] / TASKS) * BYTES;
            C::load(ra + off, task[u] % TASKS, raw[u][0]);
            C::load(rb + off, task[u] % TASKS, raw[u][1]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const bool live = base + 32 * u + lane < n_tasks;
            const int t = task[u] % TASKS, v0 = task[u] / TASKS * QK;
#pragma unroll
            for (int run = 0; run < C::RUNS; ++run) {
                qb_u32 code[2][4];
                float d[2], m[2];
                int v = 0;
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    C::decode(raw[u][r], t, run, code[r], d[r], m[r], v);
                    if (!live) d[r] = 0.0f, m[r] = 0.0f;
                }
                const int vi = v0 + v;
#pragma unroll
                for (int c = 0; c < NB; ++c) {
                    const XColumn xc = qp_x_column<NB>(xs, cols, c);
                    const uint4 h = *reinterpret_cast<const uint4*>(xc.planes + vi);
                    const float dx = xc.dx[vi >> 5], sx = xc.sx[vi >> 4];
                    const qb_u32 hw[4] = {h.x, h.y, h.z, h.w};
                    qb_u32 lw[4] = {0, 0, 0, 0};
                    if constexpr (P == 2) {
                        const uint4 l = *reinterpret_cast<const uint4*>(xc.planes + cols + vi);
                        lw[0] = l.x, lw[1] = l.y, lw[2] = l.z, lw[3] = l.w;
                    }
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        int ih = 0, il = 0;
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            ih = qp_dp4a_us(code[r][i], hw[i], ih);
                            if constexpr (P == 2) il = qp_dp4a_uu(code[r][i], lw[i], il);
                        }
                        const int dot = P == 2 ? ih * 256 + il : ih;
                        acc[r][c] = fmaf(d[r] * dx, (float)dot, fmaf(m[r], sx, acc[r][c]));
                    }
                }
            }
        }
    }
}

template <int NB>
static __device__ __forceinline__ void qp_warp_reduce2(float (&acc)[2][NB]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) acc[r][c] = qp_warp_sum(acc[r][c]);
}

// The CTA's dynamic shared memory (one declaration, so that every kernel of a module shares its name).
static __device__ __forceinline__ qb_u8* qp_xq_smem() {
    extern __shared__ __align__(16) qb_u8 qp_xq_dynamic[];
    return qp_xq_dynamic;
}

// Shared memory of a CTA beyond the dynamic activations: per-column 1/rms and the block-sum scratch.
struct MvShared {
    float rms[8];
    float scratch[QP_WARP];
};
