// KV-cache write: copies a batch of K and V rows into one layer's cache at their positions.
//
// Cache layout per layer: K and V each [n_ctx, kv_dim] float32 (kv_write_f32) or float16
// (kv_write_f16: rounded to nearest), row = position.
// grid (n_rows, ceil(kv_dim / blockDim.x)). Positions: *pos_ptr + row (decode, device scalar)
// or pos0 + row (prefill). Rows at or beyond n_ctx are dropped; the host refuses such positions
// before launching, so this guard only keeps a bad launch from writing out of bounds.
#include "common.cuh"
#include "quant_blocks.cuh"  // fp16 conversion

extern "C" __global__ void kv_write_f32(const float* __restrict__ k, const float* __restrict__ v,
                                        float* __restrict__ k_cache, float* __restrict__ v_cache,
                                        int kv_dim, int n_ctx, const int* __restrict__ pos_ptr,
                                        int pos0) {
    const int row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= kv_dim) return;
    const int pos = qp_position(pos_ptr, pos0, row);
    if (pos < 0 || pos >= n_ctx) return;
    const long src = (long)row * kv_dim + i, dst = (long)pos * kv_dim + i;
    k_cache[dst] = k[src];
    v_cache[dst] = v[src];
}

extern "C" __global__ void kv_write_f16(const float* __restrict__ k, const float* __restrict__ v,
                                        qb_u16* __restrict__ k_cache, qb_u16* __restrict__ v_cache,
                                        int kv_dim, int n_ctx, const int* __restrict__ pos_ptr, int pos0) {
    const int row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= kv_dim) return;
    const int pos = qp_position(pos_ptr, pos0, row);
    if (pos < 0 || pos >= n_ctx) return;
    const long src = (long)row * kv_dim + i, dst = (long)pos * kv_dim + i;
    k_cache[dst] = qb_float_to_half(k[src]);
    v_cache[dst] = qb_float_to_half(v[src]);
}
