// Causal grouped-query attention over the KV cache for decode (one query row). Prefill attention runs in
// torch's scaled_dot_product_attention (qprof/runtime/cuda/ops.py attention_prefill says why).
//
// Shared conventions
//   q / out: [n_head * D] float32; K and V caches of one layer: [n_ctx, n_head_kv * D] float32 or (the
//   _f16kv instances) float16; scores and sums are float32 either way.
//   Query head h reads KV head h / n_gqa. The query sits at *pos_ptr (read on the device so the step
//   can be captured in a CUDA graph), or at pos0 without a pointer.
//   Key j is visible to a query at position p when j <= p and, with a sliding window W > 0, p - j < W.
//   mask (optional, float, 0 or -inf, added to the score): when given, causality and the window
//   come from it alone and every cached key up to the forward's last position is scored. The
//   mask row of a query is its position (mask_row_by_pos = 1: the device-resident [n_ctx, n_ctx]
//   mask) or its row index in the batch (mask_row_by_pos = 0: a mask uploaded for this forward).
//
// Decode (flash-decoding, one launch): attn_decode_d<D>_g<G>[_f16kv], grid (n_head_kv, n_split), 128
//   threads, dynamic shared memory ops.py decode_shared_bytes. Each CTA reads its KV head's rows once for
//   all n_gqa query heads of the group. The live keys are split evenly over the first n_live splits of a
//   head at run time, n_live = min(n_split, ceil(keys / QP_DECODE_SPLIT_KEYS)), so the grid depends on
//   n_ctx only (the step stays graph-capturable) and a short context is not spread over CTAs that would
//   each hold a few keys. A split writes an unnormalized partial (max, sum, sum p*V) per query head; the
//   head's last split to finish (a counter per KV head) merges them into out, and into out_q as a QVec
//   for the attn_output projection.
#include "common.cuh"
#include "matvec_qvec.cuh"  // the merge writes a QVec

#define QP_DECODE_THREADS 128
#define QP_DECODE_WARPS (QP_DECODE_THREADS / QP_WARP)
#define QP_MAX_GQA 8
// Keys of one stage of a warp's ring: their K rows, then their V rows. A warp's ring holds as many stages as
// a quarter of QP_DECODE_RING_BYTES does, 1 to QP_DECODE_MAX_SLOTS (ops.py decode_shared_bytes: the same).
#define QP_DECODE_STAGE_KEYS 8
#define QP_DECODE_MAX_SLOTS 4
#define QP_DECODE_RING_BYTES (64 << 10)
// Keys a split is given at least (fewer splits at short contexts, so fewer partials to merge).
#ifndef QP_DECODE_SPLIT_KEYS
#define QP_DECODE_SPLIT_KEYS 64
#endif

struct QpMask {
    const float* ptr;
    int stride;
    int row_by_pos;
    __device__ __forceinline__ float at(int pos, int key) const {
        return ptr[(long)(row_by_pos ? pos : 0) * stride + key];
    }
};

// N consecutive float32 or float16 values from shared memory (one 16-byte load for a chunk, narrower for a
// V lane's few values), widened to float.
template <int N>
static __device__ __forceinline__ void qp_kv_values(const float* p, float (&v)[N]) {
    if constexpr (N == 4) {
        const float4 a = *reinterpret_cast<const float4*>(p);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    } else if constexpr (N == 2) {
        const float2 a = *reinterpret_cast<const float2*>(p);
        v[0] = a.x, v[1] = a.y;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = p[i];
    }
}
template <int N>
static __device__ __forceinline__ void qp_kv_values(const qb_u16* p, float (&v)[N]) {
    if constexpr (N % 2 == 0) {
        qb_u32 w[N / 2];
        if constexpr (N == 8) {
            const uint4 a = *reinterpret_cast<const uint4*>(p);
            w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
        } else if constexpr (N == 4) {
            const uint2 a = *reinterpret_cast<const uint2*>(p);
            w[0] = a.x, w[1] = a.y;
        } else {
#pragma unroll
            for (int i = 0; i < N / 2; ++i) w[i] = reinterpret_cast<const qb_u32*>(p)[i];
        }
#pragma unroll
        for (int i = 0; i < N / 2; ++i)
            v[2 * i] = qb_half_to_float(w[i] & 0xFFFF), v[2 * i + 1] = qb_half_to_float(w[i] >> 16);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = qb_half_to_float(p[i]);
    }
}

