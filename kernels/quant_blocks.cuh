// GGUF block decoding on the GPU: the one place that knows each quant type's byte layout.
//
// Every type exposes the same primitive, Block<T>::run<N>(block, s, q, d, m): decode the N
// contiguous values s .. s+N-1 of one block (s % N == 0; N = 1 for float types, else 4, 8 or 16)
// as value[k] = d * q[k] + m, with q[k] a small non-negative integer held exactly in a float.
// The dequantize, get_rows and matvec kernels are all written against this primitive, so a
// layout lives in exactly one function. Runs of up to 16 never straddle a scale: every quantized
// type has sub-blocks of >= 16 values sharing one (d, m).
//
// NVRTC-safe: no host headers. Fixed-width types are our own typedefs and fp16 conversions go
// through PTX cvt instructions (NVRTC has no built-in cuda_fp16.h).
#pragma once

typedef unsigned char qb_u8;
typedef signed char qb_i8;
typedef unsigned short qb_u16;
typedef unsigned int qb_u32;
typedef unsigned long long qb_u64;

// The compile-time mirror of qprof/quant/traits.py. tests/test_kernels_ptxas.py parses this
// table and fails if it disagrees with the Python traits table, which is where launch configs
// come from: a kernel whose assumption differs from its launch silently writes garbage.
// X(NAME, lowercase name, ggml type id, block values, block bytes, dequant threads,
//   matvec threads, matvec rows per CTA, matvec stage blocks)
#define QPROF_QUANT_TYPES(X)                    \
    X(F32, f32, 0, 1, 4, 1, 128, 4, 0)          \
    X(F16, f16, 1, 1, 2, 1, 128, 4, 0)          \
    X(BF16, bf16, 30, 1, 2, 1, 128, 4, 0)       \
    X(Q4_0, q4_0, 2, 32, 18, 8, 512, 32, 0)     \
    X(Q4_1, q4_1, 3, 32, 20, 8, 512, 32, 0)     \
    X(Q5_0, q5_0, 6, 32, 22, 8, 512, 32, 0)     \
    X(Q5_1, q5_1, 7, 32, 24, 8, 512, 32, 0)     \
    X(Q8_0, q8_0, 8, 32, 34, 8, 512, 32, 0)     \
    X(Q2_K, q2_k, 10, 256, 84, 64, 512, 32, 0)  \
    X(Q3_K, q3_k, 11, 256, 110, 64, 512, 32, 8) \
    X(Q4_K, q4_k, 12, 256, 144, 32, 512, 32, 0) \
    X(Q5_K, q5_k, 13, 256, 176, 64, 512, 32, 0) \
    X(Q6_K, q6_k, 14, 256, 210, 64, 512, 32, 0)

// Template ids are the GGML type ids.
enum QbType : int {
    QB_F32 = 0, QB_F16 = 1, QB_Q4_0 = 2, QB_Q4_1 = 3, QB_Q5_0 = 6, QB_Q5_1 = 7, QB_Q8_0 = 8,
    QB_Q2_K = 10, QB_Q3_K = 11, QB_Q4_K = 12, QB_Q5_K = 13, QB_Q6_K = 14, QB_BF16 = 30
};

// ------------------------------------------------------------------ scalar helpers

