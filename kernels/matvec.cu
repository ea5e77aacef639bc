// Quantized matrix x vector for decode: y[c, row] = sum_k W[row, k] * x[c, k] for NB = 1..8
// input columns (batched tokens), fp32 accumulation, weights read once for all NB columns.
//
// Launch shape, from qprof/quant/traits.py: NT = matvec_threads threads per CTA, R =
// matvec_rows_per_cta output rows per CTA, grid.x = ceil(rows / R). The CTA's threads stride
// over the row in runs of RUN values (16 for batches <= 4; 8 above, where the x registers would
// not fit): consecutive lanes take consecutive runs, so a warp reads contiguous weight bytes of
// each of its R rows, in 16-byte loads where the layout's alignment allows. A thread loads its
// RUN x values per column once into registers and reuses them for all R rows (x traffic / R),
// and folds each run's scale and min in after the dot product: sum_k (d*q_k + m) x_k = d * sum_k q_k x_k + m * sum_k x_k.
// Partial sums meet through warp shuffles and one shared-memory pass.
#include "quant_blocks.cuh"

// Values per thread step; the host side requires rows whose length is a multiple of the wide run.
#ifndef QPROF_MATVEC_WIDE_RUN
#define QPROF_MATVEC_WIDE_RUN 16
#endif
#define MATVEC_RUN(NB) ((NB) <= 4 ? QPROF_MATVEC_WIDE_RUN : 8)
// Resident CTAs per SM asked of the register allocator: small batches are pure bandwidth and
// want occupancy; large ones hold 8*NB x values and R*NB sums per thread and need registers.
#define MATVEC_MIN_CTAS(NB) ((NB) == 1 ? 6 : ((NB) == 2 ? 4 : ((NB) <= 4 ? 3 : 2)))

template <int T, int NB, int NT, int R>
static __device__ __forceinline__ void matvec_kernel(const qb_u8* __restrict__ w, const float* __restrict__ x,
                                                     float* __restrict__ y, int rows, int cols, int row_bytes) {
    constexpr int QK = Block<T>::QK, BYTES = Block<T>::BYTES, RUN = MATVEC_RUN(NB);
    static_assert(NT % 32 == 0, "matvec threads must be whole warps");
    static_assert(RUN % 4 == 0 && (Block<T>::IS_FLOAT || QK % RUN == 0), "a run stays inside one block");
    const int row0 = blockIdx.x * R;
    const int n_runs = cols / RUN;

    // Rows past the end repeat the last row (uniform control flow); their sums are never stored.
    const qb_u8* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + (long long)min(row0 + r, rows - 1) * row_bytes;

    float acc[R][NB];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) acc[r][c] = 0.0f;

    for (int i = threadIdx.x; i < n_runs; i += NT) {
        const int c0 = i * RUN;
        const int blk = c0 / QK, s = c0 % QK;
        float xv[NB][RUN], xs[NB];
#pragma unroll
        for (int c = 0; c < NB; ++c) {
            const float4* xp = reinterpret_cast<const float4*>(x + (long long)c * cols + c0);
            xs[c] = 0.0f;
#pragma unroll
            for (int v = 0; v < RUN / 4; ++v) {
                const float4 a = __ldg(xp + v);
                xv[c][4 * v] = a.x, xv[c][4 * v + 1] = a.y, xv[c][4 * v + 2] = a.z, xv[c][4 * v + 3] = a.w;
                xs[c] += (a.x + a.y) + (a.z + a.w);
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float q[RUN], d, m;
            Block<T>::template run<RUN>(wr[r] + (long long)blk * BYTES, s, q, d, m);
#pragma unroll
            for (int c = 0; c < NB; ++c) {
                float dot = 0.0f;
#pragma unroll
                for (int k = 0; k < RUN; ++k) dot = fmaf(q[k], xv[c][k], dot);
                acc[r][c] = fmaf(d, dot, acc[r][c]);
                if constexpr (!Block<T>::IS_FLOAT) acc[r][c] = fmaf(m, xs[c], acc[r][c]);
            }
        }
    }

    __shared__ float partial[NT / 32][R * NB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) {
            float v = acc[r][c];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) partial[warp][r * NB + c] = v;
        }
    __syncthreads();
    for (int o = threadIdx.x; o < R * NB; o += NT) {
        float sum = 0.0f;
#pragma unroll
        for (int wi = 0; wi < NT / 32; ++wi) sum += partial[wi][o];
        const int row = row0 + o / NB, c = o % NB;
        if (row < rows) y[(long long)c * rows + row] = sum;
    }
}

#define QPROF_MATVEC_ENTRY(name, ID, MT, MR, NB)                                                          \
    extern "C" __global__ void __launch_bounds__(MT, MATVEC_MIN_CTAS(NB))                                                    \
        matvec_##name##_b##NB(const qb_u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, \
                              int rows, int cols, int row_bytes) {                                        \
        matvec_kernel<ID, NB, MT, MR>(w, x, y, rows, cols, row_bytes);                                    \
    }

#define QPROF_MATVEC_ENTRIES(NAME, name, ID, QK, BYTES, DT, MT, MR) \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 1)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 2)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 3)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 4)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 5)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 6)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 7)                         \
    QPROF_MATVEC_ENTRY(name, ID, MT, MR, 8)

QPROF_QUANT_TYPES(QPROF_MATVEC_ENTRIES)