// The warp's stage of `live` keys from key0 into its slot at dst, as one cp.async group: 16 bytes a lane and
// copy, every lane a K and a V row's share, so a stage is a few coalesced instructions and its bytes in flight
// cost no registers. On the H200 one cp.async.bulk per row was slower (2026-12-01, bench_attention: 30.6 µs a
// layer at position 4096, float32 and float16 KV alike: bound by the copies' count, not their bytes). Rows
// past `live` are zero-filled (a source size of 0 reads nothing), from a valid row.
template <int D, typename KvT>
static __device__ __forceinline__ void qp_decode_stage_issue(qb_u8* dst, const KvT* k_cache, const KvT* v_cache,
                                                              long kv_off, int kv_dim, int key0, int live, int safe_row) {
    constexpr int ROW = D * (int)sizeof(KvT), PER_ROW = ROW / 16, PER_SIDE = QP_DECODE_STAGE_KEYS * PER_ROW;
    static_assert((2 * PER_SIDE) % QP_WARP == 0, "a stage is whole warp copies");
    const int lane = threadIdx.x % QP_WARP;
#pragma unroll
    for (int c = lane; c < 2 * PER_SIDE; c += QP_WARP) {
        const int side = c / PER_SIDE, key = (c % PER_SIDE) / PER_ROW, part = c % PER_ROW;
        const bool ok = key < live;
        const KvT* src = (side ? v_cache : k_cache) + (long)(ok ? key0 + key : safe_row) * kv_dim + kv_off +
                         part * (16 / (int)sizeof(KvT));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(qp_smem_addr(dst + c * 16)), "l"(src),
                     "r"(ok ? 16 : 0)
                     : "memory");
    }
}

static __device__ __forceinline__ void qp_decode_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Value i = g * D + d of a CTA's result: (max, sum p * V, sum p) over its warps' (m, l, o) in shared memory.
template <int D, int G>
static __device__ __forceinline__ float3 qp_decode_cta_part(int i, const float* s_m, const float* s_l,
                                                           const float* s_o) {
    const int g = i / D, d = i % D;
    float m = QP_NEG_INF;
#pragma unroll
    for (int w = 0; w < QP_DECODE_WARPS; ++w) m = fmaxf(m, s_m[w * G + g]);
    float o = 0.0f, l = 0.0f;
#pragma unroll
    for (int w = 0; w < QP_DECODE_WARPS; ++w) {
        const float f = s_m[w * G + g] == QP_NEG_INF ? 0.0f : __expf(s_m[w * G + g] - m);
        o = fmaf(f, s_o[(w * G + g) * D + d], o);
        l = fmaf(f, s_l[w * G + g], l);
    }
    return make_float3(m, o, l);
}

// A warp's online softmax over the stages it streams: running max m and sum l per head, and the
// unnormalized output, lane l holding dims l * VD .. l * VD + VD - 1 of every head.
template <int G, int VD>
struct QpDecodeState {
    float m[G], l[G], acc[G][VD];
};