// tests/test_kernels_ptxas.py compiles this header for the host (QB_HOST_EMULATION) to check every
// decoder, and every load's alignment, against the CPU reference; it supplies these two there.
#ifndef QB_HOST_EMULATION
static __device__ __forceinline__ float qb_half_to_float(qb_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

static __device__ __forceinline__ qb_u16 qb_float_to_half(float f) {
    qb_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

static __device__ __forceinline__ float qb_bf16_to_float(qb_u16 h) {
    return __uint_as_float(((qb_u32)h) << 16);
}

// Weights are read-only for a kernel's lifetime: the non-coherent (read-only) cache path.
static __device__ __forceinline__ qb_u16 qb_ld16(const qb_u8* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}

static __device__ __forceinline__ qb_u32 qb_ld32(const qb_u8* p) {  // p is 4-byte aligned
    return __ldg(reinterpret_cast<const unsigned int*>(p));
}

// How a load reaches memory: weights are read-only for a kernel's lifetime, so by default through the
// non-coherent (read-only) cache path; quant_codes.cuh passes plain loads, which also read shared memory.
struct QbReadOnly {
    template <class V>
    static __device__ __forceinline__ V ld(const qb_u8* p) {
        return __ldg(reinterpret_cast<const V*>(p));
    }
};

// Blocks of 18, 22, 34, 110 and 210 bytes are only 2-byte aligned. Whether a given word is
// 4-aligned depends only on its block's parity, which all lanes of a warp share, so the
// branch does not diverge in practice.
template <class L = QbReadOnly>
static __device__ __forceinline__ qb_u32 qb_ld32_a2(const qb_u8* p) {
    if ((reinterpret_cast<qb_u64>(p) & 3u) == 0) return L::template ld<qb_u32>(p);
    return (qb_u32)L::template ld<qb_u16>(p) | ((qb_u32)L::template ld<qb_u16>(p + 2) << 16);
}

// NW consecutive 32-bit words at p, in the widest loads the guaranteed alignment A allows
// (A is a compile-time fact of the layout: block size and in-block offset).
template <int NW, int A, class L = QbReadOnly>
static __device__ __forceinline__ void qb_load_words(const qb_u8* p, qb_u32 (&w)[NW]) {
    if constexpr (A >= 16 && NW % 4 == 0) {
#pragma unroll
        for (int i = 0; i < NW / 4; ++i) {
            const uint4 v = L::template ld<uint4>(p + 16 * i);
            w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
        }
    } else if constexpr (A >= 8 && NW % 2 == 0) {
#pragma unroll
        for (int i = 0; i < NW / 2; ++i) {
            const uint2 v = L::template ld<uint2>(p + 8 * i);
            w[2 * i] = v.x, w[2 * i + 1] = v.y;
        }
    } else if constexpr (A >= 4) {
#pragma unroll
        for (int i = 0; i < NW; ++i) w[i] = L::template ld<qb_u32>(p + 4 * i);
    } else {
#pragma unroll
        for (int i = 0; i < NW; ++i) w[i] = qb_ld32_a2<L>(p + 4 * i);
    }
}

// Alignment of a run of N codes stored one per byte (a nibble or crumb of each byte) at an offset
// that is a multiple of N bytes, inside a field whose block size and offset are multiples of F.
static __host__ __device__ constexpr int qb_align(int n, int f) { return n < f ? n : f; }

// Four packed unsigned bytes to four exact floats without the slow I2F path: place the byte
// in the mantissa of 2^23 (0x4B0000xx) and subtract 2^23.
static __device__ __forceinline__ void qb_bytes_to_float(qb_u32 w, float* f) {
#pragma unroll
    for (int k = 0; k < 4; ++k) f[k] = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u + k)) - 8388608.0f;
}

// Bits 0..3 of x to bit 0 of bytes 0..3 (the shifted copies never overlap, so no carries).
static __device__ __forceinline__ qb_u32 qb_spread4(qb_u32 x) {
    return ((x & 0xFu) * 0x00204081u) & 0x01010101u;
}

// K-quant 6-bit scale and min j (0..7) of a 12-byte Q4_K/Q5_K scales field.
static __device__ __forceinline__ void qb_scale_min_k4(const qb_u8* sc, int j, int& scale, int& min) {
    const int a = __ldg(sc + j), b = __ldg(sc + j + 4), c = __ldg(sc + ((j - 4) & 7));
    if (j < 4) {
        scale = a & 63;
        min = b & 63;
    } else {
        scale = (b & 0xF) | ((c >> 6) << 4);
        min = (b >> 4) | ((a >> 6) << 4);
    }
}

#include "quant_layout.cuh"  // where a block lies on the device: DeviceSplit, QbAt, qb_at, qb_row

// ------------------------------------------------------------------ float types
// Block of one value; run<N> reads N consecutive elements starting at p (s is always 0 there).

template <>
struct Block<QB_F32> {
    static constexpr int QK = 1, BYTES = 4;
    static constexpr bool IS_FLOAT = true;
    template <int N>
    static __device__ __forceinline__ void run(const qb_u8* p, int s, float (&q)[N], float& d, float& m) {
        const float* f = reinterpret_cast<const float*>(p) + s;
        d = 1.0f;
        m = 0.0f;
        if constexpr (N % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; ++i) {
                const float4 v = __ldg(reinterpret_cast<const float4*>(f) + i);
                q[4 * i] = v.x, q[4 * i + 1] = v.y, q[4 * i + 2] = v.z, q[4 * i + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) q[k] = __ldg(f + k);
        }
    }
};

