// Causal grouped-query attention over the KV cache, for decode (one query row) and prefill.
//
// Shared conventions
//   q / out: [n_q, n_head * D] float32; K and V caches of one layer: [n_ctx, n_head_kv * D] float32.
//   Query head h reads KV head h / n_gqa. Query row i sits at position pos0 + i (prefill) or at
//   *pos_ptr (decode, read on the device so the step can be captured in a CUDA graph).
//   Key j is visible to a query at position p when j <= p and, with a sliding window W > 0, p - j < W.
//   mask (optional, float, 0 or -inf, added to the score): when given, causality and the window
//   come from it alone and every cached key up to the forward's last position is scored. The
//   mask row of a query is its position (mask_row_by_pos = 1: the device-resident [n_ctx, n_ctx]
//   mask) or its row index in the batch (mask_row_by_pos = 0: a mask uploaded for this forward).
//
// Decode (flash-decoding): attn_decode_d<D> grid (n_head, n_split), 128 threads. Split s scores keys
//   [s*chunk, (s+1)*chunk) and writes an unnormalized partial (max, sum, sum p*V); splits past the
//   position write an empty partial, so the grid depends on n_ctx only. attn_combine merges them.
// Prefill: attn_prefill_d<D> grid (ceil(n_q / 8), n_head), 8 warps, one query per warp; K/V tiles of
//   32 keys in shared memory, lane = key for scores, lane = dims for the output, online softmax.
#include "common.cuh"

#define QP_DECODE_THREADS 128
#define QP_PREFILL_WARPS 8
#define QP_KEY_TILE 32

struct QpMask {
    const float* ptr;
    int stride;
    int row_by_pos;
    __device__ __forceinline__ float at(int row_index, int pos, int key) const {
        const long row = row_by_pos ? pos : row_index;
        return ptr[row * (long)stride + key];
    }
};

static __device__ __forceinline__ bool qp_visible(int key, int pos, int window) {
    return key <= pos && (window <= 0 || pos - key < window);
}

template <int D>
__device__ void attn_decode(const float* __restrict__ q, const float* __restrict__ k_cache,
                            const float* __restrict__ v_cache, float* __restrict__ part_o,
                            float* __restrict__ part_ml, int n_gqa, int kv_dim, const int* pos_ptr,
                            int pos0, int chunk, int window, QpMask mask, float scale) {
    extern __shared__ float s_scores[];  // chunk floats
    __shared__ float s_red[QP_WARP];
    constexpr int NT = QP_DECODE_THREADS;
    constexpr int PER_LANE = D / QP_WARP;
    const int h = blockIdx.x, split = blockIdx.y, n_split = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int pos = qp_position(pos_ptr, pos0, 0);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int start = max(lo, split * chunk), end = min(pos + 1, (split + 1) * chunk);
    const long part = (long)h * n_split + split;
    const float* kh = k_cache + (h / n_gqa) * D;
    const float* vh = v_cache + (h / n_gqa) * D;

    float qr[PER_LANE];
#pragma unroll
    for (int c = 0; c < PER_LANE; ++c) qr[c] = q[h * D + lane + QP_WARP * c] * scale;

    float m_local = QP_NEG_INF;
    for (int j = start + warp; j < end; j += NT / QP_WARP) {
        const float* kr = kh + (long)j * kv_dim;
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < PER_LANE; ++c) dot += qr[c] * kr[lane + QP_WARP * c];
        dot = qp_warp_sum(dot);
        if (mask.ptr != nullptr) dot += mask.at(0, pos, j);
        if (lane == 0) s_scores[j - start] = dot;
        m_local = fmaxf(m_local, dot);
    }
    const float m = qp_block_max(m_local, s_red);  // also orders the score writes before the reads
    float l_local = 0.0f;
    for (int j = start + threadIdx.x; j < end; j += NT) {
        const float p = m == QP_NEG_INF ? 0.0f : __expf(s_scores[j - start] - m);
        s_scores[j - start] = p;
        l_local += p;
    }
    const float l = qp_block_sum(l_local, s_red);

    // Output: G groups of threads split the keys, each thread owns DPT dims of its group.
    // Threads past G * STRIDE (when NT % D != 0) sit this stage out.
    constexpr int G = D <= NT ? NT / D : 1;
    constexpr int STRIDE = D <= NT ? D : NT;
    constexpr int DPT = (D + STRIDE - 1) / STRIDE;
    const int g = threadIdx.x / STRIDE, d0 = threadIdx.x % STRIDE;
    float acc[DPT];
