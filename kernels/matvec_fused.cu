// Fused decode projections (one column): the layer's ops that read the normed residual stream,
// whose QVec (matvec_qvec.cuh) the previous op's epilogue wrote as x * norm_w with its partials.
//
// matvec_qkv: (RMSNorm) -> Q, K and V in one launch -> RoPE on Q and K -> K and V into the cache.
//   Q, K and V may have different quant types (Q4_K_M keeps V in Q6_K on some layers), so each is
//   a segment with its own descriptor and the type is dispatched per warp at run time. The pairs
//   of rows a warp computes are RoPE's adjacent pairs (normal mode), so lane 0 rotates them in
//   registers. Grid: ceil((rows_q + rows_k + rows_v) / 32) CTAs of 512 threads. Kernels with the
//   types fixed at compile time (one for all three, or Q/K and V pairs) need fewer registers than
//   the generic matvec_qkv and run two CTAs per SM; the host picks the most specific one.
// matvec_gate_up_<type>: (RMSNorm) -> gate and up row i in one warp -> act[i] = silu(g) * u, twice
//   per warp (rows i and i + 16 of the CTA's 32), and act quantized into a QVec for ffn_down.
//   Grid: ceil(n_ff / 32) CTAs of 512 threads.
// RoPE's cos/sin come from rope.cu's table (made once per runtime with rope_f32's formula), so the epilogue
// rotates by exactly rope_f32's angle without double sin/cos of its own.
#include "matvec_core.cuh"

#include "qkv_args.cuh"

// Every quantized type, dispatched at run time (the value is warp-uniform).
#define QP_FOR_QUANT_TYPE(TYPE, CALL)              \
    switch (TYPE) {                                \
        case QB_Q4_0: CALL(QB_Q4_0); break;        \
        case QB_Q4_1: CALL(QB_Q4_1); break;        \
        case QB_Q5_0: CALL(QB_Q5_0); break;        \
        case QB_Q5_1: CALL(QB_Q5_1); break;        \
        case QB_Q8_0: CALL(QB_Q8_0); break;        \
        case QB_Q2_K: CALL(QB_Q2_K); break;        \
        case QB_Q3_K: CALL(QB_Q3_K); break;        \
        case QB_Q4_K: CALL(QB_Q4_K); break;        \
        case QB_Q5_K: CALL(QB_Q5_K); break;        \
        case QB_Q6_K: CALL(QB_Q6_K); break;        \
        default: __trap();                         \
    }

static __device__ __forceinline__ void qp_store_kv(void* cache, long idx, float v, int f16) {
    if (f16) {
        static_cast<qb_u16*>(cache)[idx] = qb_float_to_half(v);
    } else {
        static_cast<float*>(cache)[idx] = v;
    }
}

// The QKV kernel body. TQK / TV: the quant types of Q and K / of V, fixed at compile time; 0 for
// the generic kernel, which dispatches every segment's type at run time (any mix, more registers).
template <int TQK, int TV>
static __device__ __forceinline__ void qkv(const QkvArgs& a) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int pair = blockIdx.x * QP_MV_WARPS + warp, s = 0;
    while (s < 2 && pair >= a.seg[s].rows / 2) pair -= a.seg[s].rows / 2, ++s;
    const QkvSegment seg = a.seg[s];
    const bool live = pair < seg.rows / 2;  // the last CTA's surplus warps compute a valid pair, store nothing
    const int row = 2 * min(pair, seg.rows / 2 - 1);
    // an L2 hint before the type is known: the rows' GGUF offsets, inside the tensor in every layout
    qp_rows_warm(seg.w + (long long)row * seg.row_bytes, seg.w + (long long)(row + 1) * seg.row_bytes, seg.row_bytes);
    qp_grid_wait();  // the QVec, the cache rows attention reads and q belong to the kernels before
    float acc[2][1] = {{0.0f}, {0.0f}};
    QpRing ring = qp_ring_make();
    // the pair's rows, the second derived from the first (Q4_K+Q6_K's kernel spilled with both made alike)
