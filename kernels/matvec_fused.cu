// Fused decode projections (one column): the layer's ops that read the normed residual stream.
//
// matvec_qkv: RMSNorm -> Q, K and V in one launch -> RoPE on Q and K -> K and V into the cache.
//   Q, K and V may have different quant types (Q4_K_M keeps V in Q6_K on some layers), so each is
//   a segment with its own descriptor and the type is dispatched per warp at run time. The pairs
//   of rows a warp computes are RoPE's adjacent pairs (normal mode), so lane 0 rotates them in
//   registers. Grid: ceil((rows_q + rows_k + rows_v) / 16) CTAs of 256 threads.
// matvec_gate_up_<type>: RMSNorm -> gate and up rows i in one warp -> act[i] = silu(g) * u.
//   Grid: ceil(n_ff / 8) CTAs of 256 threads (8 warps, one row of each matrix per warp).
// Both take dynamic shared memory qp_xq_column_bytes(2, cols) for the quantized activations.
// RoPE's angle follows rope.cu exactly (float32 frequency and angle, sin/cos in double).
#include "matvec_core.cuh"

struct QkvSegment {
    const qb_u8* w;
    int type;  // GGML type id
    int rows;  // even: rows pair up inside a segment
    int row_bytes;
    int pad_;
};

struct QkvArgs {
    QkvSegment seg[3];  // q, k, v
    const float* x;
    const float* norm_w;
    float* q_out;    // [rows_q]
    void* k_cache;   // [n_ctx, kv_dim], float32 or float16
    void* v_cache;
    const int* pos;  // the step's position, on the device
    float eps;
    int cols;
    int head_dim;
    int rope_dim;
    float theta;
    int n_ctx;
    int kv_f16;
    int pad_;
};

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

extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, 2) matvec_qkv(const QkvArgs a) {
    qb_u8* xq = qp_xq_smem();
    __shared__ MvShared sh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int pair = blockIdx.x * QP_MV_WARPS + warp, s = 0;
    while (s < 2 && pair >= a.seg[s].rows / 2) pair -= a.seg[s].rows / 2, ++s;
    const QkvSegment seg = a.seg[s];
    const bool live = pair < seg.rows / 2;  // the last CTA's surplus warps compute a valid pair, store nothing
    const int row = 2 * min(pair, seg.rows / 2 - 1);
    const qb_u8* wa = seg.w + (long long)row * seg.row_bytes;
    const qb_u8* wb = wa + seg.row_bytes;
    qp_prefetch_row(wa, seg.row_bytes);
    qp_prefetch_row(wb, seg.row_bytes);
    qp_quantize_x<1>(a.x, a.norm_w, a.eps, a.cols, xq, sh.rms, sh.scratch);
    __syncthreads();
    float acc[2][1] = {{0.0f}, {0.0f}};
#define QP_QKV_DOT(T) qp_rows_dot2<T, 1>(wa, wb, a.cols, xq, acc)
    QP_FOR_QUANT_TYPE(seg.type, QP_QKV_DOT)
#undef QP_QKV_DOT
    qp_warp_reduce2<1>(acc);
    if (lane != 0 || !live) return;
    float y0 = acc[0][0] * sh.rms[0], y1 = acc[1][0] * sh.rms[0];
    const int pos = __ldg(a.pos);
    const int dim = row % a.head_dim;
    if (s < 2 && dim < a.rope_dim) {
        const int i = dim / 2;
        const float inv_freq = (float)exp(-(2.0 * i / (double)a.rope_dim) * log((double)a.theta));
        const float angle = (float)pos * inv_freq;
        double sn, cs;
        sincos((double)angle, &sn, &cs);
        const float r0 = y0 * (float)cs - y1 * (float)sn, r1 = y0 * (float)sn + y1 * (float)cs;
        y0 = r0, y1 = r1;
    }
    if (s == 0) {
        a.q_out[row] = y0;
        a.q_out[row + 1] = y1;
        return;
    }
    if (pos < 0 || pos >= a.n_ctx) return;  // the host refuses such positions; never write out of bounds
    const long at = (long)pos * seg.rows + row;
    void* cache = s == 1 ? a.k_cache : a.v_cache;
    qp_store_kv(cache, at, y0, a.kv_f16);
    qp_store_kv(cache, at + 1, y1, a.kv_f16);
}

template <int T>
static __device__ __forceinline__ void gate_up(const qb_u8* __restrict__ wg, const qb_u8* __restrict__ wu,
                                               const float* __restrict__ x, float* __restrict__ act, int rows,
                                               int cols, int row_bytes, const float* __restrict__ norm_w, float eps) {
    qb_u8* xq = qp_xq_smem();
    __shared__ MvShared sh;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * QP_MV_WARPS + warp;
    const long long off = (long long)min(row, rows - 1) * row_bytes;
    qp_prefetch_row(wg + off, row_bytes);
    qp_prefetch_row(wu + off, row_bytes);
    qp_quantize_x<1>(x, norm_w, eps, cols, xq, sh.rms, sh.scratch);
    __syncthreads();
    float acc[2][1] = {{0.0f}, {0.0f}};
    qp_rows_dot2<T, 1>(wg + off, wu + off, cols, xq, acc);
    qp_warp_reduce2<1>(acc);
    if (lane == 0 && row < rows) {
        const float g = acc[0][0] * sh.rms[0], u = acc[1][0] * sh.rms[0];
        act[row] = g / (1.0f + expf(-g)) * u;  // swiglu.cu's formula
    }
}

template <int T>
static __device__ __forceinline__ void gate_up_entry(const qb_u8* wg, const qb_u8* wu, const float* x, float* act,
                                                     int rows, int cols, int row_bytes, const float* norm_w, float eps) {
    if constexpr (Block<T>::IS_FLOAT) {
        __trap();  // the host fuses quantized types only
    } else {
        gate_up<T>(wg, wu, x, act, rows, cols, row_bytes, norm_w, eps);
    }
}

#define QP_GATE_UP_ENTRY(NAME, name, ID, QK, BYTES, DT, MT, MR)                                                \
    extern "C" __global__ void __launch_bounds__(32 * QP_MV_WARPS, 2)                                          \
        matvec_gate_up_##name(const qb_u8* wg, const qb_u8* wu, const float* x, float* act, int rows, int cols, \
                              int row_bytes, const float* norm_w, float eps) {                                  \
        gate_up_entry<ID>(wg, wu, x, act, rows, cols, row_bytes, norm_w, eps);                                  \
    }
QPROF_QUANT_TYPES(QP_GATE_UP_ENTRY)
