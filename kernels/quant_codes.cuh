// GGUF blocks as packed integer codes for the dp4a matvec: the integer twin of quant_blocks.cuh.
//
// Every quantized type exposes Codes<T>: a block is split into TASKS lane tasks (one lane's share
// of one block), each loaded with the widest loads its alignment allows (load) and then decoded
// (decode) into RUNS runs of 16 consecutive values. Run r of task t covers values v .. v+15 of the
// block and holds them as 4 words of 4 unsigned byte codes each, with value[k] = d * code[k] + m.
// A task always uses every bit it loads (both nibbles of a Q4 byte, all four crumbs of a Q2/Q3
// byte), so no byte of the weights is fetched twice. Layout offsets are the ones documented in
// quant_blocks.cuh; tests/test_kernels_ptxas.py runs these decoders on the host against the CPU
// reference, checking every load's alignment.
//
// Codes stay below 256 and 16-value runs never straddle a scale, so an int32 dot product of a run
// against 8- or 16-bit activations is exact.
#pragma once

#include "quant_blocks.cuh"

#ifndef QB_HOST_EMULATION
static __device__ __forceinline__ qb_u32 qc_funnel(qb_u32 lo, qb_u32 hi, int shift) {
    return __funnelshift_r(lo, hi, shift);
}
#endif

// The matvec streams some types' weights into shared memory (matvec_core.cuh) and decodes them there,
// so these loads are plain generic loads: the compiler makes them shared-memory loads where the
// pointer comes from shared memory, and global ones elsewhere. (The host emulation checks alignment.)
struct QcPlain {
    template <class V>
    static __device__ __forceinline__ V ld(const qb_u8* p) {
#ifndef QB_HOST_EMULATION
        return *reinterpret_cast<const V*>(p);
#else
        return __ldg(reinterpret_cast<const V*>(p));
#endif
    }
};

// Every load below takes the policy L: QcPlain where the bytes may sit in shared memory (the stream),
// QbReadOnly (ld.global.nc) on the register path, which reads global memory only.
template <class V, class L = QcPlain>
static __device__ __forceinline__ V qc_ld(const qb_u8* p) { return L::template ld<V>(p); }
template <class L = QcPlain>
static __device__ __forceinline__ qb_u32 qc_ld32(const qb_u8* p) { return qc_ld<qb_u32, L>(p); }
template <class L = QcPlain>
static __device__ __forceinline__ float qc_half(const qb_u8* p) { return qb_half_to_float(qc_ld<qb_u16, L>(p)); }
template <class L = QcPlain>
static __device__ __forceinline__ qb_u32 qc_ld32_a2(const qb_u8* p) { return qb_ld32_a2<L>(p); }

template <int NW, int A, class L = QcPlain>
static __device__ __forceinline__ void qc_words(const qb_u8* p, qb_u32 (&w)[NW]) {
    qb_load_words<NW, A, L>(p, w);
}

// 16 bytes at a 2-aligned address as 4 words: aligned 32-bit loads and a funnel shift, branch free
// (lanes of one warp may see either parity). At an address 2 mod 4 the fifth word is loaded too
// (predicated): it holds the run's last two bytes and two more, which lie in the same aligned word
// as a byte of the run and so inside the allocation.
template <class L = QcPlain>
static __device__ __forceinline__ void qc_load16_a2(const qb_u8* p, qb_u32 (&w)[4]) {
    const qb_u64 addr = reinterpret_cast<qb_u64>(p);
    const qb_u8* base = reinterpret_cast<const qb_u8*>(addr & ~static_cast<qb_u64>(3));
    const int shift = static_cast<int>(addr & 3u) * 8;
    qb_u32 a[5];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = qc_ld32<L>(base + 4 * i);
    a[4] = shift ? qc_ld32<L>(base + 16) : 0u;
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = qc_funnel(a[i], a[i + 1], shift);
}