#define QP_QKV_ROWS(T) qb_row<T>(seg.w, row, a.cols / Block<T>::QK, seg.rows), \
    qb_row_next<T>(qb_row<T>(seg.w, row, a.cols / Block<T>::QK, seg.rows), a.cols / Block<T>::QK)
    if constexpr (TQK == 0) {
#define QP_QKV_DOT(T) qp_rows_dot2<T, 1>(ring, QP_QKV_ROWS(T), a.cols, a.xq, acc)
        QP_FOR_QUANT_TYPE(seg.type, QP_QKV_DOT)
#undef QP_QKV_DOT
    } else if (s < 2) {
        qp_rows_dot2<TQK, 1>(ring, QP_QKV_ROWS(TQK), a.cols, a.xq, acc);
    } else {
        qp_rows_dot2<TV, 1>(ring, QP_QKV_ROWS(TV), a.cols, a.xq, acc);
    }
#undef QP_QKV_ROWS
    qp_grid_release();  // the weights are read: the epilogue is left
    qp_warp_reduce2<1>(acc);
    const float scale = qp_rms_scale<1>(a.xq, a.cols, 0, 1, a.eps);
    if (lane != 0 || !live) return;
    float y0 = acc[0][0] * scale, y1 = acc[1][0] * scale;
    const int pos = __ldg(a.pos);
    if (pos < 0 || pos >= a.n_ctx) return;  // the host refuses such positions; never read or write out of bounds
    const int dim = row % a.head_dim;
    if (s < 2 && dim < a.rope_dim) {
        const float2 cs = __ldg(reinterpret_cast<const float2*>(a.rope_cs) + (long)pos * (a.rope_dim / 2) + dim / 2);
        const float r0 = y0 * cs.x - y1 * cs.y, r1 = y0 * cs.y + y1 * cs.x;
        y0 = r0, y1 = r1;
    }
    if (s == 0) {
        a.q_out[row] = y0;
        a.q_out[row + 1] = y1;
        return;
    }
    const long at = (long)pos * seg.rows + row;
    void* cache = s == 1 ? a.k_cache : a.v_cache;
    qp_store_kv(cache, at, y0, a.kv_f16);
    qp_store_kv(cache, at + 1, y1, a.kv_f16);
}

extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, 1) matvec_qkv(const QkvArgs a) { qkv<0, 0>(a); }

template <int TQK, int TV>
static __device__ __forceinline__ void qkv_entry(const QkvArgs& a) {
    if constexpr (Block<TQK>::IS_FLOAT || Block<TV>::IS_FLOAT) {
        __trap();  // the host fuses quantized types only
    } else {
        qkv<TQK, TV>(a);
    }
}

// Two CTAs per SM (64 registers) where the kernel fits them without a spill (ptxas report): since RoPE's
// cos/sin come from a table, that is every kernel but Q2_K's, Q3_K's, Q5_1's, Q6_K's and the Q5_K + Q6_K
// pair, which stay at one. (Q4_K_M's Q4_K + Q6_K pair had 80 registers and one CTA per SM with sin/cos in
// double; in the replayed decode graph it cost the same 10.2 us a layer as at two, results/h200/logs/ablation.)
#define QP_QKV_MIN_CTAS(A, B)                                                                              \
    (((A) == QB_Q2_K || (A) == QB_Q3_K || (A) == QB_Q5_1 || (A) == QB_Q6_K || ((A) == QB_Q5_K && (B) == QB_Q6_K)) \
         ? 1                                                                                               \
         : QP_MV_MIN_CTAS_B1)

// One type for Q, K and V: matvec_qkv_<type>.
#define QP_QKV_ENTRY(NAME, name, ID, QK, BYTES, DT, MT, MR, SB)                                          \
    extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, QP_QKV_MIN_CTAS(ID, ID))          \
        matvec_qkv_##name(const QkvArgs a) {                                                          \
        qkv_entry<ID, ID>(a);                                                                         \
    }
QPROF_QUANT_TYPES(QP_QKV_ENTRY)