template <bool BF16>
struct HalfBlock {
    static constexpr int QK = 1, BYTES = 2;
    static constexpr bool IS_FLOAT = true;
    static __device__ __forceinline__ float cvt(qb_u16 h) { return BF16 ? qb_bf16_to_float(h) : qb_half_to_float(h); }
    template <int N>
    static __device__ __forceinline__ void run(const qb_u8* p, int s, float (&q)[N], float& d, float& m) {
        const qb_u8* h = p + 2 * s;
        d = 1.0f;
        m = 0.0f;
        if constexpr (N % 4 == 0) {  // 2N bytes at a multiple of 2N: 16-aligned from N = 8 on
            qb_u32 w[N / 2];
            qb_load_words<N / 2, 2 * N>(h, w);
#pragma unroll
            for (int i = 0; i < N / 2; ++i) q[2 * i] = cvt(w[i] & 0xFFFFu), q[2 * i + 1] = cvt(w[i] >> 16);
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) q[k] = cvt(qb_ld16(h + 2 * k));
        }
    }
};
template <> struct Block<QB_F16> : HalfBlock<false> {};
template <> struct Block<QB_BF16> : HalfBlock<true> {};

// ------------------------------------------------------------------ legacy 32-value blocks
// Values j and j+16 share byte j of qs: low nibble, high nibble.

// Q4_0: d f16 @0, qs[16] @2. value = d * (q - 8). Q4_1: d @0, m @2, qs @4. value = d*q + m.
// On the device Q4_0's d lies apart and qs is the 16-aligned body (DeviceSplit); Q4_1 keeps GGUF's layout.
template <bool HAS_M>
struct Q4Legacy {
    static constexpr int QK = 32, BYTES = HAS_M ? 20 : 18, QS = HAS_M ? 4 : 2, ID = HAS_M ? QB_Q4_1 : QB_Q4_0;
    static constexpr int QS_ALIGN = qb_body_align<ID>(HAS_M ? 4 : 2);
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const QbAt& at, int s, float (&q)[N], float& d, float& m) {
        const qb_u8* head = qb_head<ID, 0, QS>(at);
        d = qb_half_to_float(qb_ld16(head));
        m = HAS_M ? qb_half_to_float(qb_ld16(head + 2)) : -8.0f * d;
        const int shift = (s & 16) >> 2;
        qb_u32 w[N / 4];
        qb_load_words<N / 4, qb_align(N, QS_ALIGN)>(qb_body<ID, 0, QS>(at) + (s & 15), w);
#pragma unroll
        for (int i = 0; i < N / 4; ++i) qb_bytes_to_float((w[i] >> shift) & 0x0F0F0F0Fu, &q[4 * i]);
    }
};
template <> struct Block<QB_Q4_0> : Q4Legacy<false> {};
template <> struct Block<QB_Q4_1> : Q4Legacy<true> {};

// Q5_0: d @0, qh u32 @2, qs[16] @6; value = d * (q - 16). Q5_1: d @0, m @2, qh @4, qs @8.
// Bit j of qh is bit 4 of value j (j = 0..31). Both keep GGUF's layout on the device (no DeviceSplit row: split,
// Q5_0's matvec measured no faster on the H200), so Q5_0's qh and qs are 2-aligned.
template <bool HAS_M>
struct Q5Legacy {
    static constexpr int QK = 32, BYTES = HAS_M ? 24 : 22, QH = HAS_M ? 4 : 2, QS = QH + 4;
    static constexpr int ID = HAS_M ? QB_Q5_1 : QB_Q5_0;
    static constexpr int QS_ALIGN = qb_body_align<ID>(HAS_M ? 8 : 2);
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const QbAt& at, int s, float (&q)[N], float& d, float& m) {
        const qb_u8* head = qb_head<ID, 0, QS>(at);
        d = qb_half_to_float(qb_ld16(head));
        m = HAS_M ? qb_half_to_float(qb_ld16(head + 2)) : -16.0f * d;
        const qb_u32 qh = HAS_M ? qb_ld32(head + QH) : qb_ld32_a2(head + QH);
        const int shift = (s & 16) >> 2;
        qb_u32 w[N / 4];
        qb_load_words<N / 4, qb_align(N, QS_ALIGN)>(qb_body<ID, 0, QS>(at) + (s & 15), w);
#pragma unroll
        for (int i = 0; i < N / 4; ++i)
            qb_bytes_to_float(((w[i] >> shift) & 0x0F0F0F0Fu) | (qb_spread4(qh >> (s + 4 * i)) << 4), &q[4 * i]);
    }
};
template <> struct Block<QB_Q5_0> : Q5Legacy<false> {};
template <> struct Block<QB_Q5_1> : Q5Legacy<true> {};

