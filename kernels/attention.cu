// Causal grouped-query attention over the KV cache for prefill (conventions: attention_common.cuh;
// decode attention is attention_decode.cu).
//
// attn_prefill_d<D>[_f16kv]: grid (ceil(n_q / 8), n_head), 8 warps, one query per warp; K/V tiles of
// 32 keys in shared memory, lane = key for scores, lane = dims for the output, online softmax.
#include "attention_common.cuh"

#define QP_PREFILL_WARPS 8
#define QP_KEY_TILE 32

template <int D, typename KvT>
__device__ void attn_prefill(const float* __restrict__ q, const KvT* __restrict__ k_cache,
                             const KvT* __restrict__ v_cache, float* __restrict__ out, int n_q,
                             int n_head, int n_gqa, int kv_dim, int pos0, int window, QpMask mask,
                             float scale) {
    constexpr int W = QP_PREFILL_WARPS, T = QP_KEY_TILE, PER_LANE = D / QP_WARP;
    __shared__ float s_k[T][D + 1];  // +1: lane j reads row j column d without bank conflicts
    __shared__ float s_v[T][D];
    __shared__ float s_q[W][D];
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int h = blockIdx.y, kvh = h / n_gqa;
    const int qi = blockIdx.x * W + warp;
    const bool active = qi < n_q;
    const int pos = pos0 + qi;
    const int first_q = blockIdx.x * W, last_q = min(n_q, first_q + W) - 1;
    // Last key scored: the CTA's last query without a mask; with one, every key of this forward,
    // so that causality really comes from the mask.
    const int key_hi = mask.ptr == nullptr ? pos0 + last_q : pos0 + n_q - 1;
    int key_lo = 0;
    if (mask.ptr == nullptr && window > 0) key_lo = max(0, pos0 + first_q - window + 1);
    key_lo -= key_lo % T;

    if (active) {
        for (int d = lane; d < D; d += QP_WARP) s_q[warp][d] = q[((long)qi * n_head + h) * D + d] * scale;
    }
    float m = QP_NEG_INF, l = 0.0f, acc[PER_LANE];
#pragma unroll
    for (int c = 0; c < PER_LANE; ++c) acc[c] = 0.0f;

    for (int t0 = key_lo; t0 <= key_hi; t0 += T) {
        __syncthreads();  // previous tile fully consumed (and s_q written on the first pass)
        for (int idx = threadIdx.x; idx < T * D; idx += W * QP_WARP) {
            const int j = idx / D, d = idx % D, key = t0 + j;
            const long src = (long)key * kv_dim + kvh * D + d;
            const bool in = key <= key_hi;
            s_k[j][d] = in ? qp_kv1(k_cache, src) : 0.0f;
            s_v[j][d] = in ? qp_kv1(v_cache, src) : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int key = t0 + lane;
        float s = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) s += s_q[warp][d] * s_k[lane][d];
        bool ok;
        if (mask.ptr != nullptr) {
            ok = key <= key_hi;
            if (ok) s += mask.at(qi, pos, key);
        } else {
            ok = qp_visible(key, pos, window);
        }
        if (!ok) s = QP_NEG_INF;
        const float m_new = fmaxf(m, qp_warp_max(s));
        if (m_new == QP_NEG_INF) continue;  // nothing visible yet for this query
        const float corr = __expf(m - m_new);  // m = -inf on the first visible tile: corr = 0
        const float p = s == QP_NEG_INF ? 0.0f : __expf(s - m_new);
        l = l * corr + qp_warp_sum(p);
#pragma unroll
        for (int c = 0; c < PER_LANE; ++c) acc[c] *= corr;
        for (int j = 0; j < T; ++j) {
            const float pj = __shfl_sync(QP_FULL_MASK, p, j);
#pragma unroll
            for (int c = 0; c < PER_LANE; ++c) acc[c] += pj * s_v[j][lane + QP_WARP * c];
        }
        m = m_new;
    }
    if (active) {
        const float inv_l = 1.0f / l;
        float* o = out + ((long)qi * n_head + h) * D;
#pragma unroll
        for (int c = 0; c < PER_LANE; ++c) o[lane + QP_WARP * c] = acc[c] * inv_l;
    }
}

#define QP_ATTN_PREFILL_INSTANCE(NAME, D, KvT)                                                                \
    extern "C" __global__ void NAME(const float* q, const KvT* k_cache, const KvT* v_cache, float* out, int n_q,  \
                                    int n_head, int n_gqa, int kv_dim, int pos0, int window, const float* mask,  \
                                    int mask_stride, int mask_row_by_pos, float scale) {                         \
        attn_prefill<D, KvT>(q, k_cache, v_cache, out, n_q, n_head, n_gqa, kv_dim, pos0, window,                 \
                             QpMask{mask, mask_stride, mask_row_by_pos}, scale);                                 \
    }
#define QP_ATTN_INSTANCES(D)                              \
    QP_ATTN_PREFILL_INSTANCE(attn_prefill_d##D, D, float) \
    QP_ATTN_PREFILL_INSTANCE(attn_prefill_d##D##_f16kv, D, qb_u16)

QP_ATTN_INSTANCES(32)
QP_ATTN_INSTANCES(64)
QP_ATTN_INSTANCES(96)
QP_ATTN_INSTANCES(128)
