// Decode attention (flash-decoding) in one launch: one query row against the KV cache
// (conventions: attention_common.cuh).
//
// attn_decode_d<D>[_f16kv]: grid (n_head_kv, n_split), 128 threads, dynamic shared memory
// n_gqa * max(chunk, 3 n_split) floats (ops.py). The grid depends on n_ctx only (ops.py decode_splits),
// so the step can be captured; at run time the live keys [lo, pos] go to the first `used` splits of
// each KV head, QP_DECODE_MIN_KEYS or more each (the other CTAs return at once), and chunk bounds a split.
// Each CTA reads its KV head's rows once for all n_gqa query heads of the group.
//   1. Scores: a warp takes 4 keys at a time, lane l holding dims 4l..4l+3 of each; the 4 keys x 8
//      heads = 32 partial dots are summed over the warp by halving (31 shuffles, lane l left with
//      dot l), so a pass of the 4 warps scores 16 keys in one round trip to memory.
//   2. Softmax numerators per head, one warp each, in shared memory.
//   3. P.V: thread t owns dim t % D of each head, over keys t / D, t / D + 128 / D, ...; the first
//      QP_DECODE_V_AHEAD of them were loaded before the scores, so at short contexts no load waits here.
// One split in use: it writes the normalized output itself. Several: each writes an unnormalized
// partial (max, sum, sum p*V) per query head, and the last split of a KV head to finish (a per-head
// counter, which that split sets back to 0 for the next launch) merges the group's partials.
// With out_q the output is also written as a QVec (one 32-block per warp) for attn_output.
// The code is kept short on purpose: between two layers' attention the weights stream through L2,
// so each launch fetches its instructions again from DRAM, and straight-line code (loops over the
// query heads unrolled) cost more in those fetches than it saved (tests/gpu/bench_attention.py,
// H200, 2026-12-01: 149 KB of SASS added 13.9 us a layer at position 64; tests/test_kernels_ptxas.py
// bounds the size).
#include "attention_common.cuh"
#include "matvec_core.cuh"  // the QVec

#define QP_DECODE_THREADS 128   // ops.py DECODE_THREADS
#define QP_DECODE_KEYS_PER_WARP 4  // keys a warp scores at once: with QP_MAX_GQA heads, one dot per lane
// keys a split takes before another split is worth its partial and the merge: one pass of the warps
#ifndef QP_DECODE_MIN_KEYS
#define QP_DECODE_MIN_KEYS (QP_DECODE_THREADS / QP_WARP * QP_DECODE_KEYS_PER_WARP)  // ops.py DECODE_MIN_KEYS
#endif
#define QP_DECODE_V_AHEAD 16  // V values a thread loads before the scores
#define QP_DECODE_MERGE_AHEAD 8  // partials per 4 dims the merge asks for at once
#define QP_MAX_DECODE_SPLITS 256  // ops.py MAX_DECODE_SPLITS
// Experiments for tests/gpu/bench_attention.py --variant (0 in every shipped kernel): the kernel stops
// early, its output unwritten, to time what comes before: 1 after the position read, 2 after the
// scores, 3 after the partials' stores (no count, no merge), 4 before the merge.
#ifndef QP_DECODE_EXPERIMENT
#define QP_DECODE_EXPERIMENT 0
#endif

// 32 partial sums per lane summed over the warp, lane l left holding sum l: each halving step keeps the
// half of the values its lane bit selects and adds the partner lane's copy of that half. The choice is
// a bit mask, not a ?: on array elements, which the compiler turns into an address (local memory).
static __device__ __forceinline__ float qp_pick(float a, float b, unsigned take_b) {
    return __uint_as_float((__float_as_uint(a) & ~take_b) | (__float_as_uint(b) & take_b));
}
template <int O>
static __device__ __forceinline__ void qp_reduce_scatter_step(float (&v)[32]) {
    const unsigned upper = (threadIdx.x & O) ? 0xFFFFFFFFu : 0u;
#pragma unroll
    for (int k = 0; k < O; ++k) {
        const float keep = qp_pick(v[k], v[k + O], upper), give = qp_pick(v[k + O], v[k], upper);
        v[k] = keep + __shfl_xor_sync(QP_FULL_MASK, give, O);
    }
}
static __device__ __forceinline__ float qp_warp_reduce_scatter32(float (&v)[32]) {
    qp_reduce_scatter_step<16>(v);
    qp_reduce_scatter_step<8>(v);
    qp_reduce_scatter_step<4>(v);
    qp_reduce_scatter_step<2>(v);
    qp_reduce_scatter_step<1>(v);
    return v[0];
}

