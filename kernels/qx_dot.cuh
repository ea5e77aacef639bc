// The int8-x dot product of the batch-1 decode matvec (kernels/matvec.cu), one run of 16 values.
//
// A run of x is scaled by its own max |x| / 127 (sx) and rounded to int8 (xq); the weights' raw
// codes (Block<T>::runq: one unsigned byte per value) meet xq four at a time in dp4a:
//   sum_k (d q_k + m) x_k  ~=  sx * (d * sum_k q_k xq_k + m * sum_k xq_k),
// both sums exact in int32, so a code offset folded into m (Q8_0's 128, Q6_K's 32) cancels
// exactly and only x's rounding (at most sx / 2 per value) is lost. This header is host-compilable
// (QB_HOST_EMULATION supplies the dp4a and max helpers and float bit casts) so a CPU test checks it.
#pragma once
#include "quant_blocks.cuh"

#define QX_RUN 16

#ifndef QB_HOST_EMULATION
// c + the four products of a's unsigned bytes with b's signed bytes.
static __device__ __forceinline__ int qx_dp4a_us(qb_u32 a, qb_u32 b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// c + the four products of a's signed bytes with b's signed bytes.
static __device__ __forceinline__ int qx_dp4a_ss(qb_u32 a, qb_u32 b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// max(a, b), NaN when either is NaN (fmaxf drops NaNs: a NaN in x would vanish from the sum,
// and a poisoned activation must stay visible downstream, as it does in the float kernel).
static __device__ __forceinline__ float qx_max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#endif

// Four int8 values rounded from v * inv (|v * inv| <= 127): adding 1.5 * 2^23 leaves the rounded
// integer in the low mantissa bits, two's complement in the low byte. One FFMA per value instead
// of a quarter-rate float-to-int conversion.
static __device__ __forceinline__ qb_u32 qx_pack_s8(float4 a, float inv) {
    const qb_u32 b0 = __float_as_uint(fmaf(a.x, inv, 12582912.0f)), b1 = __float_as_uint(fmaf(a.y, inv, 12582912.0f));
    const qb_u32 b2 = __float_as_uint(fmaf(a.z, inv, 12582912.0f)), b3 = __float_as_uint(fmaf(a.w, inv, 12582912.0f));
    return __byte_perm(__byte_perm(b0, b1, 0x0040u), __byte_perm(b2, b3, 0x0040u), 0x5410u);
}

struct QxRun {
    qb_u32 q[QX_RUN / 4];  // int8 x, four to a word
    float sx;              // x[k] ~= sx * q[k]
    float sum;             // sum_k q[k], exact
};

// The 16 x values at x (16-byte aligned), made int8.
static __device__ __forceinline__ QxRun qx_quantize_run(const float* x) {
    const float4* xp = reinterpret_cast<const float4*>(x);
    float4 a[QX_RUN / 4];
    float amax = 0.0f;
#pragma unroll
    for (int v = 0; v < QX_RUN / 4; ++v) {
        a[v] = __ldg(xp + v);
        const float m = qx_max_nan(qx_max_nan(fabsf(a[v].x), fabsf(a[v].y)), qx_max_nan(fabsf(a[v].z), fabsf(a[v].w)));
        amax = qx_max_nan(amax, m);
    }
    QxRun r;
    // An all-zero run rounds to zeros with scale 0 (no 127 / 0); a NaN makes sx and the dot NaN.
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    r.sx = amax * (1.0f / 127.0f);
    int sum = 0;
#pragma unroll
    for (int v = 0; v < QX_RUN / 4; ++v) {
        r.q[v] = qx_pack_s8(a[v], inv);
        sum = qx_dp4a_ss(0x01010101u, r.q[v], sum);
    }
    r.sum = (float)sum;
    return r;
}

// sum_k value_k * x_k over values s .. s + 15 of the block at blk (s % 16 == 0).
template <int T>
static __device__ __forceinline__ float qx_run_dot(const qb_u8* blk, int s, const QxRun& x) {
    qb_u32 q[QX_RUN / 4];
    float d, m;
    Block<T>::template runq<QX_RUN>(blk, s, q, d, m);
    int dot = 0;
#pragma unroll
    for (int v = 0; v < QX_RUN / 4; ++v) dot = qx_dp4a_us(q[v], x.q[v], dot);
    return x.sx * fmaf(d, (float)dot, m * x.sum);
}
