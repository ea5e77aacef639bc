// Dequantize GGUF blocks to float32/float16 (the prefill path's weight expansion) and gather
// embedding rows (get_rows).
//
// Launch shape, from qprof/quant/traits.py: blockDim.x = dequant_threads (TPB) threads cooperate
// on one quant block, thread t writing values [t*VPT, (t+1)*VPT) with VPT = block_values / TPB;
// blockDim.y = quant blocks per CTA. The kernel assumes blockDim.x == TPB: threads past TPB
// idle, and a launch with fewer threads leaves the tail of every block unwritten (the seed's
// bug, reproduced on purpose by `--inject block-dim`).
#include "pdl.cuh"
#include "quant_blocks.cuh"

template <int N>
static __device__ __forceinline__ void store_values(float* out, const float (&v)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; ++i)
            reinterpret_cast<float4*>(out)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = v[k];
    }
}

template <int N>
static __device__ __forceinline__ void store_values(qb_u16* out, const float (&v)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; ++i) {
            uint2 p;
            p.x = (qb_u32)qb_float_to_half(v[4 * i]) | ((qb_u32)qb_float_to_half(v[4 * i + 1]) << 16);
            p.y = (qb_u32)qb_float_to_half(v[4 * i + 2]) | ((qb_u32)qb_float_to_half(v[4 * i + 3]) << 16);
            reinterpret_cast<uint2*>(out)[i] = p;
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = qb_float_to_half(v[k]);
    }
}

// Thread t's share of one block: `blk` says where its bytes lie (quant_layout.cuh qb_at), `out` is its first value.
template <int T, int TPB, typename Out>
static __device__ __forceinline__ void dequant_block(const QbAt& blk, Out* __restrict__ out, int t) {
    constexpr int QK = Block<T>::QK;
    constexpr int VPT = QK / TPB;
    constexpr int N = VPT > 8 ? 8 : VPT;
    static_assert(VPT % N == 0, "values per thread must be whole runs");
    static_assert(Block<T>::IS_FLOAT || N % 4 == 0, "quantized runs are multiples of 4 values");
#pragma unroll
    for (int s = t * VPT; s < (t + 1) * VPT; s += N) {
        float q[N], d, m, v[N];
        Block<T>::template run<N>(blk, s, q, d, m);
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = Block<T>::IS_FLOAT ? q[k] : fmaf(d, q[k], m);
        store_values<N>(out + s, v);
    }
}

// out[i*QK .. (i+1)*QK) = block i of w, for i < n_blocks (rows are contiguous runs of blocks).
template <int T, int TPB, typename Out>
static __device__ __forceinline__ void dequant_kernel(const qb_u8* __restrict__ w, Out* __restrict__ out, int n_blocks) {
    if (threadIdx.x >= TPB) return;
    const int blk = blockIdx.x * blockDim.y + threadIdx.y;
    if (blk >= n_blocks) return;
    dequant_block<T, TPB>(qb_at<T>(w, blk, n_blocks), out + (long long)blk * Block<T>::QK, threadIdx.x);
}

// out[r, :] = row ids[r] of w, float32. grid.y = number of ids. An id outside [0, rows) yields a row of NaN (a
// bounds fault would kill the context; NaN is what every check fails on). row_bytes (GGUF's) goes unused: qb_row
// finds a row in every device layout.
template <int T, int TPB>
static __device__ __forceinline__ void get_rows_kernel(const qb_u8* __restrict__ w, const int* __restrict__ ids,
                                                       float* __restrict__ out, int rows, int blocks_per_row,
                                                       int row_bytes) {
    qp_grid_release();
    qp_grid_wait();  // ids: the step's token, written before the decode graph
    if (threadIdx.x >= TPB) return;
    const int blk = blockIdx.x * blockDim.y + threadIdx.y;
    if (blk >= blocks_per_row) return;
    constexpr int QK = Block<T>::QK;
    const int id = __ldg(ids + blockIdx.y);
    float* dst = out + (long long)blockIdx.y * blocks_per_row * QK + (long long)blk * QK;
    if (id < 0 || id >= rows) {
        for (int s = threadIdx.x * (QK / TPB); s < (threadIdx.x + 1) * (QK / TPB); ++s) dst[s] = __int_as_float(0x7fc00000);
        return;
    }
    dequant_block<T, TPB>(qb_row_at<T>(qb_row<T>(w, id, blocks_per_row, rows), blk), dst, threadIdx.x);
}

#define QPROF_DEQUANT_ENTRIES(NAME, name, ID, QK, BYTES, DT, MT, MR, SB)                                       \
    extern "C" __global__ void dequant_##name##_f32(const qb_u8* __restrict__ w, float* __restrict__ out,   \
                                                    int n_blocks) {                                        \
        dequant_kernel<ID, DT>(w, out, n_blocks);                                                          \
    }                                                                                                      \
    extern "C" __global__ void dequant_##name##_f16(const qb_u8* __restrict__ w, qb_u16* __restrict__ out,  \
                                                    int n_blocks) {                                        \
        dequant_kernel<ID, DT>(w, out, n_blocks);                                                          \
    }                                                                                                      \
    extern "C" __global__ void get_rows_##name(const qb_u8* __restrict__ w, const int* __restrict__ ids,    \
                                               float* __restrict__ out, int rows, int blocks_per_row,      \
                                               int row_bytes) {                                            \
        get_rows_kernel<ID, DT>(w, ids, out, rows, blocks_per_row, row_bytes);                             \
    }

QPROF_QUANT_TYPES(QPROF_DEQUANT_ENTRIES)