// 16 bytes at an address aligned to A (a compile-time fact of the layout).
template <int A, class L = QcPlain>
static __device__ __forceinline__ void qc_load16(const qb_u8* p, qb_u32 (&w)[4]) {
    if constexpr (A >= 4) {
        qc_words<4, A, L>(p, w);
    } else {
        qc_load16_a2<L>(p, w);
    }
}

template <int T>
struct Codes;

// The 4-bit types' high nibbles are decoded in place, as codes 16 q with the scale d / 16 (exact: a power of
// two), which saves the shift of every word; the codes stay below 256, and a 16-value run's int32 dot
// against 16-bit activations (256 hi + lo, |xi| <= 32767) within 16 * 240 * 32767, about 1.3e8 < 2^31.
// Q5 types OR a fifth bit above the nibble, so theirs are shifted down as before.
#define QC_HIGH_IN_PLACE 0.0625f

// ------------------------------------------------------------------ legacy 32-value blocks
// One task per block: the 16 qs bytes give runs 0..15 (low nibbles) and 16..31 (high nibbles).

template <bool HAS_M, bool FIVE>
struct LegacyCodes {
    static constexpr int TASKS = 1, RUNS = 2;
    // The head d @0, [m @2], [qh u32 @QH], then qs[16]: the Q4_0/Q4_1/Q5_0/Q5_1 layouts of quant_blocks.cuh, the
    // head apart and qs 16-aligned on the device for Q4_0 (DeviceSplit).
    static constexpr int QH = HAS_M ? 4 : 2, QS = (FIVE ? QH + 4 : QH);
    static constexpr int ID = FIVE ? (HAS_M ? QB_Q5_1 : QB_Q5_0) : (HAS_M ? QB_Q4_1 : QB_Q4_0);
    static constexpr int BYTES = FIVE ? (HAS_M ? 24 : 22) : (HAS_M ? 20 : 18);
    static constexpr int QS_ALIGN = qb_body_align<ID>(BYTES % 8 == 0 ? 8 : (BYTES % 4 == 0 ? 4 : 2));
    static constexpr int QH_ALIGN = (DeviceSplit<ID>::HEAD > 0 ? DeviceSplit<ID>::HEAD : BYTES) % 4 == 0 ? 4 : 2;
    struct Raw {
        qb_u32 qs[4];
        qb_u32 qh;
        float d, m;
    };
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const QbAt& at, int, Raw& r) {
        const qb_u8* head = qb_head<ID, 0, QS>(at);
        r.d = qc_half<L>(head);
        r.m = HAS_M ? qc_half<L>(head + 2) : (FIVE ? -16.0f : -8.0f) * r.d;
        qc_load16<QS_ALIGN, L>(qb_body<ID, 0, QS>(at), r.qs);
        r.qh = FIVE ? (QH_ALIGN >= 4 ? qc_ld32<L>(head + QH) : qc_ld32_a2<L>(head + QH)) : 0u;
    }
    static __device__ __forceinline__ void decode(const Raw& r, int, int run, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        v = 16 * run;
        // Q4_0/Q4_1's high nibbles stay in place as codes 16 q (< 256) with d / 16: no shift (QC_HIGH_IN_PLACE)
        d = !FIVE && run == 1 ? r.d * QC_HIGH_IN_PLACE : r.d;
        m = r.m;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            qb_u32 q = FIVE ? (r.qs[i] >> (4 * run)) & 0x0F0F0F0Fu : r.qs[i] & (run ? 0xF0F0F0F0u : 0x0F0F0F0Fu);
            if constexpr (FIVE) q |= qb_spread4(r.qh >> (16 * run + 4 * i)) << 4;
            c[i] = q;
        }
    }
};
template <> struct Codes<QB_Q4_0> : LegacyCodes<false, false> {};
template <> struct Codes<QB_Q4_1> : LegacyCodes<true, false> {};
template <> struct Codes<QB_Q5_0> : LegacyCodes<false, true> {};
template <> struct Codes<QB_Q5_1> : LegacyCodes<true, true> {};

