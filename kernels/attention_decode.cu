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
// over the `used` splits, the weights per head by one warp each into s_w, then every thread a value
// of the group at a time. The partials are read through L2 (__ldcg): other CTAs wrote them.
template <int D>
static __device__ __forceinline__ void attn_merge_group(const float* part_o, const float* part_ml, float* out,
                                                        qb_u8* out_q, int kvh, int n_gqa, int used, int stride,
                                                        int n_head) {
    __shared__ float s_w[QP_MAX_GQA][QP_MAX_DECODE_SPLITS];
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    for (int g = warp; g < n_gqa; g += QP_DECODE_THREADS / QP_WARP) {
        const float* ml = part_ml + (long)(kvh * n_gqa + g) * stride * 2;
        float M = QP_NEG_INF;
        for (int s = lane; s < used; s += QP_WARP) M = fmaxf(M, __ldcg(ml + 2 * s));
        M = qp_warp_max(M);
        float L = 0.0f;
        for (int s = lane; s < used; s += QP_WARP) {
            const float m = __ldcg(ml + 2 * s);
            const float w = m == QP_NEG_INF ? 0.0f : __expf(m - M);
            s_w[g][s] = w;
            L += w * __ldcg(ml + 2 * s + 1);
        }
        const float inv_l = 1.0f / qp_warp_sum(L);
        for (int s = lane; s < used; s += QP_WARP) s_w[g][s] *= inv_l;  // this lane's own entries
    }
    __syncthreads();
    // n_gqa * D values, QP_DECODE_THREADS at a time; D is a multiple of 32, so each warp's values lie in one head
    for (int i = threadIdx.x; i < n_gqa * D; i += QP_DECODE_THREADS) {
        const int g = i / D, d = i % D, h = kvh * n_gqa + g;
        const float* po = part_o + (long)h * stride * D + d;
        float o = 0.0f;
#pragma unroll 8
        for (int s = 0; s < used; ++s) o = fmaf(s_w[g][s], __ldcg(po + (long)s * D), o);
        qp_decode_out(o, out, out_q, h, d, D, n_head);
    }
}

template <int D, typename KvT>
__device__ void attn_decode_gqa(const float* __restrict__ q, const KvT* __restrict__ k_cache,
                                const KvT* __restrict__ v_cache, float* __restrict__ part_o,
                                float* __restrict__ part_ml, int n_gqa, int kv_dim, const int* pos_ptr,
                                int pos0, int chunk, int window, QpMask mask, float scale, unsigned* done,
                                float* __restrict__ out, qb_u8* out_q, int n_head) {
    extern __shared__ float s_scores[];  // [n_gqa][chunk]
    constexpr int NT = QP_DECODE_THREADS, NW = NT / QP_WARP, KW = QP_DECODE_KEYS_PER_WARP;
    constexpr int LANES = D / 4;  // lanes holding a key row, 4 dims each
    constexpr int G = NT / D > 0 ? NT / D : 1;  // key groups of the P.V stage
    constexpr int VA = QP_DECODE_V_AHEAD;
    static_assert(D % 32 == 0 && LANES <= QP_WARP && D <= NT, "head size");
    static_assert(KW * QP_MAX_GQA == QP_WARP, "the scores' reduce leaves one dot per lane");
    __shared__ float s_acc[G > 1 ? QP_MAX_GQA * NT : 1];
    __shared__ float s_l[QP_MAX_GQA];
    __shared__ int s_last;
    const int kvh = blockIdx.x, split = blockIdx.y, stride = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    // the position is the step's (written before the decode graph or the eager step began), so the
    // prologue may read it before qp_grid_wait
    const int pos = qp_position(pos_ptr, pos0, 0);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int n_live = pos - lo + 1;
    // QP_DECODE_MIN_KEYS or more keys a split, and never more than chunk (its scores' room)
    const int used = min(stride, max((n_live + QP_DECODE_MIN_KEYS - 1) / QP_DECODE_MIN_KEYS, (n_live + chunk - 1) / chunk));
#ifdef QP_DECODE_WAIT_BEFORE_EXIT
    if (split >= used) qp_grid_wait();
#endif
    if (split >= used || QP_DECODE_EXPERIMENT == 1) return;
    const int per = (n_live + used - 1) / used;
    const int start = lo + split * per, end = min(pos + 1, start + per);
    const int n = max(0, end - start);
    const long kv_off = (long)kvh * D;
    const int d = threadIdx.x % D, kg = threadIdx.x / D;
    {  // rows past what the first pass loads itself, asked of L2 at once
        constexpr int LINES = (D * (int)sizeof(KvT) + 127) / 128;
        const int from = start + min(KW * NW, G * VA);
        for (int i = threadIdx.x; i < (end - from) * LINES; i += NT) {
            const long at = (long)(from + i / LINES) * kv_dim + kv_off + (i % LINES) * (128 / (int)sizeof(KvT));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k_cache + at));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v_cache + at));
        }
    }
    qp_grid_wait();  // q and this position's K and V row come from the QKV kernel

    float v_ahead[VA];
#pragma unroll
    for (int i = 0; i < VA; ++i) {
        const int j = kg + G * i;
        v_ahead[i] = (kg < G && j < n) ? qp_kv1(v_cache, (long)(start + j) * kv_dim + kv_off + d) : 0.0f;
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
            kr[k] = (lane < LANES && j0 + k < end) ? qp_kv4(k_cache, (long)(j0 + k) * kv_dim + kv_off + 4 * lane)
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
#pragma unroll 4
        for (int j = kg + G * VA; j < n; j += G) {
            const float v = qp_kv1(v_cache, (long)(start + j) * kv_dim + kv_off + d);
#pragma unroll
            for (int g = 0; g < QP_MAX_GQA; ++g)
                if (g < n_gqa) acc[g] = fmaf(s_scores[g * chunk + j], v, acc[g]);
        }
    }
    qp_grid_release();  // only the outputs' stores and the merge are left
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
    attn_merge_group<D>(part_o, part_ml, out, out_q, kvh, n_gqa, used, stride, n_head);
}

#define QP_ATTN_DECODE_INSTANCE(NAME, D, KvT)                                                                 \
    extern "C" __global__ void NAME(const float* q, const KvT* k_cache, const KvT* v_cache, float* part_o,      \
                                    float* part_ml, int n_gqa, int kv_dim, const int* pos_ptr, int pos0,       \
                                    int chunk, int window, const float* mask, int mask_stride,                 \
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