// One CTA: the keys [start, end) of KV head kvh. Warp w streams stages w, w + 4, ... (8 keys each) through
// its ring in shared memory (cp.async.bulk, so the bytes in flight do not cost registers and the next
// stages land while this one is computed); a stage's scores, its softmax update and its p * V all read
// the slot, then the warp refills it.
// Scores: L lanes hold a key's K row, chunks sl, sl + L, ... of it (conflict-free in shared memory),
// 32 / L keys a round, all heads of the group at once against q held in registers.
template <int D, int G, typename KvT>
__device__ void attn_decode_gqa(const float* __restrict__ q, const KvT* __restrict__ k_cache,
                                const KvT* __restrict__ v_cache, float* __restrict__ part_o,
                                float* __restrict__ part_ml, int* __restrict__ done, float* __restrict__ out,
                                qb_u8* out_q, int n_gqa, int kv_dim, const int* pos_ptr, int pos0, int window,
                                QpMask mask, float scale) {
    constexpr int NT = QP_DECODE_THREADS, NW = QP_DECODE_WARPS, KS = QP_DECODE_STAGE_KEYS;
    // a chunk: 16 bytes, or 8 where a float16 row is not a multiple of 8 such chunks (D = 32, 96), so that 8
    // lanes still share a row and the q registers stay G * D / 8
    constexpr int CB = (D * (int)sizeof(KvT) / 16) % 8 == 0 ? 16 : 8;
    constexpr int EPC = CB / (int)sizeof(KvT);  // values in a chunk
    constexpr int CHUNKS = D / EPC;
    // lanes a key row: 16 for 8 heads where the row allows (the q registers stay at 64), else 8, or 4
    constexpr int L = (G >= 8 && CHUNKS % 16 == 0) ? 16 : (CHUNKS % 8 == 0 ? 8 : 4);
    constexpr int CPL = CHUNKS / L, KPR = QP_WARP / L, ROUNDS = KS / KPR;
    constexpr int VD = D / QP_WARP;  // V values a lane
    constexpr int ROW = D * (int)sizeof(KvT), STAGE = 2 * KS * ROW;
    static_assert(CHUNKS % L == 0 && KS % KPR == 0 && D % QP_WARP == 0, "head size");
    constexpr int SLOTS = QP_DECODE_RING_BYTES / NW / STAGE < 1 ? 1
                          : (QP_DECODE_RING_BYTES / NW / STAGE > QP_DECODE_MAX_SLOTS ? QP_DECODE_MAX_SLOTS
                                                                                     : QP_DECODE_RING_BYTES / NW / STAGE);
    static_assert(G <= QP_MAX_GQA && (G & (G - 1)) == 0, "heads of a CTA");
    __shared__ __align__(16) float s_p[NW][KPR][G];  // a round's softmax numerators, for the p * V lanes
    __shared__ int s_last;
    __shared__ __align__(16) float s_out[G * D];  // the heads' results, for the QVec's quantizer

    const int kvh = blockIdx.x, split = blockIdx.y, n_split = gridDim.y;
    const int lane = threadIdx.x % QP_WARP, warp = threadIdx.x / QP_WARP;
    // the position is the step's (written before the decode graph or the eager step began)
    const int pos = qp_position(pos_ptr, pos0, 0);
    const int lo = (mask.ptr == nullptr && window > 0) ? max(0, pos - window + 1) : 0;
    const int n_keys = pos - lo + 1;
    const int n_live = min(n_split, max(1, (n_keys + QP_DECODE_SPLIT_KEYS - 1) / QP_DECODE_SPLIT_KEYS));
    if (split >= n_live) return;  // a short context: this split has no keys, and the merge does not wait on it
    const int per = (n_keys + n_live - 1) / n_live;
    const int start = lo + split * per, end = min(pos + 1, start + per);
    const long kv_off = (long)kvh * D;

    const int per_warp = (int)(qp_dynamic_smem_bytes() / NW) & ~127;
    if (per_warp < SLOTS * STAGE) __trap();  // the host gave less shared memory than the ring: ops.py is out of step
    qb_u8* ring = qp_dynamic_smem + warp * per_warp;

    qp_grid_wait();  // q and this position's K and V rows come from the QKV kernel
    const int n_stages = (max(0, end - start) + KS - 1) / KS;
    const int mine = n_stages > warp ? (n_stages - warp + NW - 1) / NW : 0;  // stages warp, warp + NW, ...
    // one group a slot, empty where the warp has no such stage, so that group i is always stage i below
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) {
        const int key0 = start + (warp + i * NW) * KS;
        if (i < mine) qp_decode_stage_issue<D, KvT>(ring + i * STAGE, k_cache, v_cache, kv_off, kv_dim, key0,
                                                    min(KS, end - key0), lo);
        qp_decode_commit();
    }

    const int sl = lane % L, seg = lane / L;
    float qr[G][CPL][EPC];  // heads n_gqa .. G - 1 are zero: their results are never stored
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int c = 0; c < CPL; ++c)
#pragma unroll
            for (int e = 0; e < EPC; ++e)
                qr[g][c][e] = g < n_gqa ? q[(long)(kvh * n_gqa + g) * D + (sl + L * c) * EPC + e] * scale : 0.0f;

    QpDecodeState<G, VD> st;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        st.m[g] = QP_NEG_INF, st.l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < VD; ++e) st.acc[g][e] = 0.0f;
    }
    // Every warp runs the CTA's number of rounds (a trip count the compiler sees is uniform, so the shuffles
    // below need no divergence fallback); a warp without a stage in the last round computes on a stale
    // slot with no live key, which changes nothing.
    const int rounds = (n_stages + NW - 1) / NW;
