// The decode matvec's machinery, shared by the single-matrix kernels (matvec.cu) and the fused
// QKV / gate+up kernels (matvec_fused.cu).
//
// 1. Activations arrive quantized in a QVec in global memory (matvec_qvec.cuh: its layout, its producers'
//    quantizer and the fused RMSNorm's scale), read through L1: every warp of an SM reads the same vector.
// 2. Weights. A warp computes two rows at once (a pair: two rows of one matrix, or gate and up),
//    lane by lane over the blocks' lane tasks of quant_codes.cuh, one task per lane and row a
//    stage, read either straight from global memory (the register path) or from the warp's ring
//    of shared-memory stages (the stream; which, per type: qc_streams). Each 16-value run is an
//    exact int32 dot of codes against xi: __dp4a.
// 3. The pair's sums meet through warp shuffles; lane 0 runs the caller's epilogue.
// NVRTC-safe like the headers it includes.
#pragma once

#include "common.cuh"
#include "matvec_qvec.cuh"
#include "quant_codes.cuh"

// Stages of weights the register path asks of L2 ahead of its loads; 0: none. The prefetch cost 45 of a
// Q4_K stage's 214 SASS instructions, and these matvecs are instruction-bound. On the H200, tg128 Q4_K_M
// alternating in one lease (2026-12-01, results/h200/logs/prefetch_774b1bf8): 2 stages read 424.6 and
// 436.7 tok/s, none 460.7 and 441.2. (2 and 4 had measured within noise of "0", which then still
// prefetched the stage at hand, so every build paid the instructions.)
#ifndef QP_MV_PREFETCH_STAGES
#define QP_MV_PREFETCH_STAGES 0
#endif
// Bytes of each of its rows a matvec warp asks of L2 before it waits on the previous kernel (pdl.cuh;
// at 0 a row that does not start on a 128-byte line still gets its first line asked for, qp_rows_warm).
// 0: on the H200 with --pdl 1, tg128 Q4_K_M read 396.8 tok/s at 0, 379.3 at 2048, 378.8 at 8192
// (QPROF_KERNEL_DEFINES, 2026-12-01): warming the next kernel's rows slows the kernel still running.
#ifndef QP_MV_WARM_BYTES
#define QP_MV_WARM_BYTES 0
#endif
// Resident CTAs per SM asked of the register allocator at one column (2: at most 64 registers).
#ifndef QP_MV_MIN_CTAS_B1
#define QP_MV_MIN_CTAS_B1 2
#endif
// The types whose codes need more registers (Q3_K, Q5_K) and the mixed-type QKV stay at one CTA:
// at 64 registers they would spill.
#define QP_MV_MIN_CTAS(ID) (((ID) == QB_Q3_K || (ID) == QB_Q5_K) ? 1 : QP_MV_MIN_CTAS_B1)
#define QP_MV_WARPS 16   // warps per CTA: QuantTraits.matvec_threads / 32
#define QP_MV_PAIRS_PER_WARP 1
#define QP_MV_ROWS_PER_CTA (2 * QP_MV_WARPS * QP_MV_PAIRS_PER_WARP)  // QuantTraits.matvec_rows_per_cta

