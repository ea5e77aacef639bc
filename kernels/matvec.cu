// Matrix x vector for decode: y[c, row] = sum_k W[row, k] * x[c, k] for NB = 1..8 input columns
// (batched tokens), fp32 accumulation, weights read once for all NB columns. Every entry point
// has one signature: matvec_<type>_b<NB>(w, x, y, rows, cols, row_bytes, use_norm, eps, residual,
// yq, next_norm).
//   x: a QVec (matvec_qvec.cuh) for quantized types, made by quantize_q16 / quantize_q8 below or by
//      the epilogue of the op before; float32 [NB, cols] for float types.
//   use_norm (quantized types): x holds x * norm_w and its sum(x^2) partials; the result is scaled
//      by 1 / rms (the RMSNorm fused into the projection).
//   residual (may alias y): y = residual + W x, the residual add fused into the epilogue.
//   yq (one column, rows % 32 == 0): also write y (times next_norm when given) as a QVec for the
//      next projection.
//
// Quantized types: the dp4a path of matvec_core.cuh. Launch shape from qprof/quant/traits.py:
// matvec_threads (512) threads, matvec_rows_per_cta (32) rows per CTA, grid.x = ceil(rows / 32).
//
// Float types (F32/F16/BF16): values decoded to float (quant_blocks.cuh) against float x, 128
// threads and 4 rows per CTA. The CTA's threads stride over the row in runs of RUN values (16 for
// batches <= 4; 8 above, where the x registers would not fit): consecutive lanes take
// consecutive runs, so a warp reads contiguous weight bytes of each of its R rows, and a thread
// loads its RUN x values per column once and reuses them for all R rows (x traffic / R).
// Partial sums meet through warp shuffles and one shared-memory pass.
#include "matvec_core.cuh"

#define QP_MV_FLOAT_THREADS 128  // float types: threads and rows per CTA (the traits table's)
#define QP_MV_FLOAT_ROWS 4
// Values per thread step; the host side requires rows whose length is a multiple of the wide run.
#ifndef QPROF_MATVEC_WIDE_RUN
#define QPROF_MATVEC_WIDE_RUN 16
#endif
#define MATVEC_RUN(NB) ((NB) <= 4 ? QPROF_MATVEC_WIDE_RUN : 8)
// Resident CTAs per SM asked of the register allocator: small batches are pure bandwidth and
// want occupancy; large ones hold 8*NB x values and R*NB sums per thread and need registers.
#define MATVEC_MIN_CTAS(NB) ((NB) == 1 ? 6 : ((NB) == 2 ? 4 : ((NB) <= 4 ? 3 : 2)))

template <int T, int NB, int NT, int R>
static __device__ __forceinline__ void matvec_float(const qb_u8* __restrict__ w, const float* __restrict__ x,
                                                    float* __restrict__ y, int rows, int cols, int row_bytes,
                                                    const float* residual) {
    constexpr int QK = Block<T>::QK, RUN = MATVEC_RUN(NB);
    static_assert(NT % 32 == 0, "matvec threads must be whole warps");
    static_assert(RUN % 4 == 0 && (Block<T>::IS_FLOAT || QK % RUN == 0), "a run stays inside one block");
    qp_grid_wait();
    const int row0 = blockIdx.x * R;
    const int n_runs = cols / RUN;

    // Rows past the end repeat the last row (uniform control flow); their sums are never stored.
    QbRow wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = qb_row<T>(w, min(row0 + r, rows - 1), cols / QK, rows);

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
            Block<T>::template run<RUN>(qb_row_at<T>(wr[r], blk), s, q, d, m);
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

    qp_grid_release();  // the weights are read: the epilogue is left
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
        if (row < rows) y[(long long)c * rows + row] = sum + (residual ? residual[(long long)c * rows + row] : 0.0f);
    }
}


// Quantized types: one warp per pair of rows (2w, 2w + 1) of the CTA's 32; x is a QVec.
template <int T, int NB>
static __device__ __forceinline__ void matvec_quant(const qb_u8* __restrict__ w, const qb_u8* __restrict__ xq,
                                                    float* y, int rows, int cols, int row_bytes, int use_norm,
                                                    float eps, const float* residual, qb_u8* yq,
                                                    const float* __restrict__ next_norm) {
    __shared__ float staged[QP_MV_ROWS_PER_CTA];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = blockIdx.x * QP_MV_ROWS_PER_CTA + 2 * warp;
    const int ra = min(row0, rows - 1), rb = min(row0 + 1, rows - 1);  // past the end: a valid row, never stored
    const int nb = cols / Block<T>::QK;
    const QbRow wa = qb_row<T>(w, ra, nb, rows), wb = qb_row<T>(w, rb, nb, rows);
    qp_rows_warm(wa.b, wb.b, row_bytes);
    qp_grid_wait();  // x, residual and y belong to the kernels before
    float acc[2][NB];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) acc[r][c] = 0.0f;
    QpRing ring = qp_ring_make();
    qp_rows_dot2<T, NB>(ring, wa, wb, cols, xq, acc);
    qp_grid_release();  // the weights are read: the epilogue is left
    qp_warp_reduce2<NB>(acc);
    float scale[NB];
#pragma unroll
    for (int c = 0; c < NB; ++c) scale[c] = qp_rms_scale<NB>(xq, cols, c, use_norm, eps);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + r;
            if (row >= rows) continue;
