// The integer dot product of the batch-1 decode matvec (kernels/matvec.cu), one run of 16 values.
//
// A run of x becomes 16-bit fixed point with its own scale: z_k = round(x_k * 32767 / max|x|), so
// x_k ~= sx * z_k with sx = max|x| / 32767, and z_k splits into a signed high byte and an unsigned
// low byte, z_k = 256 h_k + l_k. The weights' raw codes (Block<T>::runq: one unsigned byte per value)
// meet both byte planes four values at a time in dp4a:
//   sum_k (d q_k + m) x_k  ~=  sx * (d * sum_k q_k z_k + m * sum_k z_k),
//   sum_k q_k z_k = 256 * sum_k q_k h_k + sum_k q_k l_k,
// all sums exact in int32, so a code offset folded into m (Q8_0's 128, Q6_K's 32) cancels exactly
// and only x's rounding (at most sx / 2, 1 / 65534 of the run's max |x|) is lost: close to float
// arithmetic. One int8 plane alone (x to 1/254 of the max) is what llama.cpp does, and measurably
// changes greedy tokens against the float reference; two planes do not (checked on SmolLM2 in
// float emulation, every quant variant). This header is host-compilable (QB_HOST_EMULATION
// supplies the dp4a and max helpers and the float bit casts) so a CPU test checks it.
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

// c + the four products of a's unsigned bytes with b's unsigned bytes.
static __device__ __forceinline__ int qx_dp4a_uu(qb_u32 a, qb_u32 b, int c) {
    qb_u32 d;
    asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"((qb_u32)c));
    return (int)d;
}

// max(a, b), NaN when either is NaN (fmaxf drops NaNs: a NaN in x would vanish from the sum,
// and a poisoned activation must stay visible downstream, as it does in the float kernel).
static __device__ __forceinline__ float qx_max_nan(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#endif

// Fixed point of four values, |v * inv| <= 32767: adding 1.5 * 2^23 leaves round(v * inv) in the
// low mantissa bits, two's complement in the low 16 (one FFMA per value instead of a quarter-rate
// float-to-int conversion). Returns the four high bytes (signed) and the four low bytes (unsigned).
static __device__ __forceinline__ void qx_pack_i16(float4 a, float inv, qb_u32& hi, qb_u32& lo) {
    const qb_u32 b0 = __float_as_uint(fmaf(a.x, inv, 12582912.0f)), b1 = __float_as_uint(fmaf(a.y, inv, 12582912.0f));
    const qb_u32 b2 = __float_as_uint(fmaf(a.z, inv, 12582912.0f)), b3 = __float_as_uint(fmaf(a.w, inv, 12582912.0f));
    hi = __byte_perm(__byte_perm(b0, b1, 0x0051u), __byte_perm(b2, b3, 0x0051u), 0x5410u);
    lo = __byte_perm(__byte_perm(b0, b1, 0x0040u), __byte_perm(b2, b3, 0x0040u), 0x5410u);
}

struct QxRun {
    qb_u32 hi[QX_RUN / 4];  // z >> 8 (signed bytes), four to a word
    qb_u32 lo[QX_RUN / 4];  // z & 255 (unsigned bytes)
    float sx;               // x[k] ~= sx * z[k]
    float sum;              // sum_k z[k], exact
};

// The 16 x values at x (16-byte aligned), made fixed point.
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
    // An all-zero run rounds to zeros with scale 0 (no 32767 / 0); a NaN makes sx and the dot NaN.
    const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
    r.sx = amax * (1.0f / 32767.0f);
    int sum_hi = 0, sum_lo = 0;
#pragma unroll
    for (int v = 0; v < QX_RUN / 4; ++v) {
        qx_pack_i16(a[v], inv, r.hi[v], r.lo[v]);
        sum_hi = qx_dp4a_us(0x01010101u, r.hi[v], sum_hi);
        sum_lo = qx_dp4a_uu(0x01010101u, r.lo[v], sum_lo);
    }
    r.sum = (float)(sum_hi * 256 + sum_lo);
    return r;
}

// sum_k value_k * x_k over values s .. s + 15 of the block at blk (s % 16 == 0).
template <int T>
static __device__ __forceinline__ float qx_run_dot(const qb_u8* blk, int s, const QxRun& x) {
    qb_u32 q[QX_RUN / 4];
    float d, m;
    Block<T>::template runq<QX_RUN>(blk, s, q, d, m);
    int dot_hi = 0, dot_lo = 0;
#pragma unroll
    for (int v = 0; v < QX_RUN / 4; ++v) {
        dot_hi = qx_dp4a_us(q[v], x.hi[v], dot_hi);
        dot_lo = qx_dp4a_uu(q[v], x.lo[v], dot_lo);
    }
    // |256 dot_hi + dot_lo| <= 16 * 255 * 32768 < 2^31
    return x.sx * fmaf(d, (float)(dot_hi * 256 + dot_lo), m * x.sum);
}