#pragma unroll 1
    for (int i = 0; i < rounds; ++i) {
        const int slot = i % SLOTS, key0 = start + (warp + i * NW) * KS;
        const int live = i < mine ? min(KS, end - key0) : 0;
        asm volatile("cp.async.wait_group %0;" ::"n"(SLOTS - 1) : "memory");  // this lane's copies of stage i
        __syncwarp();  // and every lane's
        const KvT* kt = reinterpret_cast<const KvT*>(ring + slot * STAGE);
        const KvT* vt = kt + KS * D;
        // round by round (KPR keys each, not unrolled: the code stays small), an online softmax update each
#pragma unroll 1
        for (int r = 0; r < ROUNDS; ++r) {
            const int key = r * KPR + seg;
            float dot[G];
#pragma unroll
            for (int g = 0; g < G; ++g) dot[g] = 0.0f;
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                float kv[EPC];
                qp_kv_values<EPC>(kt + key * D + (sl + L * c) * EPC, kv);
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int e = 0; e < EPC; ++e) dot[g] = fmaf(qr[g][c][e], kv[e], dot[g]);
            }
            // the mask's entry for a live key (a dead one reads the row's last live entry, unused)
            const float bias = mask.ptr != nullptr ? mask.at(pos, key0 + min(key, max(live - 1, 0))) : 0.0f;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float sum = qp_segment_sum<L>(dot[g]);  // every lane shuffles: outside the select below
                const float s = key < live ? sum + bias : QP_NEG_INF;  // a dead key's row is stale bytes
                float mx = s;
#pragma unroll
                for (int o = L; o < QP_WARP; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(QP_FULL_MASK, mx, o));
                const float m_new = fmaxf(st.m[g], mx);
                const float alpha = m_new == QP_NEG_INF ? 1.0f : __expf(st.m[g] - m_new);
                const float p = s == QP_NEG_INF ? 0.0f : __expf(s - m_new);
                st.m[g] = m_new;
                st.l[g] = fmaf(st.l[g], alpha, p);  // this lane's segment's keys; segments are summed at the end
#pragma unroll
                for (int e = 0; e < VD; ++e) st.acc[g][e] *= alpha;
                if (sl == 0) s_p[warp][seg][g] = p;
            }
            __syncwarp();
