// Decode attention (flash-decoding) in one launch: one query row against the KV cache
// (conventions: attention_common.cuh).
//
// attn_decode_d<D>[_f16kv]: grid (n_head_kv, n_split), 128 threads, dynamic shared memory n_gqa * chunk
// floats. The grid depends on n_ctx only (ops.py decode_splits), so the step can be captured; at run
// time the live keys [lo, pos] go to the first `used` splits of each KV head, QP_DECODE_MIN_KEYS or
// more each (the other CTAs return at once), and chunk >= ceil(n_ctx / n_split) bounds a split.
// Each CTA reads its KV head's rows once for all n_gqa query heads of the group.
//   1. Scores: a warp takes 4 keys at a time, lane l holding dims 4l..4l+3 of each; the 4 keys x 8
//      heads = 32 partial dots are summed over the warp by halving (31 shuffles, lane l left with
//      dot l), so a pass of the 4 warps scores 16 keys in one round trip to memory.
//   2. Softmax numerators per head, one warp each, in shared memory.
//   3. P.V: thread t owns dim t % D of every head, over keys t / D, t / D + 128 / D, ...; the first
//      QP_DECODE_V_AHEAD of them were loaded before the scores, so at short contexts no load waits here.
// One split in use: it writes the normalized output itself. Several: each writes an unnormalized
// partial (max, sum, sum p*V) per query head, and the last split of a KV head to finish (a per-head
// counter, which that split sets back to 0 for the next launch) merges the group's partials.
// With out_q the output is also written as a QVec (one 32-block per warp) for attn_output.
#include "attention_common.cuh"
#include "matvec_core.cuh"  // the QVec

#define QP_DECODE_THREADS 128   // ops.py DECODE_THREADS
#define QP_DECODE_KEYS_PER_WARP 4  // keys a warp scores at once: with QP_MAX_GQA heads, one dot per lane
// keys a split takes before another split is worth its partial and the merge: one pass of the warps
#ifndef QP_DECODE_MIN_KEYS
#define QP_DECODE_MIN_KEYS (QP_DECODE_THREADS / QP_WARP * QP_DECODE_KEYS_PER_WARP)  // ops.py DECODE_MIN_KEYS
#endif
#define QP_DECODE_V_AHEAD 16  // V values a thread loads before the scores
#define QP_DECODE_MERGE_AHEAD 8  // splits' partials a thread of the merge asks for at once
// 1: the first pass's K and V loads are issued before the position is known (at the keys a split takes
// without a window at short contexts), 0: after (an experiment)
#ifndef QP_DECODE_SPECULATE
#define QP_DECODE_SPECULATE 1
#endif
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

// Value d of query head h (warp-wide: a warp holds 32 consecutive values of one head) into out, and
// into the QVec out_q when given.
static __device__ __forceinline__ void qp_decode_out(float o, float* out, qb_u8* out_q, int h, int d, int D,
                                                     int n_head) {
    out[(long)h * D + d] = o;
    if (out_q != nullptr) qp_quantize_block32<1>(o, o, out_q, n_head * D, 0, (h * D + d) / 32);
}

// The last split's merge: out[h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s (M the largest m_s)
// over the `used` splits. Each thread takes values i = t, t + 128, .. of the group (D is a multiple of
// 32, so a warp's values lie in one head) and asks L2 for their first QP_DECODE_MERGE_AHEAD partials
// before the (max, sum) pairs land in shared memory (the spent scores' room, s_ml), so the merge is one
// round trip; a split past those is read in turn (long contexts). __ldcg: other CTAs wrote the partials.
template <int D>
static __device__ __forceinline__ void attn_merge_group(const float* __restrict__ part_o,
                                                        const float* __restrict__ part_ml, float* s_ml, float* out,
                                                        qb_u8* out_q, int kvh, int n_gqa, int used, int stride,
                                                        int n_head) {
    constexpr int NT = QP_DECODE_THREADS, OUTS = (QP_MAX_GQA * D + NT - 1) / NT, PRE = QP_DECODE_MERGE_AHEAD;
    const int n_vals = n_gqa * D;
    float po[OUTS][PRE];
#pragma unroll
    for (int r = 0; r < OUTS; ++r) {
        const int i = threadIdx.x + NT * r;
        const float* at = part_o + ((long)(kvh * n_gqa + i / D) * stride) * D + i % D;
#pragma unroll
        for (int s = 0; s < PRE; ++s) po[r][s] = (i < n_vals && s < used) ? __ldcg(at + (long)s * D) : 0.0f;
    }
    for (int i = threadIdx.x; i < n_gqa * used; i += NT) {  // [g][s] (max, sum)
        const long part = (long)(kvh * n_gqa + i / used) * stride + i % used;
        s_ml[2 * i] = __ldcg(part_ml + 2 * part);
        s_ml[2 * i + 1] = __ldcg(part_ml + 2 * part + 1);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < OUTS; ++r) {
        const int i = threadIdx.x + NT * r;
        if (i >= n_vals) continue;  // warp-uniform
        const int g = i / D, d = i % D, h = kvh * n_gqa + g;
        const float* ml = s_ml + 2 * g * used;
        float M = QP_NEG_INF;
        for (int s = 0; s < used; ++s) M = fmaxf(M, ml[2 * s]);
        float L = 0.0f, o = 0.0f;
#pragma unroll
        for (int s = 0; s < PRE; ++s) {
            if (s >= used || ml[2 * s] == QP_NEG_INF) continue;  // an empty split: weight 0
            const float w = __expf(ml[2 * s] - M);
            L = fmaf(w, ml[2 * s + 1], L);
            o = fmaf(w, po[r][s], o);
        }
        const float* at = part_o + ((long)h * stride) * D + d;
        for (int s = PRE; s < used; ++s) {
            if (ml[2 * s] == QP_NEG_INF) continue;
            const float w = __expf(ml[2 * s] - M);
            L = fmaf(w, ml[2 * s + 1], L);
            o = fmaf(w, __ldcg(at + (long)s * D), o);
        }
        qp_decode_out(o / L, out, out_q, h, d, D, n_head);
    }
}