// Q8_0: d @0, int8 qs[32] @2, on the device d apart and qs the 16-aligned body (DeviceSplit); two tasks of one
// run each. code = q + 128, m = -128 d.
template <>
struct Codes<QB_Q8_0> {
    static constexpr int TASKS = 2, RUNS = 1;
    struct Raw {
        qb_u32 qs[4];
        float d;
    };
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const QbAt& at, int t, Raw& r) {
        r.d = qc_half<L>(qb_head<QB_Q8_0, 0, 2>(at));
        qc_load16<qb_body_align<QB_Q8_0>(2), L>(qb_body<QB_Q8_0, 0, 2>(at) + 16 * t, r.qs);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int t, int, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        v = 16 * t;
        d = r.d;
        m = -128.0f * r.d;
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] = r.qs[i] ^ 0x80808080u;
    }
};

// ------------------------------------------------------------------ K-quants, 256-value superblocks

// Q2_K: scales[16] @0, qs[64] @16, d @80, dmin @82 (84 bytes, 4-aligned). Task t = (h, k) =
// (t / 2, t % 2) takes qs[32h + 16k .. +16]; crumb j of it is run j: values 128h + 32j + 16k + l,
// sub-block 8h + 2j + k, value = d * (sc & 15) * q - dmin * (sc >> 4).
template <>
struct Codes<QB_Q2_K> {
    static constexpr int TASKS = 4, RUNS = 4;
    struct Raw {
        qb_u32 qs[4];
        qb_u32 sc;  // the task's four scale bytes, scales[8h + 2j + k] for runs j = 0..3
        qb_u32 dd;  // d | dmin << 16
    };
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const qb_u8* b, int t, Raw& r) {
        const int h = t >> 1, k = t & 1;
        qc_words<4, 4, L>(b + 16 + 32 * h + 16 * k, r.qs);
        // bytes k, 2 + k, 4 + k, 6 + k of scales[8h ..]: one register for the four the task uses, not two
        r.sc = __byte_perm(qc_ld32<L>(b + 8 * h), qc_ld32<L>(b + 8 * h + 4), k ? 0x7531u : 0x6420u);
        r.dd = qc_ld32<L>(b + 80);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int t, int run, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        const int h = t >> 1, k = t & 1, j = run;
        v = 128 * h + 32 * j + 16 * k;
        const int sc = static_cast<int>((r.sc >> (8 * j)) & 0xFFu);
        d = qb_half_to_float(static_cast<qb_u16>(r.dd & 0xFFFFu)) * static_cast<float>(sc & 0xF);
        m = -qb_half_to_float(static_cast<qb_u16>(r.dd >> 16)) * static_cast<float>(sc >> 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] = (r.qs[i] >> (2 * j)) & 0x03030303u;
    }
};

// Q3_K: hmask[32] @0, qs[64] @32, scales[12] @96, d @108 (110 bytes, 2-aligned). Task t = (h, k)
// takes qs[32h + 16k .. +16] and hmask[16k .. +16]; run j: values 128h + 32j + 16k + l, low two
// bits at shift 2j, bit 2 = bit 4h + j of hmask, sub-block 8h + 2j + k; value = d * sc * (q - 4).
template <>
struct Codes<QB_Q3_K> {
    static constexpr int TASKS = 4, RUNS = 4;
    struct Raw {
        qb_u32 qs[4], hm[4];
        qb_u32 sc;  // the task's four 6-bit signed scales, one per byte
        float d;
    };
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const qb_u8* b, int t, Raw& r) {
        const int h = t >> 1, k = t & 1;
        qc_load16_a2<L>(b + 32 + 32 * h + 16 * k, r.qs);
        qc_load16_a2<L>(b + 16 * k, r.hm);
        r.sc = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int si = 8 * h + 2 * j + k;
            const int lo = si < 8 ? qc_ld<qb_u8, L>(b + 96 + si) & 0xF : qc_ld<qb_u8, L>(b + 96 + si - 8) >> 4;
            const int hi = (qc_ld<qb_u8, L>(b + 104 + (si & 3)) >> (2 * (si >> 2))) & 3;
            r.sc |= (qb_u32)(lo | (hi << 4)) << (8 * j);
        }
        r.d = qc_half<L>(b + 108);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int t, int run, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        const int h = t >> 1, k = t & 1, j = run;
        v = 128 * h + 32 * j + 16 * k;
        d = r.d * static_cast<float>(static_cast<int>((r.sc >> (8 * j)) & 0xFFu) - 32);
        m = -4.0f * d;
        const int hbit = 4 * h + j;
