// The decode matvec's machinery, shared by the single-matrix kernels (matvec.cu) and the fused
// QKV / gate+up kernels (matvec_fused.cu).
//
// 1. Activations arrive quantized, per 32 values x ~ dx * xi, in a QVec in global memory (read
//    through L1: every warp of an SM reads the same vector). With one column (decode) xi is 16-bit,
//    a signed high byte plane and an unsigned low byte plane (xi = 256 hi + lo), because 8-bit
//    activations flip greedy tokens of small models against the float reference; with 2..8
//    columns xi is one signed 8-bit plane. Each 16 values keep their float sum for the blocks'
//    offsets: sum_k (d q_k + m) x_k = d dx sum_k q_k xi_k + m sum_k x_k. The producer of a vector
//    quantizes it in its epilogue (the previous matvec, attention's combine, or quantize_f32).
//    A fused RMSNorm: the producer quantizes x * norm_w and keeps sum(x^2) per 32 values; the
//    consumer sums those partials, and 1/rms scales its finished dot products.
// 2. Weights. A warp computes two rows at once (a pair: two rows of one matrix, or gate and up),
//    lane by lane over the blocks' lane tasks of quant_codes.cuh, UNROLL tasks' loads in flight
//    before any is used. Each 16-value run is an exact int32 dot of codes against xi: __dp4a.
// 3. The pair's sums meet through warp shuffles; lane 0 runs the caller's epilogue.
// NVRTC-safe like the headers it includes.
#pragma once

#include "common.cuh"
#include "quant_codes.cuh"

// Tunables (bench_matvec --variant compiles others): a second register stage of weights in flight,
// and resident CTAs per SM asked of the register allocator at one column (2: at most 64 registers).
#ifndef QP_MV_DOUBLE_BUFFER
#define QP_MV_DOUBLE_BUFFER 0
#endif
// Stages of weights asked of L2 ahead of their loads. On the H200 0, 2 and 4 measured within noise
// of each other (bench_matvec --variant, 2026-12-01); 2 is kept, the setting the fused kernels
// compile without spills at.
#ifndef QP_MV_PREFETCH_STAGES
#define QP_MV_PREFETCH_STAGES 2
#endif
#ifndef QP_MV_MIN_CTAS_B1
#define QP_MV_MIN_CTAS_B1 2
#endif
// The types whose codes need more registers (Q3_K, Q5_K) and the mixed-type QKV stay at one CTA:
// at 64 registers they would spill.
#define QP_MV_MIN_CTAS(ID) (((ID) == QB_Q3_K || (ID) == QB_Q5_K) ? 1 : QP_MV_MIN_CTAS_B1)
#define QP_MV_WARPS 16   // warps per CTA: QuantTraits.matvec_threads / 32
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

// Lane tasks per pipeline stage (Codes<T>::UNROLL): two stages of raw block bytes for the two rows
// stay within about 64 registers, tuned so that the hot kernels do not spill (ptxas report).
// Ask L2 for the bytes of the stage of S tasks from `base` of both rows (lanes 0..15: row a, 16..31:
// row b, one 128-byte line each), so that its loads, issued stages later, wait on L2 rather than
// on DRAM while the registers hold only the stage at hand.
template <int T>
static __device__ __forceinline__ void qp_stage_prefetch(const qb_u8* ra, const qb_u8* rb, int base, int S,
                                                         int n_tasks) {
#ifndef QB_HOST_EMULATION
    if (base >= n_tasks) return;
    using C = Codes<T>;
    const long lo = (long)(base / C::TASKS) * Block<T>::BYTES;
    const long hi = (long)((min(base + S, n_tasks) - 1) / C::TASKS + 1) * Block<T>::BYTES;
    const int lane = threadIdx.x & 31;
    const long at = (lo & ~127L) + 128L * (lane & 15);
    if (at < hi) asm volatile("prefetch.global.L2 [%0];" ::"l"((lane < 16 ? ra : rb) + at));
#endif
}