#ifndef QB_HOST_EMULATION
static __device__ __forceinline__ int qp_dp4a_us(qb_u32 a, qb_u32 b, int c) {  // unsigned a . signed b
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

static __device__ __forceinline__ int qp_dp4a_uu(qb_u32 a, qb_u32 b, int c) {  // unsigned a . unsigned b
    int d;
    asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#endif

// ------------------------------------------------------------------ the weight stream
// Each warp streams its two rows through a ring of stages in shared memory: lane 0 asks the copy
// engine (cp.async.bulk, sm_90) for a stage of both rows' blocks, up to `stages` ahead, and the lanes
// decode the stage at hand from shared memory when its mbarrier says the bytes have landed, so the
// bytes in flight per SM do not depend on registers or on how long the decode of a stage takes.
// Measured on the H200 it pays only where the decode is heavy: qc_streams (quant_codes.cuh) picks
// the types, results/h200/matvec_h200.txt has both paths.
// A stage is one lane task per lane and row: Codes<T>::TASKS tasks a block, so 32 / TASKS blocks
// (QuantTraits.matvec_stage_blocks). The copy engine wants 16-byte aligned, 16-byte multiple spans;
// blocks are only 2-aligned, so a stage copies the 16-byte aligned span around its blocks and the
// lanes read at the same address mod 16 as in global memory (every load's alignment unchanged).
// That span reaches at most 15 bytes past a row's end: DeviceWeight pads its allocation for it.
// The warps' rings share the kernel's dynamic shared memory in equal regions; the number of stages is
// what a region holds (the host sizes it: kernels.py matvec_shared_bytes), at most QP_MV_MAX_STAGES.
#ifndef QP_MV_MAX_STAGES
#define QP_MV_MAX_STAGES 8
#endif
// Experiments for bench_matvec --variant (0 in every shipped kernel), on either weight path: 1 loads
// the weights without decoding them (the path's own ceiling), 2 decodes against constant activations
// (no x loads).
#ifndef QP_MV_EXPERIMENT
#define QP_MV_EXPERIMENT 0
#endif
// try_wait polls before a lost copy is called a fault (a trap fails the launch instead of a hang).
#define QP_MV_WAIT_POLLS (1 << 22)

struct QpRing {
    qb_u8* region;  // this warp's share of the dynamic shared memory
    int region_bytes;
    qb_u32 bars;  // shared address of this warp's QP_MV_MAX_STAGES mbarriers (8 bytes each)
    int used;     // stages streamed through the ring so far: the slot and phase of the next
    int ahead;    // stages of the next pair already issued by the call before (it knew the rows)
};

#ifndef QB_HOST_EMULATION
// Every warp's ring, its mbarriers initialised by its lane 0 (warp-local: no CTA barrier needed).
static __device__ __forceinline__ QpRing qp_ring_make() {
    __shared__ __align__(8) qb_u64 bars[QP_MV_WARPS][QP_MV_MAX_STAGES];
    const qb_u32 dyn = qp_dynamic_smem_bytes();
    const int warp = threadIdx.x >> 5, per_warp = (int)(dyn / QP_MV_WARPS) & ~127;
    QpRing ring{qp_dynamic_smem + warp * per_warp, per_warp, qp_smem_addr(&bars[warp][0]), 0, 0};
    if ((threadIdx.x & 31) == 0 && dyn > 0) {  // no ring for a kernel whose types all take the register path
#pragma unroll
        for (int s = 0; s < QP_MV_MAX_STAGES; ++s)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(ring.bars + 8 * s) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    return ring;
}

static __device__ __forceinline__ void qp_mbar_wait(qb_u32 bar, qb_u32 parity) {
    qb_u32 done = 0;
    for (int polls = 0; !done; ++polls) {
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (polls > QP_MV_WAIT_POLLS) __trap();
    }
}

// Lane 0: stage j (blocks j * BLOCKS ..) of both rows into ring slot `slot`, the 16-byte aligned span
// around each row's blocks, the barrier armed with both spans' bytes first.
template <int T>
static __device__ __forceinline__ void qp_stage_issue(const QpRing& ring, int slot, qb_u64 row_a, qb_u64 row_b, int j,
                                                      int blocks_per_row) {
    using S = Stage<T>;
    constexpr int SPAN = S::BLOCKS * Block<T>::BYTES;
    const qb_u32 len = (qb_u32)min(S::BLOCKS, blocks_per_row - j * S::BLOCKS) * Block<T>::BYTES;
    const qb_u64 src[2] = {row_a + (qb_u64)j * SPAN, row_b + (qb_u64)j * SPAN};
    qb_u32 bytes[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) bytes[r] = (qb_u32)(((src[r] + len + 15) & ~15ull) - (src[r] & ~15ull));
    const qb_u32 bar = ring.bars + 8 * slot;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes[0] + bytes[1])
                 : "memory");
    const qb_u32 dst = qp_smem_addr(ring.region + slot * S::BYTES);
#pragma unroll
    for (int r = 0; r < 2; ++r)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         dst + r * S::ROW_BYTES),
                     "l"(src[r] & ~15ull), "r"(bytes[r]), "r"(bar)
                     : "memory");
}
#endif