// A K/V value asked for at once: volatile, so the compiler keeps the load where it is written (ahead of
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
                                float* __restrict__ part_ml, int n_gqa, int kv_dim, int n_ctx, const int* pos_ptr,
                                int pos0, int chunk, int window, QpMask mask, float scale, unsigned* done,
                                float* __restrict__ out, qb_u8* out_q, int n_head) {
    extern __shared__ float s_scores[];  // [n_gqa][chunk]; then the merge's [n_gqa][used][2]
    constexpr int NT = QP_DECODE_THREADS, NW = NT / QP_WARP, KW = QP_DECODE_KEYS_PER_WARP;
    constexpr int LANES = D / 4;  // lanes holding a key row, 4 dims each
    constexpr int G = NT / D > 0 ? NT / D : 1;  // key groups of the P.V stage
    constexpr int VA = QP_DECODE_V_AHEAD, MIN_KEYS = QP_DECODE_MIN_KEYS;
    static_assert(D % 32 == 0 && LANES <= QP_WARP && D <= NT, "head size");
    static_assert(KW * QP_MAX_GQA == QP_WARP, "the scores' reduce leaves one dot per lane");
    __shared__ float s_acc[G > 1 ? QP_MAX_GQA * NT : 1];
    __shared__ float s_l[QP_MAX_GQA];
    __shared__ int s_last;
    const int kvh = blockIdx.x, split = blockIdx.y, stride = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int d = threadIdx.x % D, kg = threadIdx.x / D;
    const long kv_off = (long)kvh * D;
    // the position is the step's (written before the decode graph or the eager step began), so it may be
    // read before qp_grid_wait
    const int pos = qp_position(pos_ptr, pos0, 0);
#ifndef QP_DECODE_NO_PDL  // an experiment: without the wait in its PTX the host launches it plainly
    qp_grid_wait();  // q and this position's K and V row come from the QKV kernel
#endif
    // The first pass's K rows and the V values ahead, for the split's keys as they are without a window
    // while the context is short (MIN_KEYS from MIN_KEYS * split), asked for before the position lands;
    // loaded again below where the split's keys turn out otherwise.
    int from = MIN_KEYS * split;
    float4 kr0[KW];
    float v_ahead[VA];
    const auto load_first = [&](int at) {
#pragma unroll
        for (int k = 0; k < KW; ++k) {
            const long row = min(at + KW * warp + k, n_ctx - 1);
            kr0[k] = lane < LANES ? qp_kv4(k_cache, row * kv_dim + kv_off + 4 * lane) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int i = 0; i < VA; ++i) {
            const long row = min(at + kg + G * i, n_ctx - 1);
            v_ahead[i] = kg < G ? qp_kv1_now(v_cache, row * kv_dim + kv_off + d) : 0.0f;
        }
    };
    if (QP_DECODE_SPECULATE) load_first(from);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int n_live = pos - lo + 1;
    // MIN_KEYS or more keys a split, and never more than chunk (its scores' room)
    const int used = min(stride, max((n_live + MIN_KEYS - 1) / MIN_KEYS, (n_live + chunk - 1) / chunk));
    if (split >= used || QP_DECODE_EXPERIMENT == 1) return;
    const int per = max(MIN_KEYS, (n_live + used - 1) / used);
    const int start = lo + split * per, end = min(pos + 1, start + per);
    const int n = max(0, end - start);
    if (!QP_DECODE_SPECULATE || start != from) load_first(start);  // CTA-uniform
    from = start + min(KW * NW, G * VA);
    {  // rows past what the first pass loads, asked of L2 at once
        constexpr int LINES = (D * (int)sizeof(KvT) + 127) / 128;
        for (int i = threadIdx.x; i < (end - from) * LINES; i += NT) {
            const long at = (long)(from + i / LINES) * kv_dim + kv_off + (i % LINES) * (128 / (int)sizeof(KvT));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + at));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + at));
        }
    }
    float qr[QP_MAX_GQA][4];
