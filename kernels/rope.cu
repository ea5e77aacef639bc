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
// One kernel rotates Q and K of a batch of rows in place: grid (n_rows, ceil(pairs / blockDim.x)),
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
    const int pos = qp_position(pos_ptr, pos0, row);
    const float inv_freq = (float)exp(-(2.0 * i / (double)rope_dim) * log((double)theta_base));
    const float angle = (float)pos * inv_freq;
    double s, c;
    sincos((double)angle, &s, &c);
    const float x0 = base[2 * i], x1 = base[2 * i + 1];
    base[2 * i] = x0 * (float)c - x1 * (float)s;
    base[2 * i + 1] = x0 * (float)s + x1 * (float)c;
}