// One pipeline stage of a warp: U lane tasks per lane, 32 U tasks from `base`. Tasks past the end
// load a valid task (the last) and are weighted 0 by the compute.
template <int T, int U>
static __device__ __forceinline__ void qp_stage_load(const qb_u8* __restrict__ ra, const qb_u8* __restrict__ rb,
                                                     int base, int n_tasks, typename Codes<T>::Raw (&raw)[U][2],
                                                     int (&task)[U]) {
    using C = Codes<T>;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        task[u] = min(base + 32 * u + lane, n_tasks - 1);
        const long off = (long)(task[u] / C::TASKS) * Block<T>::BYTES;
        C::load(ra + off, task[u] % C::TASKS, raw[u][0]);
        C::load(rb + off, task[u] % C::TASKS, raw[u][1]);
    }
}

template <int T, int NB, int U>
static __device__ __forceinline__ void qp_stage_compute(const typename Codes<T>::Raw (&raw)[U][2], const int (&task)[U],
                                                        int base, int n_tasks, const qb_u8* xs, int cols,
                                                        float (&acc)[2][NB]) {
    using C = Codes<T>;
    constexpr int P = XPlanes<NB>::N;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const bool live = base + 32 * u + lane < n_tasks;
        const int t = task[u] % C::TASKS, v0 = task[u] / C::TASKS * Block<T>::QK;
#pragma unroll(NB > 2 ? 1 : C::RUNS)  // many columns: one run's codes live at a time
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
                const uint4 h = __ldg(reinterpret_cast<const uint4*>(xc.planes + vi));
                const float dx = __ldg(xc.dx + (vi >> 5)), sx = __ldg(xc.sx + (vi >> 4));
                const qb_u32 hw[4] = {h.x, h.y, h.z, h.w};
                qb_u32 lw[4] = {0, 0, 0, 0};
                if constexpr (P == 2) {
                    const uint4 l = __ldg(reinterpret_cast<const uint4*>(xc.planes + cols + vi));
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

// acc[r][c] += row r (ra or rb) . x column c of the QVec xq over all cols, this lane's share; not yet
// warp-reduced. Two register buffers of raw block bytes: the next stage's loads are in flight while
// this stage computes (every branch is warp-uniform).
template <int T, int NB>
static __device__ __forceinline__ void qp_rows_dot2(const qb_u8* __restrict__ ra, const qb_u8* __restrict__ rb,
                                                    int cols, const qb_u8* xs, float (&acc)[2][NB]) {
    using C = Codes<T>;
    // more columns hold more x and sums in registers: fewer tasks in flight
#ifdef QP_MV_UNROLL
    constexpr int U = NB <= 2 ? QP_MV_UNROLL : 1;  // an experiment's override (bench_matvec --variant)
#else
    constexpr int U = NB <= 2 ? C::UNROLL : 1;
#endif
    constexpr int S = 32 * U;
    const int n_tasks = cols / Block<T>::QK * C::TASKS;
#if QP_MV_DOUBLE_BUFFER
    typename C::Raw a[U][2], b[U][2];
    int ta[U], tb[U];
    qp_stage_load<T, U>(ra, rb, 0, n_tasks, a, ta);
    for (int base = 0; base < n_tasks; base += 2 * S) {
        const bool has_b = base + S < n_tasks;
        if (has_b) qp_stage_load<T, U>(ra, rb, base + S, n_tasks, b, tb);
        qp_stage_compute<T, NB, U>(a, ta, base, n_tasks, xs, cols, acc);
        if (has_b) {
            if (base + 2 * S < n_tasks) qp_stage_load<T, U>(ra, rb, base + 2 * S, n_tasks, a, ta);
            qp_stage_compute<T, NB, U>(b, tb, base + S, n_tasks, xs, cols, acc);
        }
    }
#else
#pragma unroll 1
    for (int d = 0; d < QP_MV_PREFETCH_STAGES; ++d) qp_stage_prefetch<T>(ra, rb, d * S, S, n_tasks);
    for (int base = 0; base < n_tasks; base += S) {
        typename C::Raw a[U][2];
        int ta[U];
        qp_stage_prefetch<T>(ra, rb, base + QP_MV_PREFETCH_STAGES * S, S, n_tasks);
        qp_stage_load<T, U>(ra, rb, base, n_tasks, a, ta);
        qp_stage_compute<T, NB, U>(a, ta, base, n_tasks, xs, cols, acc);
    }
#endif
}

template <int NB>
static __device__ __forceinline__ void qp_warp_reduce2(float (&acc)[2][NB]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) acc[r][c] = qp_warp_sum(acc[r][c]);
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