// The group's n_gqa * D finished values (s_val, shared) into out, and into the QVec out_q when given;
// one copy of the quantizing code, called by whole warps (D is a multiple of 32).
#ifndef QP_DECODE_WRITE_UNROLL
#define QP_DECODE_WRITE_UNROLL 1  // 32-blocks a warp quantizes at once
#endif
template <int D>
static __device__ __forceinline__ void qp_decode_write(const float* s_val, float* out, qb_u8* out_q, int kvh,
                                                       int n_gqa, int n_head) {
    constexpr int UNROLL = QP_DECODE_WRITE_UNROLL;
#pragma unroll UNROLL
    for (int i = threadIdx.x; i < n_gqa * D; i += QP_DECODE_THREADS) {
        const float o = s_val[i];
        const long at = (long)kvh * n_gqa * D + i;  // query head kvh * n_gqa + i / D, dim i % D
        out[at] = o;
        if (out_q != nullptr) qp_quantize_block32<1>(o, o, out_q, n_head * D, 0, (int)(at / 32));
    }
}

// The last split's merge into s_val: value (g, d) = sum_s w_gs o_s, w_gs = e^(m_s - M) / sum_s e^(m_s - M) l_s
// (M the largest m_s). Thread t takes 4 dims of a head at a time (float4 over the partials' rows) and
// asks L2 for the first QP_DECODE_MERGE_AHEAD partials of its first 4 dims before the (max, sum) pairs land
// in s_ml, so at short contexts the merge is one round trip; the rest go QP_DECODE_MERGE_AHEAD at a time.
// __ldcg: other CTAs wrote the partials.
template <int D>
static __device__ __forceinline__ void attn_merge_group(const float* __restrict__ part_o,
                                                        const float* __restrict__ part_ml, float* s_ml, float* s_val,
                                                        int kvh, int n_gqa, int used, int stride) {
    constexpr int NT = QP_DECODE_THREADS, Q = D / 4, PRE = QP_DECODE_MERGE_AHEAD;
    const int n_quads = n_gqa * Q, lane = threadIdx.x % QP_WARP;
    const float4* group_o = reinterpret_cast<const float4*>(part_o + (long)kvh * n_gqa * stride * D);  // [g][s][q]
    float4 ahead[PRE];
#pragma unroll
    for (int s = 0; s < PRE; ++s) {
        const int i = threadIdx.x;
        ahead[s] = (i < n_quads && s < used) ? __ldcg(group_o + ((long)(i / Q) * stride + s) * Q + i % Q)
                                             : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float* s_w = s_ml + 2 * n_gqa * used;  // [g][s] the weights
#pragma unroll 1
    for (int i = threadIdx.x; i < n_gqa * used; i += NT) {  // [g][s] (max, sum)
        const long part = (long)(kvh * n_gqa + i / used) * stride + i % used;
        s_ml[2 * i] = __ldcg(part_ml + 2 * part);
        s_ml[2 * i + 1] = __ldcg(part_ml + 2 * part + 1);
    }
    __syncthreads();
#pragma unroll 1
    for (int g = threadIdx.x / QP_WARP; g < n_gqa; g += NT / QP_WARP) {  // a warp per head
        const float* ml = s_ml + 2 * g * used;
        float M = QP_NEG_INF;
#pragma unroll 1
        for (int s = lane; s < used; s += QP_WARP) M = fmaxf(M, ml[2 * s]);
        M = qp_warp_max(M);
        float L = 0.0f;
#pragma unroll 1
        for (int s = lane; s < used; s += QP_WARP) {
            const float w = ml[2 * s] == QP_NEG_INF ? 0.0f : __expf(ml[2 * s] - M);  // an empty split: 0
            s_w[g * used + s] = w;
            L = fmaf(w, ml[2 * s + 1], L);
        }
        const float inv_l = 1.0f / qp_warp_sum(L);
#pragma unroll 1
        for (int s = lane; s < used; s += QP_WARP) s_w[g * used + s] *= inv_l;  // this lane's own entries
    }
    __syncthreads();
#pragma unroll 1
    for (int i = threadIdx.x; i < n_quads; i += NT) {
        const float* w = s_w + (i / Q) * used;
        const float4* po = group_o + (long)(i / Q) * stride * Q + i % Q;
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const auto add = [&](float ws, float4 p) {
            o.x = fmaf(ws, p.x, o.x), o.y = fmaf(ws, p.y, o.y), o.z = fmaf(ws, p.z, o.z), o.w = fmaf(ws, p.w, o.w);
        };
        int s = 0;
        if (i == threadIdx.x) {  // the first 4 dims: their partials are here already
#pragma unroll
            for (int k = 0; k < PRE; ++k)
                if (k < used) add(w[k], ahead[k]);
            s = PRE;
        }
#pragma unroll 1
        for (; s < used; s += PRE) {
            float4 p[PRE];
#pragma unroll
            for (int k = 0; k < PRE; ++k) p[k] = s + k < used ? __ldcg(po + (long)(s + k) * Q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int k = 0; k < PRE; ++k)
                if (s + k < used) add(w[s + k], p[k]);
        }
        reinterpret_cast<float4*>(s_val)[i] = o;  // [g][d]: quad i is dims 4 (i % Q) .. of head i / Q
    }
    __syncthreads();
}

// A V value asked for at once: volatile, so the compiler keeps the load where it is written (ahead of
// the scores) instead of sinking it to its use after the barriers.
static __device__ __forceinline__ float qp_kv1_now(const float* p, long i) {
    float v;
    asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(p + i));
    return v;
}
static __device__ __forceinline__ float qp_kv1_now(const qb_u16* p, long i) {
    unsigned short h;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(h) : "l"(p + i));
    return qb_half_to_float(h);
}