#pragma unroll
            for (int c = 0; c < NB; ++c) {
                const long long o = (long long)c * rows + row;
                const float v = acc[r][c] * scale[c] + (residual ? residual[o] : 0.0f);
                y[o] = v;
                if (NB == 1) staged[2 * warp + r] = v;
            }
        }
    }
    if (NB == 1 && yq != nullptr) {  // the host asks for it only at one column with rows % 32 == 0
        __syncthreads();
        qp_quantize_staged32(staged, yq, rows, blockIdx.x * QP_MV_ROWS_PER_CTA, next_norm);
    }
}

template <int T, int NB>
static __device__ __forceinline__ void matvec_entry(const qb_u8* w, const void* x, float* y, int rows, int cols,
                                                    int row_bytes, int use_norm, float eps, const float* residual,
                                                    qb_u8* yq, const float* next_norm) {
    if constexpr (Block<T>::IS_FLOAT) {
        if (use_norm || yq != nullptr) __trap();  // the host never fuses a norm or a quantized output here
        matvec_float<T, NB, QP_MV_FLOAT_THREADS, QP_MV_FLOAT_ROWS>(w, static_cast<const float*>(x), y, rows, cols,
                                                                   row_bytes, residual);
    } else {
        matvec_quant<T, NB>(w, static_cast<const qb_u8*>(x), y, rows, cols, row_bytes, use_norm, eps, residual, yq,
                            next_norm);
    }
}

// x [NB, cols] float (times norm_w when given) -> a QVec of NB columns. Grid (cols / 256, NB), 256
// threads: one warp per 32-block.
template <int NB>
static __device__ __forceinline__ void quantize_f32(const float* __restrict__ x, const float* __restrict__ norm_w,
                                                    qb_u8* xq, int cols) {
    qp_grid_release();
    qp_grid_wait();
    const int blk = blockIdx.x * 8 + (threadIdx.x >> 5), c = blockIdx.y;
    if (blk >= cols / 32) return;  // whole warps leave together
    const int i = 32 * blk + (threadIdx.x & 31);
    const float raw = __ldg(x + (long)c * cols + i);
    qp_quantize_block32<NB>(norm_w != nullptr ? raw * __ldg(norm_w + i) : raw, raw, xq, cols, c, blk);
}

extern "C" __global__ void __launch_bounds__(256) quantize_q16(const float* x, const float* norm_w, qb_u8* xq,
                                                                int cols) {
    quantize_f32<1>(x, norm_w, xq, cols);
}

extern "C" __global__ void __launch_bounds__(256) quantize_q8(const float* x, const float* norm_w, qb_u8* xq,
                                                               int cols) {
    quantize_f32<8>(x, norm_w, xq, cols);  // every batch of 2..8 columns: one 8-bit plane
}

// The launch shape the host derives from the traits table must be the one these kernels assume.
template <int T>
static __host__ __device__ constexpr int qp_stage_blocks() {
    if constexpr (Block<T>::IS_FLOAT) {
        return 0;
    } else {
        return qc_streams<T>() ? Stage<T>::BLOCKS : 0;
    }
}
#ifdef QP_MV_FORCE_REGISTERS  // an experiment: the host's stage sizes are unused then
#define QP_MV_CHECK_STAGE(NAME, ID, SB)
#else
#define QP_MV_CHECK_STAGE(NAME, ID, SB) \
    static_assert(qp_stage_blocks<ID>() == SB, #NAME ": matvec stage blocks in the traits table differ");
#endif
#define QP_MV_CHECK_SHAPE(NAME, name, ID, QK, BYTES, DT, MT, MR, SB)                                  \
    static_assert(Block<ID>::IS_FLOAT ? (MT == QP_MV_FLOAT_THREADS && MR == QP_MV_FLOAT_ROWS)         \
                                      : (MT == 32 * QP_MV_WARPS && MR == QP_MV_ROWS_PER_CTA),         \
                  #NAME ": matvec launch shape in the traits table differs from the kernel's");       \
    QP_MV_CHECK_STAGE(NAME, ID, SB)
QPROF_QUANT_TYPES(QP_MV_CHECK_SHAPE)
#undef QP_MV_CHECK_SHAPE

// Register budget: the float path as before; the quantized path QP_MV_MIN_CTAS_B1 resident CTAs of
// 16 warps per SM at one column (the kernel is latency-bound: warps hide it), one above.
#define MATVEC_BOUNDS(IS_FLOAT, ID, NB) (IS_FLOAT ? MATVEC_MIN_CTAS(NB) : ((NB) == 1 ? QP_MV_MIN_CTAS(ID) : 1))

#define QPROF_MATVEC_ENTRY(name, ID, MT, NB)                                                                \
    extern "C" __global__ void __launch_bounds__(MT, MATVEC_BOUNDS(Block<ID>::IS_FLOAT, ID, NB))                \
        matvec_##name##_b##NB(const qb_u8* __restrict__ w, const void* __restrict__ x, float* y, int rows,  \
                              int cols, int row_bytes, int use_norm, float eps, const float* residual,       \
                              qb_u8* yq, const float* next_norm) {                                           \
        matvec_entry<ID, NB>(w, x, y, rows, cols, row_bytes, use_norm, eps, residual, yq, next_norm);       \
    }

#define QPROF_MATVEC_ENTRIES(NAME, name, ID, QK, BYTES, DT, MT, MR, SB) \
    QPROF_MATVEC_ENTRY(name, ID, MT, 1)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 2)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 3)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 4)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 5)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 6)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 7)                             \
    QPROF_MATVEC_ENTRY(name, ID, MT, 8)

QPROF_QUANT_TYPES(QPROF_MATVEC_ENTRIES)