#pragma unroll
    for (int g = 0; g < QP_MAX_GQA; ++g)
#pragma unroll
        for (int c = 0; c < 4; ++c)
            qr[g][c] = (g < n_gqa && lane < LANES) ? q[(long)(kvh * n_gqa + g) * D + 4 * lane + c] * scale : 0.0f;

    for (int j0 = start + KW * warp; j0 < end; j0 += KW * NW) {
        float4 kr[KW];
#pragma unroll
        for (int k = 0; k < KW; ++k)
            kr[k] = j0 < start + KW * NW ? kr0[k]
                  : (lane < LANES && j0 + k < end) ? qp_kv4(k_cache, (long)(j0 + k) * kv_dim + kv_off + 4 * lane)
                                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float dots[KW * QP_MAX_GQA];  // dot k * QP_MAX_GQA + g: key j0 + k, head g
#pragma unroll
        for (int k = 0; k < KW; ++k)
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                dots[k * QP_MAX_GQA + g] =
                    qr[g][0] * kr[k].x + qr[g][1] * kr[k].y + qr[g][2] * kr[k].z + qr[g][3] * kr[k].w;
        const float s = qp_warp_reduce_scatter32(dots);
        const int key = j0 + lane / QP_MAX_GQA, g = lane % QP_MAX_GQA;
        if (g < n_gqa && key < end)
            s_scores[g * chunk + (key - start)] = mask.ptr != nullptr ? s + mask.at(0, pos, key) : s;
    }
    __syncthreads();
    if (QP_DECODE_EXPERIMENT == 2) return;
    for (int g = warp; g < n_gqa; g += NW) {  // softmax numerators of head g, in place
        float* sg = s_scores + g * chunk;
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
            s_l[g] = l;
            if (used > 1) {
                const long part = (long)(kvh * n_gqa + g) * stride + split;
                part_ml[2 * part] = m;
                part_ml[2 * part + 1] = l;
            }
        }
    }
    __syncthreads();
    float acc[QP_MAX_GQA];
#pragma unroll
    for (int g = 0; g < QP_MAX_GQA; ++g) acc[g] = 0.0f;
    if (kg < G) {
#pragma unroll
        for (int i = 0; i < VA; ++i)
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                if (g < n_gqa && kg + G * i < n) acc[g] = fmaf(s_scores[g * chunk + kg + G * i], v_ahead[i], acc[g]);
#pragma unroll 8
        for (int j = kg + G * VA; j < n; j += G) {
            const float v = qp_kv1(v_cache, (long)(start + j) * kv_dim + kv_off + d);
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                if (g < n_gqa) acc[g] = fmaf(s_scores[g * chunk + j], v, acc[g]);
        }
    }
#ifndef QP_DECODE_NO_PDL
    qp_grid_release();  // only the outputs' stores and the merge are left
#endif
    if (G > 1) {
#pragma unroll
        for (int g = 0; g < QP_MAX_GQA; ++g)
            if (g < n_gqa) s_acc[g * NT + threadIdx.x] = acc[g];
        __syncthreads();
        if (kg == 0)
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                for (int k2 = 1; k2 < G; ++k2) acc[g] += g < n_gqa ? s_acc[g * NT + k2 * D + d] : 0.0f;
    }
    if (used == 1) {  // the only split: its sums are the whole softmax
        if (kg == 0)
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)  // to QP_MAX_GQA: acc stays in registers
                if (g < n_gqa) qp_decode_out(acc[g] / s_l[g], out, out_q, kvh * n_gqa + g, d, D, n_head);
        return;
    }
    if (kg == 0)
#pragma unroll
        for (int g = 0; g < QP_MAX_GQA; ++g)
            if (g < n_gqa) part_o[((long)(kvh * n_gqa + g) * stride + split) * D + d] = acc[g];
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
    attn_merge_group<D>(part_o, part_ml, s_scores, out, out_q, kvh, n_gqa, used, stride, n_head);
}

#define QP_ATTN_DECODE_INSTANCE(NAME, D, KvT)                                                                 \
    extern "C" __global__ void NAME(const float* q, const KvT* k_cache, const KvT* v_cache, float* part_o,      \
                                    float* part_ml, int n_gqa, int kv_dim, int n_ctx, const int* pos_ptr,      \
                                    int pos0, int chunk, int window, const float* mask, int mask_stride,       \
                                    int mask_row_by_pos, float scale, unsigned* done, float* out, qb_u8* out_q, \
                                    int n_head) {                                                               \
        attn_decode_gqa<D, KvT>(q, k_cache, v_cache, part_o, part_ml, n_gqa, kv_dim, n_ctx, pos_ptr, pos0, chunk, \
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