template <int D, typename KvT>
__device__ void attn_decode_gqa(const float* __restrict__ q, const KvT* __restrict__ k_cache,
                                const KvT* __restrict__ v_cache, float* __restrict__ part_o,
                                float* __restrict__ part_ml, int n_gqa, int kv_dim, const int* pos_ptr,
                                int pos0, int chunk, int window, QpMask mask, float scale, unsigned* done,
                                float* __restrict__ out, qb_u8* out_q, int n_head) {
    extern __shared__ float s_dyn[];  // the scores [n_gqa][chunk]; then the merge's [n_gqa][used] (max, sum), weights
    constexpr int NT = QP_DECODE_THREADS, NW = NT / QP_WARP, KW = QP_DECODE_KEYS_PER_WARP;
    constexpr int LANES = D / 4;  // lanes holding a key row, 4 dims each
    constexpr int G = NT / D > 0 ? NT / D : 1;  // key groups of the P.V stage
    constexpr int VA = QP_DECODE_V_AHEAD, MIN_KEYS = QP_DECODE_MIN_KEYS;
    static_assert(D % 32 == 0 && LANES <= QP_WARP && D <= NT, "head size");
    static_assert(KW * QP_MAX_GQA == QP_WARP, "the scores' reduce leaves one dot per lane");
    __shared__ float s_pv[QP_MAX_GQA * NT];  // [g][kg][d] the P.V sums of each key group
    __shared__ float s_val[QP_MAX_GQA * D];  // [g][d] the CTA's values before they are written
    __shared__ float s_l[QP_MAX_GQA];
    __shared__ int s_last;
    const int kvh = blockIdx.x, split = blockIdx.y, stride = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int d = threadIdx.x % D, kg = threadIdx.x / D;
    const long kv_off = (long)kvh * D;
    // the position is the step's (written before the decode graph or the eager step began), so it may be
    // read before qp_grid_wait
    const int pos = qp_position(pos_ptr, pos0, 0);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int n_live = pos - lo + 1;
    // MIN_KEYS or more keys a split, and never more than chunk (its scores' room)
    const int used = min(stride, max((n_live + MIN_KEYS - 1) / MIN_KEYS, (n_live + chunk - 1) / chunk));
    if (split >= used || QP_DECODE_EXPERIMENT == 1) return;
    const int per = max(MIN_KEYS, (n_live + used - 1) / used);
    const int start = lo + split * per, end = min(pos + 1, start + per);
    const int n = max(0, end - start);
    {  // rows past what the first pass loads, asked of L2 at once
        constexpr int LINES = (D * (int)sizeof(KvT) + 127) / 128;
        const int from = start + min(KW * NW, G * VA);
#pragma unroll 1
        for (int i = threadIdx.x; i < (end - from) * LINES; i += NT) {
            const long at = (long)(from + i / LINES) * kv_dim + kv_off + (i % LINES) * (128 / (int)sizeof(KvT));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + at));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + at));
        }
    }
