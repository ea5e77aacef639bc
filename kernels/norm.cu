// RMSNorm over rows and the residual add: the two elementwise-reduction ops of every layer.
//
// rmsnorm_f32: one CTA per row; out[r, i] = x[r, i] / sqrt(mean(x[r, :]^2) + eps) * w[i].
//   Any blockDim.x that is a multiple of 32 (up to 1024) is correct: threads stride the row.
// add_f32: out[i] = a[i] + b[i]; out may alias a (the residual stream is updated in place).
#include "common.cuh"

extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ out, int n, float eps) {
    __shared__ float scratch[QP_WARP];
    const long row = blockIdx.x;
    const float* xr = x + row * n;
    float* orow = out + row * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i];
        ss += v * v;
    }
    ss = qp_block_sum(ss, scratch);
    const float scale = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

extern "C" __global__ void add_f32(const float* a, const float* b, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}
