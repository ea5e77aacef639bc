// Tiny shared device helpers for the forward-pass kernels (norm, rope, swiglu, attention, kv, sample).
// NVRTC-safe: no host headers; math comes from the CUDA builtins NVRTC provides.
#pragma once

#include "pdl.cuh"

#define QP_WARP 32
#define QP_FULL_MASK 0xffffffffu
// -INFINITY without <cmath>: the bit pattern of float -inf.
#define QP_NEG_INF __int_as_float(0xff800000)

static __device__ __forceinline__ float qp_warp_sum(float v) {
#pragma unroll
    for (int o = QP_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(QP_FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float qp_warp_max(float v) {
#pragma unroll
    for (int o = QP_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(QP_FULL_MASK, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds >= 32 floats of shared memory.
// blockDim.x must be a multiple of 32.
static __device__ __forceinline__ float qp_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int n_warps = blockDim.x / QP_WARP;
    v = qp_warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return qp_warp_sum(v);
}

static __device__ __forceinline__ float qp_block_max(float v, float* scratch) {
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    const int n_warps = blockDim.x / QP_WARP;
    v = qp_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : QP_NEG_INF;
    return qp_warp_max(v);
}

// Position of row `row` of a batch: from a device scalar when given (decode, graph-capturable),
// otherwise from the host-passed first position (prefill).
static __device__ __forceinline__ int qp_position(const int* pos_ptr, int pos0, int row) {
    return (pos_ptr != nullptr ? __ldg(pos_ptr) : pos0) + row;
}
