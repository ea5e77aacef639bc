// Causal grouped-query attention over the KV cache for decode (one query row). Prefill attention runs in
// torch's scaled_dot_product_attention (qprof/runtime/cuda/ops.py attention_prefill says why).
//
// Shared conventions
//   q / out: [n_q, n_head * D] float32; K and V caches of one layer: [n_ctx, n_head_kv * D] float32.
//   Query head h reads KV head h / n_gqa. The query sits at *pos_ptr (read on the device so the step
//   can be captured in a CUDA graph), or at pos0 without a pointer.
//   Key j is visible to a query at position p when j <= p and, with a sliding window W > 0, p - j < W.
//   mask (optional, float, 0 or -inf, added to the score): when given, causality and the window
//   come from it alone and every cached key up to the forward's last position is scored. The
//   mask row of a query is its position (mask_row_by_pos = 1: the device-resident [n_ctx, n_ctx]
//   mask) or its row index in the batch (mask_row_by_pos = 0: a mask uploaded for this forward).
//
// Decode (flash-decoding): attn_decode_d<D>[_f16kv] grid (n_head_kv, n_split), 128 threads, dynamic
//   shared memory n_gqa * chunk floats. Each CTA reads its KV head's rows once for all n_gqa query
//   heads of the group; the live keys are split evenly over the n_split CTAs of a head at run time
//   (chunk >= ceil(n_ctx / n_split) bounds a split), so the grid depends on n_ctx only. Each split
//   writes an unnormalized partial (max, sum, sum p*V) per query head; attn_combine merges them.
// KV caches are float32 or (the _f16kv instances) float16; scores and sums are float32 either way.
#include "common.cuh"
#include "matvec_qvec.cuh"  // the combine writes a QVec

#define QP_DECODE_THREADS 128

struct QpMask {
    const float* ptr;
    int stride;
    int row_by_pos;
    __device__ __forceinline__ float at(int row_index, int pos, int key) const {
        const long row = row_by_pos ? pos : row_index;
        return ptr[row * (long)stride + key];
    }
};

// K/V element loads for a float32 or float16 cache (4 consecutive values at a 4-aligned index).
static __device__ __forceinline__ float4 qp_kv4(const float* p, long i) {
    return __ldg(reinterpret_cast<const float4*>(p + i));
}
static __device__ __forceinline__ float4 qp_kv4(const qb_u16* p, long i) {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(p + i));
    return make_float4(qb_half_to_float(w.x & 0xFFFF), qb_half_to_float(w.x >> 16), qb_half_to_float(w.y & 0xFFFF),
                       qb_half_to_float(w.y >> 16));
}

#define QP_MAX_GQA 8

// Decode: one CTA per (KV head, split) reads each K/V row once for the whole GQA group. The live
// keys [lo, pos] are divided evenly over the n_split splits at run time (the grid depends on n_ctx
// only, so the step stays graph-capturable, yet short contexts still spread over every split).
// Scores: D / 4 lanes hold a key row, 4 dims each (a warp scores 32 / SEG keys at once, SEG the lanes a
// dot is summed over), all heads of the group at once. Softmax per head by one warp each. Output: the
// CTA's threads form key groups of D / 4 threads, thread d4 of a group owning dims 4 d4 .. 4 d4 + 3 of
// every head over keys kg, kg + KG, ...; group 0 adds the others' sums.
// Both passes keep QP_DECODE_KEYS_IN_FLIGHT keys' loads in flight per thread before using any: a split's
// K and V rows are a chain of dependent L2 round trips otherwise, which bound long contexts: one key at a
// time, the kernel took 15.5 µs a layer at position 512 and 5.7 at 8 on the H200 (4 MB more KV in 9.8 µs).
// 4: on the H200 (2026-12-01, bench_attention at 9e9c3142, f32 KV, L2 flushed) 9.4, 10.5, 11.1, 13.8 and 37.8 µs
// a layer at positions 8, 64, 128, 512 and 4096; 8 read 9.9, 10.8, 12.3, 14.1, 40.0; 2 read 9.4, 10.5, 11.3,
// 15.2, 53.5; the kernel before this loop 8.4, 9.7, 11.8, 16.1, 63.3 (attn6 at f4879208).
#ifndef QP_DECODE_KEYS_IN_FLIGHT
#define QP_DECODE_KEYS_IN_FLIGHT 4
#endif