#ifndef QP_DECODE_NO_PDL  // an experiment: without the wait in its PTX the host launches it plainly
    qp_grid_wait();  // q and this position's K and V row come from the QKV kernel
#endif
    float v_ahead[VA];
#pragma unroll
    for (int i = 0; i < VA; ++i) {
        const int j = kg + G * i;
        v_ahead[i] = (kg < G && j < n) ? qp_kv1_now(v_cache, (long)(start + j) * kv_dim + kv_off + d) : 0.0f;
    }
    float4 qr[QP_MAX_GQA];  // 16-byte loads: the host passes q 16-byte aligned
#pragma unroll
    for (int g = 0; g < QP_MAX_GQA; ++g) {
        qr[g] = (g < n_gqa && lane < LANES) ? __ldg(reinterpret_cast<const float4*>(q + (long)(kvh * n_gqa + g) * D) + lane)
                                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        qr[g].x *= scale, qr[g].y *= scale, qr[g].z *= scale, qr[g].w *= scale;
    }

#pragma unroll 1
    for (int pass = start; pass < end; pass += KW * NW) {  // a bound the whole CTA shares: the shuffles stay convergent
        const int j0 = pass + KW * warp;
        float4 kr[KW];
#pragma unroll
        for (int k = 0; k < KW; ++k)
            kr[k] = (lane < LANES && j0 + k < end) ? qp_kv4(k_cache, (long)(j0 + k) * kv_dim + kv_off + 4 * lane)
                                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float dots[KW * QP_MAX_GQA];  // dot k * QP_MAX_GQA + g: key j0 + k, head g
#pragma unroll
        for (int k = 0; k < KW; ++k)
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                dots[k * QP_MAX_GQA + g] = qr[g].x * kr[k].x + qr[g].y * kr[k].y + qr[g].z * kr[k].z + qr[g].w * kr[k].w;
        const float s = qp_warp_reduce_scatter32(dots);
        const int key = j0 + lane / QP_MAX_GQA, g = lane % QP_MAX_GQA;
        if (g < n_gqa && key < end)
            s_dyn[g * chunk + (key - start)] = mask.ptr != nullptr ? s + mask.at(0, pos, key) : s;
    }
    __syncthreads();
    if (QP_DECODE_EXPERIMENT == 2) return;