#pragma unroll
            for (int k = 0; k < KPR; ++k) {
                float v[VD];
                qp_kv_values<VD>(vt + (r * KPR + k) * D + lane * VD, v);
#pragma unroll
                for (int e = 0; e < VD; ++e) v[e] = r * KPR + k < live ? v[e] : 0.0f;  // a dead key's row: stale bytes
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const float p = s_p[warp][k][g];
#pragma unroll
                    for (int e = 0; e < VD; ++e) st.acc[g][e] = fmaf(p, v[e], st.acc[g][e]);
                }
            }
            __syncwarp();  // s_p is rewritten by the next round
        }
        __syncwarp();  // every lane is done with the slot: refill it
        const int next0 = start + (warp + (i + SLOTS) * NW) * KS;
        if (i + SLOTS < mine) qp_decode_stage_issue<D, KvT>(ring + slot * STAGE, k_cache, v_cache, kv_off, kv_dim,
                                                            next0, min(KS, end - next0), lo);
        qp_decode_commit();
    }
    qp_grid_release();  // only the merges and stores are left
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int o = L; o < QP_WARP; o <<= 1) st.l[g] += __shfl_xor_sync(QP_FULL_MASK, st.l[g], o);

    // The CTA's four warps merged into the split's partial, through the (now idle) rings' shared memory.
    __syncthreads();
    float* s_m = reinterpret_cast<float*>(qp_dynamic_smem);  // [NW][G]
    float* s_l = s_m + NW * G;                              // [NW][G]
    float* s_o = s_l + NW * G;                              // [NW][G][D]
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (lane == 0) s_m[warp * G + g] = st.m[g], s_l[warp * G + g] = st.l[g];
#pragma unroll
        for (int e = 0; e < VD; ++e) s_o[(warp * G + g) * D + lane * VD + e] = st.acc[g][e];
    }
    __syncthreads();
    float* s_w = reinterpret_cast<float*>(qp_dynamic_smem);  // [G + 1][2][n_live]: per head (row G: none) below
    if (n_live > 1) {  // a partial per split; the head's last split merges them below
#pragma unroll 1
        for (int i = threadIdx.x; i < n_gqa * D; i += NT) {
            const float3 mol = qp_decode_cta_part<D, G>(i, s_m, s_l, s_o);
            const long part = (long)(kvh * n_gqa + i / D) * n_split + split;
            part_o[part * D + i % D] = mol.y;
            if (i % D == 0) part_ml[2 * part] = mol.x, part_ml[2 * part + 1] = mol.z;
        }
        // out[h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s, by the last split to finish. The barrier orders
        // every thread's partials before thread 0's fence and count (as a cooperative grid sync does).
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            s_last = atomicAdd(done + kvh, 1) == n_live - 1;
            if (s_last) __threadfence();  // the other splits' partials, seen through their counts
        }
        __syncthreads();
        if (!s_last) return;