template <int D, int G, typename KvT>
__device__ void attn_decode_gqa(const float* __restrict__ q, const KvT* __restrict__ k_cache,
                                const KvT* __restrict__ v_cache, float* __restrict__ part_o,
                                float* __restrict__ part_ml, int n_gqa, int kv_dim, const int* pos_ptr,
                                int pos0, int chunk, int window, QpMask mask, float scale) {
    extern __shared__ float s_scores[];  // [n_gqa][chunk]
    constexpr int NT = QP_DECODE_THREADS, NW = NT / QP_WARP;
    constexpr int U = G >= 8 ? QP_DECODE_KEYS_IN_FLIGHT / 2 : QP_DECODE_KEYS_IN_FLIGHT;  // 8 heads: half, for code size
    constexpr int LANES = D / 4;  // threads holding a key row, 4 dims each
    constexpr int SEG = (LANES & (LANES - 1)) == 0 ? LANES : QP_WARP;  // D = 96: 24 lanes of a whole warp
    constexpr int KPW = QP_WARP / SEG;  // keys a warp scores at once
    constexpr int STEP = NW * KPW;  // keys the CTA scores at once
    constexpr int KG = NT / LANES;  // key groups of the output stage
    static_assert(D % 4 == 0 && LANES <= QP_WARP && KG >= 1, "head size");
    static_assert(G <= QP_MAX_GQA && (G & (G - 1)) == 0, "heads of a CTA");
    __shared__ __align__(16) float s_acc[KG > 1 ? (KG - 1) * G * D : 1];  // groups 1.. for group 0
    const int kvh = blockIdx.x, split = blockIdx.y, n_split = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    // the position is the step's (written before the decode graph or the eager step began), so the
    // prologue below may read it before qp_grid_wait
    const int pos = qp_position(pos_ptr, pos0, 0);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int per = (pos - lo + n_split) / n_split;  // ceil((pos - lo + 1) / n_split)
    const int start = lo + split * per, end = min(pos + 1, start + per);
    const long kv_off = (long)kvh * D;
    {  // pull the split's K and V rows towards L2 at once: the stages below each wait on them in turn
        constexpr int LINES = (D * (int)sizeof(KvT) + 127) / 128;
        for (int i = threadIdx.x; i < (end - start) * LINES; i += NT) {
            const long at = (long)(start + i / LINES) * kv_dim + kv_off + (i % LINES) * (128 / (int)sizeof(KvT));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + at));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + at));
        }
    }
    qp_grid_wait();  // q and this position's K and V row come from the QKV kernel

    const int seg_lane = lane % SEG, key_slot = lane / SEG;
    const bool holds = seg_lane < LANES;
    float qr[G][4];  // heads n_gqa .. G - 1 are zero: their scores are never stored
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            qr[g][c] = (g < n_gqa && holds) ? q[(long)(kvh * n_gqa + g) * D + 4 * seg_lane + c] * scale : 0.0f;

    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 1
    for (int base = start; base < end; base += STEP * U) {  // warp-uniform: the sums below shuffle
        const int j0 = base + warp * KPW + key_slot;
        float4 kr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + u * STEP;
            kr[u] = (holds && j < end) ? qp_kv4(k_cache, (long)j * kv_dim + kv_off + 4 * seg_lane) : zero;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + u * STEP;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float dot = qr[g][0] * kr[u].x + qr[g][1] * kr[u].y + qr[g][2] * kr[u].z + qr[g][3] * kr[u].w;
                dot = qp_segment_sum<SEG>(dot);
                if (seg_lane == 0 && j < end && g < n_gqa) s_scores[g * chunk + (j - start)] = dot;
            }
        }
    }
    __syncthreads();
    const int n = max(0, end - start);
    for (int g = warp; g < n_gqa; g += NW) {  // softmax numerators of head g, in place
        float* sg = s_scores + g * chunk;
        if (mask.ptr != nullptr)  // here, not in the loop above: one copy of that loop, not one per case
            for (int j = lane; j < n; j += QP_WARP) sg[j] += mask.at(0, pos, start + j);
        __syncwarp();
        float m = QP_NEG_INF;
        for (int j = lane; j < n; j += QP_WARP) m = fmaxf(m, sg[j]);
        m = qp_warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < n; j += QP_WARP) {
            const float p = m == QP_NEG_INF ? 0.0f : __expf(sg[j] - m);
            sg[j] = p;
            l += p;
        }
        l = qp_warp_sum(l);
        if (lane == 0) {
            const long part = (long)(kvh * n_gqa + g) * n_split + split;
            part_ml[2 * part] = m;
            part_ml[2 * part + 1] = l;
        }
    }
    __syncthreads();
    const int d4 = threadIdx.x % LANES, kg = threadIdx.x / LANES;
    float acc[G][4];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[g][c] = 0.0f;
    if (kg < KG) {
#pragma unroll 1
        for (int j0 = kg; j0 < n; j0 += KG * U) {
            float4 vr[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = j0 + u * KG;
                vr[u] = j < n ? qp_kv4(v_cache, (long)(start + j) * kv_dim + kv_off + 4 * d4) : zero;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = j0 + u * KG;
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float p = j < n && g < n_gqa ? s_scores[g * chunk + j] : 0.0f;  // else no score was written
                    acc[g][0] = fmaf(p, vr[u].x, acc[g][0]);
                    acc[g][1] = fmaf(p, vr[u].y, acc[g][1]);
                    acc[g][2] = fmaf(p, vr[u].z, acc[g][2]);
                    acc[g][3] = fmaf(p, vr[u].w, acc[g][3]);
                }
            }
        }
    }
    qp_grid_release();  // only the partials' stores are left
    if (KG > 1) {
        if (kg >= 1 && kg < KG) {
#pragma unroll
            for (int g = 0; g < G; ++g)
                if (g < n_gqa)
                    *reinterpret_cast<float4*>(s_acc + ((kg - 1) * G + g) * D + 4 * d4) =
                        make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
        }
        __syncthreads();
    }
    if (kg == 0) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (g >= n_gqa) break;
            float4 sum = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            for (int k2 = 1; k2 < KG; ++k2) {
                const float4 o = *reinterpret_cast<const float4*>(s_acc + ((k2 - 1) * G + g) * D + 4 * d4);
                sum.x += o.x, sum.y += o.y, sum.z += o.z, sum.w += o.w;
            }
            *reinterpret_cast<float4*>(part_o + ((long)(kvh * n_gqa + g) * n_split + split) * D + 4 * d4) = sum;
        }
    }
}

