// Rotary position embedding, NORMAL (GPT-J style) mode: rotates adjacent pairs (x[2i], x[2i+1]).
//
// GGUF llama/Mistral files store Q and K rows already permuted by convert_hf_to_gguf, so the
// adjacent-pair rotation here equals HF's rotate_half on the original weights.
// Angle of pair i at position p: p * theta_base^(-2i / rope_dim); dims >= rope_dim pass through.
// The frequency and the angle are rounded to float32 as the CPU reference, transformers and
// llama.cpp do (so all of them rotate by the same angle), but sin/cos run in double:
// --use_fast_math turns float sinf/cosf into hardware approximations whose error grows with the
// argument, and positions reach thousands of radians.
//
// rope_f32 rotates Q and K of a batch of rows in place: grid (n_rows, ceil(pairs / blockDim.x)),
// pairs = (n_head_q + n_head_k) * rope_dim / 2. Positions: *pos_ptr + row when pos_ptr is given
// (decode reads the step's position from the device), else pos0 + row.
#include "common.cuh"

extern "C" __global__ void rope_f32(float* __restrict__ q, float* __restrict__ k, int n_head_q,
                                    int n_head_k, int head_dim, int rope_dim, float theta_base,
                                    const int* __restrict__ pos_ptr, int pos0) {
    const int row = blockIdx.x;
    const int half = rope_dim / 2;
    const int pair = blockIdx.y * blockDim.x + threadIdx.x;
    if (pair >= (n_head_q + n_head_k) * half) return;
    const int head = pair / half, i = pair % half;
    float* base;
    if (head < n_head_q) {
        base = q + ((long)row * n_head_q + head) * head_dim;
    } else {
        base = k + ((long)row * n_head_k + (head - n_head_q)) * head_dim;
    }
    float c, s;
    qp_rope_cos_sin(qp_position(pos_ptr, pos0, row), i, rope_dim, theta_base, c, s);
    const float x0 = base[2 * i], x1 = base[2 * i + 1];
    base[2 * i] = x0 * c - x1 * s;
    base[2 * i + 1] = x0 * s + x1 * c;
}

// table[pos][i] = (cos, sin) of pair i at position pos, for pos < n_ctx: made once per runtime, read by
// the fused QKV epilogue (matvec_fused.cu) instead of double sin/cos per pair, which cost it registers
// and a stack. Grid (n_ctx, ceil(rope_dim / 2 / blockDim.x)).
extern "C" __global__ void rope_table(float2* __restrict__ table, int n_ctx, int rope_dim, float theta_base) {
    const int pos = blockIdx.x, half = rope_dim / 2;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (pos >= n_ctx || i >= half) return;
    float c, s;
    qp_rope_cos_sin(pos, i, rope_dim, theta_base, c, s);
    table[(long)pos * half + i] = make_float2(c, s);
}