#pragma unroll
        for (int i = 0; i < 4; ++i)
            c[i] = ((r.qs[i] >> (2 * j)) & 0x03030303u) | (((r.hm[i] >> hbit) & 0x01010101u) << 2);
    }
};

// Q4_K: d @0, dmin @2, scales[12] @4, qs[128] @16 (144 bytes, 16-aligned); Q5_K adds qh[32] @16
// and moves qs to @48 (176 bytes, 16-aligned). Task t takes qs[16t .. +16]: g = t / 2, l0 = 16 (t % 2);
// low nibbles are run 0 (values 64g + l0 + l, sub-block 2g), high nibbles run 1 (64g + 32 + l0 + l,
// sub-block 2g + 1). Q5_K: bit 2g + k of qh[l0 + l] is bit 4 of run k's value.
template <bool Q5>
struct KQuant45Codes {
    static constexpr int TASKS = 8, RUNS = 2, QS = Q5 ? 48 : 16;
    struct Raw {
        qb_u32 dd;      // d | dmin << 16
        qb_u32 sc, mn;  // the 6-bit scales and mins of sub-blocks 4 (t / 4) .. +3, one per byte
        qb_u32 qs[4];
        qb_u32 qh[Q5 ? 4 : 1];
    };
    // The 12 scale bytes unpacked four sub-blocks at a time, branch free: sub-blocks 0..3 are the low
    // six bits of bytes 0..3 (scales) and 4..7 (mins); 4..7 take their low four bits from bytes 8..11
    // and their top two from the high bits of bytes 0..3 / 4..7 (quant_blocks.cuh qb_scale_min_k4, bytewise).
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const qb_u8* b, int t, Raw& r) {
        qb_u32 head[4];
        qc_words<4, 16, L>(b, head);
        r.dd = head[0];
        const bool hi = t >= 4;
        r.sc = hi ? (head[3] & 0x0F0F0F0Fu) | ((head[1] >> 2) & 0x30303030u) : head[1] & 0x3F3F3F3Fu;
        r.mn = hi ? ((head[3] >> 4) & 0x0F0F0F0Fu) | ((head[2] >> 2) & 0x30303030u) : head[2] & 0x3F3F3F3Fu;
        qc_words<4, 16, L>(b + QS + 16 * t, r.qs);
        if constexpr (Q5) qc_words<4, 16, L>(b + 16 + 16 * (t & 1), r.qh);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int t, int run, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        const int g = t >> 1, sub = 2 * g + run, shift = 8 * (sub & 3);
        v = 64 * g + 32 * run + 16 * (t & 1);
        const float dh = qb_half_to_float(static_cast<qb_u16>(r.dd & 0xFFFFu));
        d = (!Q5 && run == 1 ? dh * QC_HIGH_IN_PLACE : dh) * static_cast<float>((r.sc >> shift) & 0xFFu);
        m = -qb_half_to_float(static_cast<qb_u16>(r.dd >> 16)) * static_cast<float>((r.mn >> shift) & 0xFFu);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            qb_u32 q = Q5 ? (r.qs[i] >> (4 * run)) & 0x0F0F0F0Fu : r.qs[i] & (run ? 0xF0F0F0F0u : 0x0F0F0F0Fu);
            if constexpr (Q5) q |= ((r.qh[i] >> sub) & 0x01010101u) << 4;
            c[i] = q;
        }
    }
};
template <> struct Codes<QB_Q4_K> : KQuant45Codes<false> {};
template <> struct Codes<QB_Q5_K> : KQuant45Codes<true> {};