// Q8_0: d @0, int8 qs[32] @2. Flipping the sign bit gives q + 128 as an unsigned byte. On the device d lies
// apart and qs is the 16-aligned body (DeviceSplit).
template <>
struct Block<QB_Q8_0> {
    static constexpr int QK = 32, BYTES = 34;
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const QbAt& at, int s, float (&q)[N], float& d, float& m) {
        d = qb_half_to_float(qb_ld16(qb_head<QB_Q8_0, 0, 2>(at)));
        m = -128.0f * d;
        qb_u32 w[N / 4];
        qb_load_words<N / 4, qb_align(N, qb_body_align<QB_Q8_0>(2))>(qb_body<QB_Q8_0, 0, 2>(at) + s, w);
#pragma unroll
        for (int i = 0; i < N / 4; ++i) qb_bytes_to_float(w[i] ^ 0x80808080u, &q[4 * i]);
    }
};

// ------------------------------------------------------------------ K-quants, 256-value superblocks

// Q2_K: scales[16] @0 (low nibble scale, high nibble min), qs[64] @16, d @80, dmin @82.
// Value 128h + 32j + 16k + l: 2 bits at shift 2j of qs[32h + 16k + l], sub-block 8h + 2j + k.
template <>
struct Block<QB_Q2_K> {
    static constexpr int QK = 256, BYTES = 84;
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const qb_u8* b, int s, float (&q)[N], float& d, float& m) {
        const int h = s >> 7, j = (s >> 5) & 3, k = (s >> 4) & 1, l = s & 15;
        const int sc = __ldg(b + 8 * h + 2 * j + k);
        d = qb_half_to_float(qb_ld16(b + 80)) * (float)(sc & 0xF);
        m = -qb_half_to_float(qb_ld16(b + 82)) * (float)(sc >> 4);
        qb_u32 w[N / 4];
        qb_load_words<N / 4, qb_align(N, 4)>(b + 16 + 32 * h + 16 * k + l, w);
#pragma unroll
        for (int i = 0; i < N / 4; ++i) qb_bytes_to_float((w[i] >> (2 * j)) & 0x03030303u, &q[4 * i]);
    }
};

// Q3_K: hmask[32] @0, qs[64] @32, scales[12] @96 (16 packed 6-bit signed-offset scales), d @108.
// Value 128h + 32j + 16k + l: low 2 bits at shift 2j of qs[32h + 16k + l], bit 2 is bit 4h + j
// of hmask[16k + l] (a clear bit means "minus 4"), sub-block 8h + 2j + k; value = d*sc*(q - 4).
template <>
struct Block<QB_Q3_K> {
    static constexpr int QK = 256, BYTES = 110;
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const qb_u8* b, int s, float (&q)[N], float& d, float& m) {
        const int h = s >> 7, j = (s >> 5) & 3, k = (s >> 4) & 1, l = s & 15;
        const int si = 8 * h + 2 * j + k;
        const int lo = si < 8 ? __ldg(b + 96 + si) & 0xF : __ldg(b + 96 + si - 8) >> 4;
        const int hi = (__ldg(b + 104 + (si & 3)) >> (2 * (si >> 2))) & 3;
        d = qb_half_to_float(qb_ld16(b + 108)) * (float)((lo | (hi << 4)) - 32);
        m = -4.0f * d;
        const int hbit = 4 * h + j;
        qb_u32 wq[N / 4], wh[N / 4];
        qb_load_words<N / 4, 2>(b + 32 + 32 * h + 16 * k + l, wq);
        qb_load_words<N / 4, 2>(b + 16 * k + l, wh);
#pragma unroll
        for (int i = 0; i < N / 4; ++i)
            qb_bytes_to_float(((wq[i] >> (2 * j)) & 0x03030303u) | (((wh[i] >> hbit) & 0x01010101u) << 2), &q[4 * i]);
    }
};

