// KV-cache write: copies a batch of K and V rows into one layer's cache at their positions.
//
// Cache layout per layer: K and V each [n_ctx, kv_dim] float32 (kv_write_f32) or float16
// (kv_write_f16: rounded to nearest), row = position.
// grid (n_rows, ceil(kv_dim / blockDim.x)). Positions: *pos_ptr + row (decode, device scalar)
// or pos0 + row (prefill). Rows at or beyond n_ctx are dropped; the host refuses such positions
// before launching, so this guard only keeps a bad launch from writing out of bounds.
#include "common.cuh"
#include "quant_blocks.cuh"  // fp16 conversion

static __device__ __forceinline__ float qp_kv_value(float v, float*) { return v; }
static __device__ __forceinline__ qb_u16 qp_kv_value(float v, qb_u16*) { return qb_float_to_half(v); }

template <typename KvT>
static __device__ __forceinline__ void kv_write(const float* __restrict__ k, const float* __restrict__ v,
                                                KvT* __restrict__ k_cache, KvT* __restrict__ v_cache, int kv_dim,
                                                int n_ctx, const int* __restrict__ pos_ptr, int pos0) {
    const int row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= kv_dim) return;
    const int pos = qp_position(pos_ptr, pos0, row);
    if (pos < 0 || pos >= n_ctx) return;
    const long src = (long)row * kv_dim + i, dst = (long)pos * kv_dim + i;
    k_cache[dst] = qp_kv_value(k[src], k_cache);
    v_cache[dst] = qp_kv_value(v[src], v_cache);
}

extern "C" __global__ void kv_write_f32(const float* k, const float* v, float* k_cache, float* v_cache, int kv_dim,
                                        int n_ctx, const int* pos_ptr, int pos0) {
    kv_write(k, v, k_cache, v_cache, kv_dim, n_ctx, pos_ptr, pos0);
}

extern "C" __global__ void kv_write_f16(const float* k, const float* v, qb_u16* k_cache, qb_u16* v_cache,
                                        int kv_dim, int n_ctx, const int* pos_ptr, int pos0) {
    kv_write(k, v, k_cache, v_cache, kv_dim, n_ctx, pos_ptr, pos0);
}