// Q6_K: ql[128] @0, qh[64] @128, int8 scales[16] @192 in the block's 208 bytes, 16-aligned on the device, and d
// apart (quant_layout.cuh DeviceSplit), so ql and qh take 16-byte loads. Task t:
// h = t / 4, kk = (t / 2) % 2, l0 = 16 (t % 2) takes ql[64h + 32kk + l0 .. +16] and qh[32h + l0 .. +16].
// Run 0 is k = kk (low nibbles), run 1 is k = kk + 2 (high nibbles): values 128h + 32k + l0 + l,
// bits 4..5 at shift 2k of qh, scale index 8h + 2k + l0 / 16; value = d * sc * (q - 32).
template <>
struct Codes<QB_Q6_K> {
    static constexpr int TASKS = 8, RUNS = 2;
    struct Raw {
        qb_u32 ql[4], qh[4];
        float d[2];  // d * scale of each run's sub-block
    };
    template <class L = QcPlain>
    static __device__ __forceinline__ void load(const QbAt& at, int t, Raw& r) {
        const qb_u8* b = qb_body<QB_Q6_K, 208, 2>(at);
        constexpr int A = qb_body_align<QB_Q6_K>(2);
        const int h = t >> 2, kk = (t >> 1) & 1, l0 = 16 * (t & 1);
        qc_load16<A, L>(b + 64 * h + 32 * kk + l0, r.ql);
        qc_load16<A, L>(b + 128 + 32 * h + l0, r.qh);
        const float d = qc_half<L>(qb_head<QB_Q6_K, 208, 2>(at));
#pragma unroll
        for (int run = 0; run < RUNS; ++run)
            r.d[run] = d * static_cast<float>(static_cast<qb_i8>(qc_ld<qb_u8, L>(b + 192 + 8 * h + 2 * (kk + 2 * run) +
                                                                               (l0 >> 4))));
    }
    static __device__ __forceinline__ void decode(const Raw& r, int t, int run, qb_u32 (&c)[4], float& d, float& m,
                                                  int& v) {
        const int h = t >> 2, kk = (t >> 1) & 1, l0 = 16 * (t & 1), k = kk + 2 * run;
        v = 128 * h + 32 * k + l0;
        d = r.d[run];
        m = -32.0f * d;
#pragma unroll
        for (int i = 0; i < 4; ++i)
            c[i] = ((r.ql[i] >> (4 * run)) & 0x0F0F0F0Fu) | (((r.qh[i] >> (2 * k)) & 0x03030303u) << 4);
    }
};

// The matvec's stage of two rows in shared memory (matvec_core.cuh): one lane task per lane and row,
// so 32 / TASKS blocks a row (QuantTraits.matvec_stage_blocks), each row's span rounded to 16 bytes
// plus 16 of slack for the aligned copy; kernels.py matvec_stage_bytes mirrors BYTES (a CPU test
// compares the two through the host emulation).
// Which types stream through shared memory: measured on the H200 (results/h200/matvec_h200.txt, the
// streaming build against -DQP_MV_FORCE_REGISTERS), only Q3_K, the heaviest decode, gained; every
// other type reads faster straight from global memory with the L2 prefetch of the register path.
// QuantTraits.matvec_stage_blocks is 0 for the register-path types. (-DQP_MV_FORCE_REGISTERS: every
// type on the register path, the experiment.)
template <int T>
static __host__ __device__ constexpr bool qc_streams() {
#ifdef QP_MV_FORCE_REGISTERS
    return false;
#else
    return T == QB_Q3_K;
#endif
}

template <int T>
struct Stage {
    static constexpr int BLOCKS = 32 / Codes<T>::TASKS;  // QuantTraits.matvec_stage_blocks
    static constexpr int ROW_BYTES = (BLOCKS * Block<T>::BYTES + 15) / 16 * 16 + 16;  // aligned span's room
    static constexpr int BYTES = 2 * ROW_BYTES;  // both rows
    static_assert(32 % Codes<T>::TASKS == 0, "a stage is a whole number of blocks");
};