#pragma unroll
    for (int c = 0; c < DPT; ++c) acc[c] = 0.0f;
    if (g < G) {
        for (int j = start + g; j < end; j += G) {
            const float p = s_scores[j - start];
            const float* vr = vh + (long)j * kv_dim;
#pragma unroll
            for (int c = 0; c < DPT; ++c)
                if (d0 + c * STRIDE < D) acc[c] += p * vr[d0 + c * STRIDE];
        }
    }
    __shared__ float s_acc[G > 1 ? NT : 1];
    float* po = part_o + part * D;
    if (G > 1) {
        s_acc[threadIdx.x] = acc[0];
        __syncthreads();
        if (g == 0) {
            float sum = acc[0];
            for (int gg = 1; gg < G; ++gg) sum += s_acc[gg * STRIDE + d0];
            po[d0] = sum;
        }
    } else if (g == 0) {
#pragma unroll
        for (int c = 0; c < DPT; ++c)
            if (d0 + c * STRIDE < D) po[d0 + c * STRIDE] = acc[c];
    }
    if (threadIdx.x == 0) {
        part_ml[2 * part] = m;
        part_ml[2 * part + 1] = l;
    }
}

// Merge the decode partials of each head: out[h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
// grid (n_head), any blockDim.x; n_split and D are runtime values here.
extern "C" __global__ void attn_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                        float* __restrict__ out, int n_split, int D) {
    const int h = blockIdx.x;
    const float* ml = part_ml + (long)h * n_split * 2;
    float M = QP_NEG_INF;
    for (int s = 0; s < n_split; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.0f;
    for (int s = 0; s < n_split; ++s)
        if (ml[2 * s] != QP_NEG_INF) L += __expf(ml[2 * s] - M) * ml[2 * s + 1];
    const float inv_l = 1.0f / L;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; ++s)
            if (ml[2 * s] != QP_NEG_INF) acc += __expf(ml[2 * s] - M) * part_o[((long)h * n_split + s) * D + d];
        out[(long)h * D + d] = acc * inv_l;
    }
}

template <int D>
__device__ void attn_prefill(const float* __restrict__ q, const float* __restrict__ k_cache,
                             const float* __restrict__ v_cache, float* __restrict__ out, int n_q,
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
            s_k[j][d] = in ? k_cache[src] : 0.0f;
            s_v[j][d] = in ? v_cache[src] : 0.0f;
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

#define QP_ATTN_INSTANCES(D)                                                                              \
    extern "C" __global__ void attn_decode_d##D(                                                          \
        const float* q, const float* k_cache, const float* v_cache, float* part_o, float* part_ml,        \
        int n_gqa, int kv_dim, const int* pos_ptr, int pos0, int chunk, int window, const float* mask,    \
        int mask_stride, int mask_row_by_pos, float scale) {                                              \
        attn_decode<D>(q, k_cache, v_cache, part_o, part_ml, n_gqa, kv_dim, pos_ptr, pos0, chunk, window, \
                       QpMask{mask, mask_stride, mask_row_by_pos}, scale);                                \
    }                                                                                                     \
    extern "C" __global__ void attn_prefill_d##D(                                                         \
        const float* q, const float* k_cache, const float* v_cache, float* out, int n_q, int n_head,      \
        int n_gqa, int kv_dim, int pos0, int window, const float* mask, int mask_stride,                  \
        int mask_row_by_pos, float scale) {                                                               \
        attn_prefill<D>(q, k_cache, v_cache, out, n_q, n_head, n_gqa, kv_dim, pos0, window,               \
                        QpMask{mask, mask_stride, mask_row_by_pos}, scale);                               \
    }

QP_ATTN_INSTANCES(32)
QP_ATTN_INSTANCES(64)
QP_ATTN_INSTANCES(96)
QP_ATTN_INSTANCES(128)
