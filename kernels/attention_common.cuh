// What decode attention (attention_decode.cu) and prefill attention (attention.cu) share.
//
//   q / out: [n_q, n_head * D] float32; K and V caches of one layer: [n_ctx, n_head_kv * D] float32,
//   or float16 (the _f16kv instances; scores and sums are float32 either way).
//   Query head h reads KV head h / n_gqa. Query row i sits at position pos0 + i (prefill) or at
//   *pos_ptr (decode, read on the device so the step can be captured in a CUDA graph).
//   Key j is visible to a query at position p when j <= p and, with a sliding window W > 0, p - j < W.
//   mask (optional, float, 0 or -inf, added to the score): when given, causality and the window
//   come from it alone and every cached key up to the forward's last position is scored. The
//   mask row of a query is its position (mask_row_by_pos = 1: the device-resident [n_ctx, n_ctx]
//   mask) or its row index in the batch (mask_row_by_pos = 0: a mask uploaded for this forward).
// NVRTC-safe like the headers it includes.
#pragma once

#include "common.cuh"
#include "quant_blocks.cuh"  // qb_half_to_float for the float16 cache

#define QP_MAX_GQA 8  // query heads per KV head (ops.py MAX_GQA)

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

// K/V element loads for a float32 or float16 cache (4 consecutive values at a 4-aligned index).
static __device__ __forceinline__ float4 qp_kv4(const float* p, long i) {
    return __ldg(reinterpret_cast<const float4*>(p + i));
}
static __device__ __forceinline__ float4 qp_kv4(const qb_u16* p, long i) {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(p + i));
    return make_float4(qb_half_to_float(w.x & 0xFFFF), qb_half_to_float(w.x >> 16), qb_half_to_float(w.y & 0xFFFF),
                       qb_half_to_float(w.y >> 16));
}
static __device__ __forceinline__ float qp_kv1(const float* p, long i) { return __ldg(p + i); }
static __device__ __forceinline__ float qp_kv1(const qb_u16* p, long i) { return qb_half_to_float(__ldg(p + i)); }
