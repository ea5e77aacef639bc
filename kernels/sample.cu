// Greedy sampling on the device (argmax over a row of logits, so only the token id goes to the
// host) and the hand-off of the next token to the decode step.
//
// argmax_f32: one CTA of blockDim.x threads (power of two, <= 1024) per row; grid = n_rows.
// Ties go to the lowest index and NaN counts as the largest value, like torch.argmax.
// step_set: writes (token, position) into the decode step's device input. Both travel as kernel
// parameters, so a decode step needs no host->device copy, and a captured graph reads them there.
// step_chain: the same input, but the token is the one the last argmax wrote on the device: greedy decode
// queues its next step before the host has read that token (one token in flight).
#include "common.cuh"

static __device__ __forceinline__ bool qp_better(float v, int i, float best, int best_i) {
    const bool vn = isnan(v), bn = isnan(best);
    if (vn != bn) return vn;
    if (v != best && !vn) return v > best;
    return i < best_i;
}

extern "C" __global__ void argmax_f32(const float* __restrict__ logits, int n, int* __restrict__ out) {
    __shared__ float s_val[1024];
    __shared__ int s_idx[1024];
    const float* row = logits + (long)blockIdx.x * n;
    float best = QP_NEG_INF;
    int best_i = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = row[i];
        if (qp_better(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
    s_val[threadIdx.x] = best;
    s_idx[threadIdx.x] = best_i;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            const float v = s_val[threadIdx.x + stride];
            const int i = s_idx[threadIdx.x + stride];
            if (qp_better(v, i, s_val[threadIdx.x], s_idx[threadIdx.x])) {
                s_val[threadIdx.x] = v;
                s_idx[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s_idx[0];
}

extern "C" __global__ void step_set(int* step, int token, int pos) {
    if (threadIdx.x == 0) {
        step[0] = token;
        step[1] = pos;
    }
}

extern "C" __global__ void step_chain(int* step, const int* __restrict__ token, int pos) {
    if (threadIdx.x == 0) {
        step[0] = token[0];
        step[1] = pos;
    }
}