// One lane task of both rows against x: task t of block `blk` (raw: its loaded bytes); a task that is
// not live (past the row's end: it loaded a valid block) is weighted 0.
template <int T, int NB>
static __device__ __forceinline__ void qp_task_dot(const typename Codes<T>::Raw (&raw)[2], int t, int blk, bool live,
                                                   const qb_u8* xs, int cols, float (&acc)[2][NB]) {
    using C = Codes<T>;
    constexpr int P = XPlanes<NB>::N;
    const int v0 = blk * Block<T>::QK;
#pragma unroll(NB > 2 ? 1 : C::RUNS)  // many columns: one run's codes live at a time
    for (int run = 0; run < C::RUNS; ++run) {
        qb_u32 code[2][4];
        float d[2], m[2];
        int v = 0;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            C::decode(raw[r], t, run, code[r], d[r], m[r], v);
            if (!live) d[r] = 0.0f, m[r] = 0.0f;
        }
        const int vi = v0 + v;
#pragma unroll
        for (int c = 0; c < NB; ++c) {
            const XColumn xc = qp_x_column<NB>(xs, cols, c);
#if QP_MV_EXPERIMENT == 2
            const uint4 h = make_uint4(vi, vi + 1, vi + 2, vi + 3);
            const float dx = 1.0f, sx = 0.5f;
#else
            const uint4 h = __ldg(reinterpret_cast<const uint4*>(xc.planes + vi));
            const float dx = __ldg(xc.dx + (vi >> 5)), sx = __ldg(xc.sx + (vi >> 4));
#endif
            const qb_u32 hw[4] = {h.x, h.y, h.z, h.w};
            qb_u32 lw[4] = {0, 0, 0, 0};
            if constexpr (P == 2) {
#if QP_MV_EXPERIMENT == 2
                const uint4 l = h;
#else
                const uint4 l = __ldg(reinterpret_cast<const uint4*>(xc.planes + cols + vi));
#endif
                lw[0] = l.x, lw[1] = l.y, lw[2] = l.z, lw[3] = l.w;
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                int ih = 0, il = 0;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    ih = qp_dp4a_us(code[r][i], hw[i], ih);
                    if constexpr (P == 2) il = qp_dp4a_uu(code[r][i], lw[i], il);
                }
                const int dot = P == 2 ? ih * 256 + il : ih;
                acc[r][c] = fmaf(d[r] * dx, (float)dot, fmaf(m[r], sx, acc[r][c]));
            }
        }
    }
}

// qp_task_dot, or under QP_MV_EXPERIMENT 1 (either path) a use of the loaded bytes that keeps the
// loads alive without decoding them.
template <int T, int NB>
static __device__ __forceinline__ void qp_task_dot_or_skip(const typename Codes<T>::Raw (&raw)[2], int t, int blk,
                                                           bool live, const qb_u8* xs, int cols, float (&acc)[2][NB]) {
    if constexpr (QP_MV_EXPERIMENT == 1) {
        acc[0][0] += __uint_as_float(reinterpret_cast<const qb_u32*>(&raw[0])[1] & 0x3FFFFFu);
        acc[1][0] += __uint_as_float(reinterpret_cast<const qb_u32*>(&raw[1])[1] & 0x3FFFFFu);
    } else {
        qp_task_dot<T, NB>(raw, t, blk, live, xs, cols, acc);
    }
}