#pragma unroll 1
        for (int g0 = 0; g0 < n_gqa; g0 += NW) {  // uniform trip count, as above; a warp past n_gqa redoes head 0
            const int g = g0 + warp < n_gqa ? g0 + warp : 0, gs = g0 + warp < n_gqa ? g : G;  // gs: where it writes
            const float2* ml = reinterpret_cast<const float2*>(part_ml) + (long)(kvh * n_gqa + g) * n_split;
            float* w = s_w + gs * 2 * n_live;  // the splits' m, then their l, then (in place of m) their weights
            float m = QP_NEG_INF;
#pragma unroll 1
            for (int s = lane; s < n_live; s += QP_WARP) {  // one load of each split's (m, l)
                const float2 v = __ldcg(ml + s);
                w[s] = v.x, w[n_live + s] = v.y;
                m = fmaxf(m, v.x);
            }
            m = qp_warp_max(m);
            float l = 0.0f;
#pragma unroll 1
            for (int s = lane; s < n_live; s += QP_WARP) {
                const float f = w[s] == QP_NEG_INF ? 0.0f : __expf(w[s] - m);
                w[s] = f;
                l = fmaf(f, w[n_live + s], l);
            }
            const float inv_l = 1.0f / qp_warp_sum(l);
            __syncwarp();
#pragma unroll 1
            for (int s = lane; s < n_live; s += QP_WARP) w[s] *= inv_l;
        }
        __syncthreads();
    }
    // Every value of the heads is an item of a thread: ITEMS a thread, all in registers, so the merge's loads of
    // every item and MERGE_BATCH splits go out together (one at a time, 32 splits of Mistral-7B's 4 items a thread were 16
    // round trips to L2 in a row). A warp past the heads redoes the last 32 values (the same bits again): its
    // shuffles stay uniform.
    constexpr int ITEMS = (G * D + NT - 1) / NT, MERGE_BATCH = 32 / ITEMS > 8 ? 8 : 32 / ITEMS;  // 32 loads at most
    int item[ITEMS];
    float o[ITEMS];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        item[k] = min(k * NT + (int)threadIdx.x, n_gqa * D - QP_WARP + lane);
        o[k] = 0.0f;
        if (n_live == 1) {  // one split: its own result, normalized
            const float3 mol = qp_decode_cta_part<D, G>(item[k], s_m, s_l, s_o);
            o[k] = mol.y / mol.z;
        }
    }
    if (n_live > 1) {
#pragma unroll 1
        for (int s0 = 0; s0 < n_live; s0 += MERGE_BATCH) {
#pragma unroll
            for (int k = 0; k < ITEMS; ++k) {
                const int g = item[k] / D, h = kvh * n_gqa + g;
                const float* po = part_o + (long)h * n_split * D + item[k] % D;
#pragma unroll
                for (int j = 0; j < MERGE_BATCH; ++j) {
                    const int s = min(s0 + j, n_live - 1);  // past the last split: its value again, weighted 0
                    const float w = s0 + j < n_live ? s_w[g * 2 * n_live + s] : 0.0f;
                    o[k] = fmaf(w, __ldcg(po + (long)s * D), o[k]);
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        out[(long)kvh * n_gqa * D + item[k]] = o[k];
        s_out[item[k]] = o[k];
    }
    __syncwarp();  // a warp quantizes the 32-blocks its own lanes hold, in a loop (its code once, not ITEMS times)
    if (out_q != nullptr) {
#pragma unroll 1
        for (int k = 0; k < ITEMS; ++k) {
            const int i = min(k * NT + (int)threadIdx.x, n_gqa * D - QP_WARP + lane);
            qp_quantize_block32<1>(s_out[i], s_out[i], out_q, gridDim.x * n_gqa * D, 0, (kvh * n_gqa * D + i) / 32);
        }
    }
    if (n_live > 1 && threadIdx.x == 0) done[kvh] = 0;  // ready for the next step (and the next replay of a graph)
}

// attn_decode_d<D>_g<G>[_f16kv]: G the query heads of a KV head the kernel computes, the power of two at
// or above n_gqa (ops.py decode_heads), so its loops over heads unroll whole without running code
// for more heads than needed beyond the rounding.
#define QP_ATTN_ENTRY(D, G, SUFFIX, KV)                                                                         \
    extern "C" __global__ void __launch_bounds__(QP_DECODE_THREADS, 1) attn_decode_d##D##_g##G##SUFFIX(           \
        const float* q, const KV* k_cache, const KV* v_cache, float* part_o, float* part_ml, int* done,        \
        float* out, qb_u8* out_q, int n_gqa, int kv_dim, const int* pos_ptr, int pos0, int window,            \
        const float* mask, int mask_stride, int mask_row_by_pos, float scale) {                                \
        attn_decode_gqa<D, G, KV>(q, k_cache, v_cache, part_o, part_ml, done, out, out_q, n_gqa, kv_dim,       \
                                  pos_ptr, pos0, window, QpMask{mask, mask_stride, mask_row_by_pos}, scale); \
    }
#define QP_ATTN_HEADS(D, G) QP_ATTN_ENTRY(D, G, , float) QP_ATTN_ENTRY(D, G, _f16kv, qb_u16)
#define QP_ATTN_INSTANCES(D) QP_ATTN_HEADS(D, 1) QP_ATTN_HEADS(D, 2) QP_ATTN_HEADS(D, 4) QP_ATTN_HEADS(D, 8)

QP_ATTN_INSTANCES(32)
QP_ATTN_INSTANCES(64)
QP_ATTN_INSTANCES(96)
QP_ATTN_INSTANCES(128)