// Q4_K: d @0, dmin @2, scales[12] @4 (8 packed 6-bit scale/min pairs), qs[128] @16.
// Value 64g + 32k + l: nibble k of qs[32g + l], sub-block 2g + k; value = d*sc*q - dmin*mn.
// Q5_K adds qh[32] @16 (qs moves to @48): bit 2g + k of qh[l] is bit 4 of the value.
template <bool Q5>
struct KQuant45 {
    static constexpr int QK = 256, BYTES = Q5 ? 176 : 144, QS = Q5 ? 48 : 16;
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const qb_u8* b, int s, float (&q)[N], float& d, float& m) {
        const int g = s >> 6, k = (s >> 5) & 1, l = s & 31, sub = 2 * g + k;
        int sc, mn;
        qb_scale_min_k4(b + 4, sub, sc, mn);
        d = qb_half_to_float(qb_ld16(b)) * (float)sc;
        m = -qb_half_to_float(qb_ld16(b + 2)) * (float)mn;
        qb_u32 w[N / 4], hi[N / 4];
        qb_load_words<N / 4, qb_align(N, 16)>(b + QS + 32 * g + l, w);
        if constexpr (Q5) qb_load_words<N / 4, qb_align(N, 16)>(b + 16 + l, hi);
#pragma unroll
        for (int i = 0; i < N / 4; ++i) {
            qb_u32 v = (w[i] >> (4 * k)) & 0x0F0F0F0Fu;
            if constexpr (Q5) v |= ((hi[i] >> sub) & 0x01010101u) << 4;
            qb_bytes_to_float(v, &q[4 * i]);
        }
    }
};
template <> struct Block<QB_Q4_K> : KQuant45<false> {};
template <> struct Block<QB_Q5_K> : KQuant45<true> {};

// Q6_K: ql[128] @0, qh[64] @128, int8 scales[16] @192, d @208. On the device d lies apart and the first 208
// bytes are the 16-aligned body (DeviceSplit).
// Value 128h + 32k + l: nibble (k >> 1) of ql[64h + 32(k & 1) + l], bits 4..5 from shift 2k of
// qh[32h + l], sub-block 8h + 2k + l/16; value = d * sc * (q - 32).
template <>
struct Block<QB_Q6_K> {
    static constexpr int QK = 256, BYTES = 210;
    static constexpr bool IS_FLOAT = false;
    template <int N>
    static __device__ __forceinline__ void run(const QbAt& at, int s, float (&q)[N], float& d, float& m) {
        const qb_u8* b = qb_body<QB_Q6_K, 208, 2>(at);
        constexpr int A = qb_body_align<QB_Q6_K>(2);
        const int h = s >> 7, k = (s >> 5) & 3, l = s & 31;
        const int sc = (qb_i8)__ldg(b + 192 + 8 * h + 2 * k + (l >> 4));
        d = qb_half_to_float(qb_ld16(qb_head<QB_Q6_K, 208, 2>(at))) * (float)sc;
        m = -32.0f * d;
        qb_u32 lo[N / 4], hi[N / 4];
        qb_load_words<N / 4, qb_align(N, A)>(b + 64 * h + 32 * (k & 1) + l, lo);
        qb_load_words<N / 4, qb_align(N, A)>(b + 128 + 32 * h + l, hi);
#pragma unroll
        for (int i = 0; i < N / 4; ++i)
            qb_bytes_to_float(((lo[i] >> (4 * (k >> 1))) & 0x0F0F0F0Fu) | (((hi[i] >> (2 * k)) & 0x03030303u) << 4),
                              &q[4 * i]);
    }
};

// Compile-time check that each decoder agrees with the mirrored traits table.
#define QB_CHECK_LAYOUT(NAME, name, ID, QK_, BYTES_, DT, MT, MR, SB)                            \
    static_assert(Block<ID>::QK == QK_ && Block<ID>::BYTES == BYTES_, #NAME " layout mismatch"); \
    static_assert(QK_ % DT == 0, #NAME ": dequant threads must divide the block");
QPROF_QUANT_TYPES(QB_CHECK_LAYOUT)
#undef QB_CHECK_LAYOUT