// Q and K of one type, V of another, as llama.cpp's _M/_S recipes mix them: matvec_qkv_<qk>_v_<v>.
// qprof/runtime/cuda/kernels.py QKV_V_PAIRS lists the same pairs.
#define QP_QKV_PAIR(qk, v, IDQK, IDV)                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, QP_QKV_MIN_CTAS(IDQK, IDV))       \
        matvec_qkv_##qk##_v_##v(const QkvArgs a) {                                                    \
        qkv_entry<IDQK, IDV>(a);                                                                      \
    }
QP_QKV_PAIR(q4_k, q6_k, QB_Q4_K, QB_Q6_K)
QP_QKV_PAIR(q5_k, q6_k, QB_Q5_K, QB_Q6_K)
QP_QKV_PAIR(q3_k, q4_k, QB_Q3_K, QB_Q4_K)
QP_QKV_PAIR(q3_k, q5_k, QB_Q3_K, QB_Q5_K)
QP_QKV_PAIR(q2_k, q3_k, QB_Q2_K, QB_Q3_K)
QP_QKV_PAIR(q2_k, q4_k, QB_Q2_K, QB_Q4_K)

template <int T>
static __device__ __forceinline__ void gate_up(const qb_u8* __restrict__ wg, const qb_u8* __restrict__ wu,
                                               const qb_u8* __restrict__ xq, float* __restrict__ act,
                                               qb_u8* actq, int rows, int cols, int row_bytes, float eps) {
    __shared__ float staged[2 * QP_MV_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = blockIdx.x * 2 * QP_MV_WARPS;
    const int nb = cols / Block<T>::QK;
    const int first = min(row0 + warp, rows - 1);
    qp_rows_warm(qb_row<T>(wg, first, nb, rows).b, qb_row<T>(wu, first, nb, rows).b, row_bytes);
    qp_grid_wait();  // xq, act and actq belong to the kernels before
    const float scale = qp_rms_scale<1>(xq, cols, 0, 1, eps);
    QpRing ring = qp_ring_make();  // both halves stream through it: one type, phases carry on
#pragma unroll 1
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + QP_MV_WARPS * half + warp;
        const int at = min(row, rows - 1), next = min(row + QP_MV_WARPS, rows - 1);  // next: the second half's
        const QbRow ng = qb_row<T>(wg, next, nb, rows), nu = qb_row<T>(wu, next, nb, rows);
        float acc[2][1] = {{0.0f}, {0.0f}};
        qp_rows_dot2<T, 1>(ring, qb_row<T>(wg, at, nb, rows), qb_row<T>(wu, at, nb, rows), cols, xq, acc,
                           half == 0 ? &ng : nullptr, half == 0 ? &nu : nullptr);
        qp_warp_reduce2<1>(acc);
        if (lane == 0) {
            const float g = acc[0][0] * scale, u = acc[1][0] * scale;
            const float v = g / (1.0f + expf(-g)) * u;  // swiglu.cu's formula
            staged[QP_MV_WARPS * half + warp] = v;
            if (row < rows) act[row] = v;
        }
    }
    qp_grid_release();  // the weights are read: the epilogue is left
    if (actq != nullptr) {  // the host asks for it when rows % 32 == 0
        __syncthreads();
        qp_quantize_staged32(staged, actq, rows, row0, nullptr);
    }
}

template <int T>
static __device__ __forceinline__ void gate_up_entry(const qb_u8* wg, const qb_u8* wu, const qb_u8* xq, float* act,
                                                     qb_u8* actq, int rows, int cols, int row_bytes, float eps) {
    if constexpr (Block<T>::IS_FLOAT) {
        __trap();  // the host fuses quantized types only
    } else {
        gate_up<T>(wg, wu, xq, act, actq, rows, cols, row_bytes, eps);
    }
}

#define QP_GATE_UP_ENTRY(NAME, name, ID, QK, BYTES, DT, MT, MR, SB)                                                 \
    extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, QP_MV_MIN_CTAS(ID))                                          \
        matvec_gate_up_##name(const qb_u8* wg, const qb_u8* wu, const qb_u8* xq, float* act, qb_u8* actq,       \
                              int rows, int cols, int row_bytes, float eps) {                                    \
        gate_up_entry<ID>(wg, wu, xq, act, actq, rows, cols, row_bytes, eps);                                    \
    }
QPROF_QUANT_TYPES(QP_GATE_UP_ENTRY)