#pragma unroll 1
    for (int g0 = 0; g0 < n_gqa; g0 += NW) {  // softmax numerators of head g, in place
        // a surplus warp runs the last head's reductions too (its values discarded) and stores nothing
        const bool mine = g0 + warp < n_gqa;
        const int g = min(g0 + warp, n_gqa - 1);
        float* sg = s_dyn + g * chunk;
        float m = QP_NEG_INF;
#pragma unroll 1
        for (int j = lane; j < n; j += QP_WARP) m = fmaxf(m, sg[j]);
        m = qp_warp_max(m);
        float l = 0.0f;
#pragma unroll 1
        for (int j = lane; j < n; j += QP_WARP) {
            const float p = m == QP_NEG_INF ? 0.0f : __expf(sg[j] - m);
            if (mine) sg[j] = p;
            l += p;
        }
        l = qp_warp_sum(l);
        if (lane == 0 && mine) {
            s_l[g] = l;
            if (used > 1) {
                const long part = (long)(kvh * n_gqa + g) * stride + split;
                part_ml[2 * part] = m;
                part_ml[2 * part + 1] = l;
            }
        }
    }
    __syncthreads();
    if (kg < G) {
#pragma unroll 1
        for (int g = 0; g < n_gqa; ++g) {  // head by head: one copy of the code (V past the first values: L1)
            const float* p = s_dyn + g * chunk;
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < VA; ++i) acc = kg + G * i < n ? fmaf(p[kg + G * i], v_ahead[i], acc) : acc;
#pragma unroll 4
            for (int j = kg + G * VA; j < n; j += G)
                acc = fmaf(p[j], qp_kv1(v_cache, (long)(start + j) * kv_dim + kv_off + d), acc);
            s_pv[g * NT + threadIdx.x] = acc;
        }
    }
#ifndef QP_DECODE_NO_PDL
    qp_grid_release();  // only the outputs' stores and the merge are left
#endif
    __syncthreads();
#pragma unroll 1
    for (int i = threadIdx.x; i < n_gqa * D; i += NT) {  // the key groups' sums: the split's values
        const int g = i / D;
        float o = 0.0f;
#pragma unroll
        for (int k2 = 0; k2 < G; ++k2) o += s_pv[g * NT + k2 * D + i % D];
        if (used == 1) {
            s_val[i] = o / s_l[g];  // the only split: its sums are the whole softmax
        } else {
            part_o[((long)(kvh * n_gqa + g) * stride + split) * D + i % D] = o;
        }
    }
    if (used > 1) {
        if (QP_DECODE_EXPERIMENT == 3) return;
        // every split's partials are visible device-wide before it counts itself (the fence); the last one
        // to count merges and sets the counter back for the next launch
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            s_last = atomicAdd(done + kvh, 1u) == (unsigned)(used - 1);
            if (s_last) done[kvh] = 0u;
        }
        __syncthreads();
        if (!s_last || QP_DECODE_EXPERIMENT == 4) return;
        __threadfence();
        attn_merge_group<D>(part_o, part_ml, s_dyn, s_val, kvh, n_gqa, used, stride);
    }
    __syncthreads();
    qp_decode_write<D>(s_val, out, out_q, kvh, n_gqa, n_head);
}

#define QP_ATTN_DECODE_INSTANCE(NAME, D, KvT)                                                                 \
    extern "C" __global__ void NAME(const float* q, const KvT* k_cache, const KvT* v_cache, float* part_o,      \
                                    float* part_ml, int n_gqa, int kv_dim, const int* pos_ptr,                 \
                                    int pos0, int chunk, int window, const float* mask, int mask_stride,       \
                                    int mask_row_by_pos, float scale, unsigned* done, float* out, qb_u8* out_q, \
                                    int n_head) {                                                               \
        attn_decode_gqa<D, KvT>(q, k_cache, v_cache, part_o, part_ml, n_gqa, kv_dim, pos_ptr, pos0, chunk,      \
                                window, QpMask{mask, mask_stride, mask_row_by_pos}, scale, done, out, out_q,    \
                                n_head);                                                                        \
    }
#define QP_ATTN_DECODE_INSTANCES(D)                       \
    QP_ATTN_DECODE_INSTANCE(attn_decode_d##D, D, float)   \
    QP_ATTN_DECODE_INSTANCE(attn_decode_d##D##_f16kv, D, qb_u16)

QP_ATTN_DECODE_INSTANCES(32)
QP_ATTN_DECODE_INSTANCES(64)
QP_ATTN_DECODE_INSTANCES(96)
QP_ATTN_DECODE_INSTANCES(128)
