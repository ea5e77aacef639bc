// Tiny shared device helpers for the forward-pass kernels (norm, rope, swiglu, attention, kv, sample).
// NVRTC-safe: no host headers; math comes from the CUDA builtins NVRTC provides.
#pragma once

#include "pdl.cuh"

#define QP_WARP 32
#define QP_FULL_MASK 0xffffffffu
// -INFINITY without <cmath>: the bit pattern of float -inf.
#define QP_NEG_INF __int_as_float(0xff800000)

// The launch's dynamic shared memory (its size: the launch's), shared by the kernels that carve it up
// themselves (the matvec weight rings, decode attention's rings and merges).
extern __shared__ __align__(128) unsigned char qp_dynamic_smem[];

static __device__ __forceinline__ unsigned qp_dynamic_smem_bytes() {
    unsigned n;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
    return n;
}

// The shared-memory address of a generic pointer into shared memory: the operand of cp.async and mbarrier.
static __device__ __forceinline__ unsigned qp_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Sum over aligned groups of SEG lanes (SEG a power of two up to 32); every lane of a group gets it.
template <int SEG>
static __device__ __forceinline__ float qp_segment_sum(float v) {
#pragma unroll
    for (int o = SEG / 2; o > 0; o >>= 1) v += __shfl_xor_sync(QP_FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float qp_warp_sum(float v) { return qp_segment_sum<QP_WARP>(v); }

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

// RoPE's rotation of pair i at position pos (rope.cu says why: float32 frequency and angle, as the CPU
// reference, transformers and llama.cpp round them, and sin/cos in double). The one formula behind
// rope_f32 and the table the fused QKV epilogue reads (rope_table), so both rotate by the same bits.
static __device__ __forceinline__ void qp_rope_cos_sin(int pos, int i, int rope_dim, float theta_base, float& c,
                                                       float& s) {
    const float inv_freq = (float)exp(-(2.0 * i / (double)rope_dim) * log((double)theta_base));
    const float angle = (float)pos * inv_freq;
    double sd, cd;
    sincos((double)angle, &sd, &cd);
    c = (float)cd;
    s = (float)sd;
}

// Position of row `row` of a batch: from a device scalar when given (decode, graph-capturable),
// otherwise from the host-passed first position (prefill).
static __device__ __forceinline__ int qp_position(const int* pos_ptr, int pos0, int row) {
    return (pos_ptr != nullptr ? __ldg(pos_ptr) : pos0) + row;
}