#ifndef QB_HOST_EMULATION
// acc[r][c] += row r (ra or rb) . x column c of the QVec xq over all cols, this lane's share; not yet
// warp-reduced. The rows stream through the warp's ring, a stage a lane task per lane and row: lane
// l takes task l % TASKS of the stage's block l / TASKS, the same every stage, so the per-stage work
// is the wait, two shared-memory addresses, the decode and the refill (warp-uniform branches).
// A ring carries on across calls with rows of the same type and length (gate+up streams two pairs
// through one); given the next call's rows (na, nb), the last stages' refills already fetch its first.
template <int T, int NB>
static __device__ __forceinline__ void qp_rows_dot2_stream(QpRing& ring, const qb_u8* __restrict__ ra,
                                                           const qb_u8* __restrict__ rb, int cols, const qb_u8* xs,
                                                           float (&acc)[2][NB], const qb_u8* na, const qb_u8* nb) {
    using S = Stage<T>;
    using C = Codes<T>;
    constexpr int SPAN = S::BLOCKS * Block<T>::BYTES;
    const int lane = threadIdx.x & 31;
    const int blocks_per_row = cols / Block<T>::QK;
    const int n_stages = (blocks_per_row + S::BLOCKS - 1) / S::BLOCKS;
    const int slots = min(QP_MV_MAX_STAGES, ring.region_bytes / S::BYTES);
    if (slots < 1) __trap();  // the host gave less shared memory than one stage: kernels.py is out of step
    const qb_u64 row_a = reinterpret_cast<qb_u64>(ra), row_b = reinterpret_cast<qb_u64>(rb);
    // the ring's next slot and the parity of its phase, counted on (no divisions in the loop)
    int slot = ring.used % slots;
    qb_u32 parity = (qb_u32)(ring.used / slots) & 1u;
    if (lane == 0)
        for (int j = ring.ahead; j < min(slots, n_stages); ++j)
            qp_stage_issue<T>(ring, (slot + j) % slots, row_a, row_b, j, blocks_per_row);
    int ahead = 0;  // the next pair's stages issued here, 0 .. ahead - 1
    const qb_u64 next_a = reinterpret_cast<qb_u64>(na), next_b = reinterpret_cast<qb_u64>(nb);
    const int in_block = lane / C::TASKS, t = lane % C::TASKS;
    const int mod_a = (int)(row_a & 15u), mod_b = (int)(row_b & 15u);
    const qb_u8* lane_at = ring.region + in_block * Block<T>::BYTES;
#pragma unroll 1
    for (int j = 0; j < n_stages; ++j) {
        qp_mbar_wait(ring.bars + 8 * slot, parity);
        const int blk = j * S::BLOCKS + in_block;
        const bool live = blk < blocks_per_row;  // a short last stage: the lanes past it read its block 0
        const qb_u8* at = lane_at + slot * S::BYTES - (live ? 0 : in_block * Block<T>::BYTES);
        // the stage's blocks sit at their global address mod 16 (the copy moved aligned spans)
        const int da = (mod_a + j * SPAN) & 15, db = (mod_b + j * SPAN) & 15;
        typename C::Raw raw[2];
        C::load(at + da, t, raw[0]);
        C::load(at + S::ROW_BYTES + db, t, raw[1]);
        __syncwarp();  // every lane holds its stage's bytes in registers: the slot may be refilled
        if (j + slots < n_stages) {
            if (lane == 0) qp_stage_issue<T>(ring, slot, row_a, row_b, j + slots, blocks_per_row);
        } else if (na != nullptr && j + slots - n_stages == ahead && ahead < n_stages) {
            if (lane == 0) qp_stage_issue<T>(ring, slot, next_a, next_b, ahead, blocks_per_row);
            ++ahead;
        }
        if (++slot == slots) slot = 0, parity ^= 1u;
        qp_task_dot_or_skip<T, NB>(raw, t, live ? blk : j * S::BLOCKS, live, xs, cols, acc);
    }
    ring.used += n_stages;
    ring.ahead = ahead;
}

// The register path (types with qc_streams false): each lane loads its task of both rows straight from
// global memory; with QP_MV_PREFETCH_STAGES > 0, that many stages of the pair are asked of L2 ahead
// (lanes 0..15: row a, 16..31: row b, one 128-byte line each).
template <int T>
static __device__ __forceinline__ void qp_stage_prefetch(const qb_u8* ra, const qb_u8* rb, int base, int n_tasks) {
    if (base >= n_tasks) return;
    using C = Codes<T>;
    const long lo = (long)(base / C::TASKS) * Block<T>::BYTES;
    const long hi = (long)((min(base + 32, n_tasks) - 1) / C::TASKS + 1) * Block<T>::BYTES;
    const int lane = threadIdx.x & 31;
    const long at = (lo & ~127L) + 128L * (lane & 15);
    if (at < hi) asm volatile("prefetch.global.L2 [%0];" ::"l"((lane < 16 ? ra : rb) + at));
}

// A kernel's prologue before qp_grid_wait (pdl.cuh): the first QP_MV_WARM_BYTES of the warp's two
// rows asked of L2 (lanes 0..15: row a, 16..31: row b, one 128-byte line each), since weights depend
// on no earlier kernel. Launched programmatically, this runs beside the previous kernel's tail.
static __device__ __forceinline__ void qp_rows_warm(const qb_u8* ra, const qb_u8* rb, int row_bytes) {
    const int lane = threadIdx.x & 31;
    const qb_u8* row = lane < 16 ? ra : rb;
    const int lead = (int)(reinterpret_cast<qb_u64>(row) & 127u);  // the row's offset in its first line
    const int at = 128 * (lane & 15) - lead;
    if (at < min(row_bytes, QP_MV_WARM_BYTES)) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + max(at, 0)));
}