// Merge the decode partials of each head: out[h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
// grid (n_head), blockDim.x = D (whole warps). With out_q, also write out as a QVec (one 32-block
// per warp) for the attn_output projection.
extern "C" __global__ void attn_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                        float* __restrict__ out, int n_split, int D, qb_u8* out_q, int n_head) {
    qp_grid_release();
    qp_grid_wait();
    const int h = blockIdx.x;
    const float* ml = part_ml + (long)h * n_split * 2;
    float M = QP_NEG_INF;
    for (int s = 0; s < n_split; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.0f;
    for (int s = 0; s < n_split; ++s)
        if (ml[2 * s] != QP_NEG_INF) L += __expf(ml[2 * s] - M) * ml[2 * s + 1];
    const float inv_l = 1.0f / L;
    const int d = threadIdx.x;
    float acc = 0.0f;
    for (int s = 0; s < n_split; ++s)
        if (ml[2 * s] != QP_NEG_INF) acc += __expf(ml[2 * s] - M) * part_o[((long)h * n_split + s) * D + d];
    const float o = acc * inv_l;
    out[(long)h * D + d] = o;
    if (out_q != nullptr) qp_quantize_block32<1>(o, o, out_q, n_head * D, 0, (h * D + d) / 32);
}

// attn_decode_d<D>_g<G>[_f16kv]: G the query heads of a KV head the kernel computes, the power of two at
// or above n_gqa (ops.py decode_heads), so its loops over heads unroll whole without running code
// for more heads than needed beyond the rounding.
#define QP_ATTN_ENTRY(D, G, SUFFIX, KV)                                                                        \
    extern "C" __global__ void attn_decode_d##D##_g##G##SUFFIX(                                                \
        const float* q, const KV* k_cache, const KV* v_cache, float* part_o, float* part_ml, int n_gqa,      \
        int kv_dim, const int* pos_ptr, int pos0, int chunk, int window, const float* mask, int mask_stride, \
        int mask_row_by_pos, float scale) {                                                                  \
        attn_decode_gqa<D, G, KV>(q, k_cache, v_cache, part_o, part_ml, n_gqa, kv_dim, pos_ptr, pos0, chunk,  \
                                  window, QpMask{mask, mask_stride, mask_row_by_pos}, scale);                \
    }
#define QP_ATTN_HEADS(D, G) QP_ATTN_ENTRY(D, G, , float) QP_ATTN_ENTRY(D, G, _f16kv, qb_u16)
#define QP_ATTN_INSTANCES(D) QP_ATTN_HEADS(D, 1) QP_ATTN_HEADS(D, 2) QP_ATTN_HEADS(D, 4) QP_ATTN_HEADS(D, 8)

QP_ATTN_INSTANCES(32)
QP_ATTN_INSTANCES(64)
QP_ATTN_INSTANCES(96)
QP_ATTN_INSTANCES(128)