// One stage of the register path: tasks base .. base + 31 of both rows. FULL: every lane's task is live, a
// compile-time fact, so the stage carries no clamp and no zeroing of the tasks past the row's end.
template <int T, int NB, bool FULL>
static __device__ __forceinline__ void qp_stage_dot_registers(const QbRow& ra, const QbRow& rb, int base, int n_tasks,
                                                              int cols, const qb_u8* xs, float (&acc)[2][NB]) {
    using C = Codes<T>;
    const int lane = threadIdx.x & 31;
    if constexpr (QP_MV_PREFETCH_STAGES > 0)
        qp_stage_prefetch<T>(ra.b, rb.b, base + 32 * QP_MV_PREFETCH_STAGES, n_tasks);
    const int task = FULL ? base + lane : min(base + lane, n_tasks - 1);  // past the end: a valid task, weighted 0
    const int blk = task / C::TASKS;
    typename C::Raw raw[2];
    C::template load<QbReadOnly>(qb_row_at<T>(ra, blk), task % C::TASKS, raw[0]);  // ld.global.nc: read-only weights
    C::template load<QbReadOnly>(qb_row_at<T>(rb, blk), task % C::TASKS, raw[1]);
    qp_task_dot_or_skip<T, NB>(raw, task % C::TASKS, task / C::TASKS, FULL || base + lane < n_tasks, xs, cols, acc);
}

// The whole stages (32 live tasks: every stage of Mistral-7B's rows) without a check, then the short last one.
template <int T, int NB>
static __device__ __forceinline__ void qp_rows_dot2_registers(const QbRow& ra, const QbRow& rb, int cols,
                                                              const qb_u8* xs, float (&acc)[2][NB]) {
    using C = Codes<T>;
    const int n_tasks = cols / Block<T>::QK * C::TASKS, n_whole = n_tasks & ~31;
#pragma unroll 1
    for (int d = 0; d < QP_MV_PREFETCH_STAGES; ++d)
        qp_stage_prefetch<T>(ra.b, rb.b, 32 * d, n_tasks);
    for (int base = 0; base < n_whole; base += 32) qp_stage_dot_registers<T, NB, true>(ra, rb, base, n_tasks, cols, xs, acc);
    if (n_whole < n_tasks) qp_stage_dot_registers<T, NB, false>(ra, rb, n_whole, n_tasks, cols, xs, acc);
}

// acc[r][c] += row r (ra or rb) . x column c over all cols (this lane's share), by the type's path.
// na / nb: the rows of the warp's next call, which a stream starts fetching early (may be null).
template <int T, int NB>
static __device__ __forceinline__ void qp_rows_dot2(QpRing& ring, const QbRow& ra, const QbRow& rb, int cols,
                                                    const qb_u8* xs, float (&acc)[2][NB], const QbRow* na = nullptr,
                                                    const QbRow* nb = nullptr) {
    if constexpr (qc_streams<T>()) {  // a streamed type keeps GGUF's layout: its rows are contiguous bytes
        qp_rows_dot2_stream<T, NB>(ring, ra.b, rb.b, cols, xs, acc, na ? na->b : nullptr, nb ? nb->b : nullptr);
    } else {
        qp_rows_dot2_registers<T, NB>(ra, rb, cols, xs, acc);
    }
}
#define QP_STREAMS_UNSPLIT(NAME, name, ID, QK, BYTES, DT, MT, MR, SB, ...) \
    static_assert(!qc_streams<ID>() || DeviceSplit<ID>::HEAD == 0, #NAME ": the stream copies a row's contiguous bytes");
QPROF_QUANT_TYPES(QP_STREAMS_UNSPLIT)
#undef QP_STREAMS_UNSPLIT
#endif

template <int NB>
static __device__ __forceinline__ void qp_warp_reduce2(float (&acc)[2][NB]) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int c = 0; c < NB; ++c) acc[r][c] = qp_warp_sum(acc[r][c]);
}
