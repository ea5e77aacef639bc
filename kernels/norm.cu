// RMSNorm over rows and the residual add: the two elementwise-reduction ops of every layer.
//
// rmsnorm_f32: one CTA per row; out[r, i] = x[r, i] / sqrt(mean(x[r, :]^2) + eps) * w[i].
//   Any blockDim.x that is a multiple of 32 (up to 1024) is correct: threads stride the row.
//   A decode step normalizes one 4096-wide row with one CTA, so the kernel is pure latency: each
//   thread issues all its 16-byte loads of x (and of w, before the reduction) at once and keeps the
//   first chunk of x in registers for the output pass, instead of a chain of dependent 4-byte loads.
//   Rows whose length or pointers are not 16-byte multiples take the plain strided loop.
#include "common.cuh"

#define QP_NORM_VEC 4  // float4 loads per thread in flight per chunk: 4096 floats at 256 threads

static __device__ __forceinline__ float qp_sumsq4(float4 v) { return (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w); }

static __device__ __forceinline__ float4 qp_scale_mul4(float4 v, float s, float4 w) {
    return make_float4(v.x * s * w.x, v.y * s * w.y, v.z * s * w.z, v.w * s * w.w);
}

extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ out, int n, float eps) {
    __shared__ float scratch[QP_WARP];
    const long row = blockIdx.x;
    const float* xr = x + row * n;
    float* orow = out + row * n;
    float ss = 0.0f;
    const unsigned long long addr_bits = reinterpret_cast<unsigned long long>(xr) |
                                         reinterpret_cast<unsigned long long>(orow) |
                                         reinterpret_cast<unsigned long long>(w);
    if (n % 4 == 0 && (addr_bits & 15) == 0) {
        const int n4 = n / 4, step = QP_NORM_VEC * blockDim.x;
        const float4* x4 = reinterpret_cast<const float4*>(xr);
        const float4* w4 = reinterpret_cast<const float4*>(w);
        float4* o4 = reinterpret_cast<float4*>(orow);
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float4 xk[QP_NORM_VEC], wk[QP_NORM_VEC];  // the first chunk, kept for the output pass
#pragma unroll
        for (int u = 0; u < QP_NORM_VEC; ++u) {
            const int i = threadIdx.x + u * blockDim.x;
            xk[u] = i < n4 ? x4[i] : zero;
            wk[u] = i < n4 ? w4[i] : zero;
        }
#pragma unroll
        for (int u = 0; u < QP_NORM_VEC; ++u) ss += qp_sumsq4(xk[u]);
        for (int base = step; base < n4; base += step) {  // rows longer than one chunk
            float4 v[QP_NORM_VEC];
#pragma unroll
            for (int u = 0; u < QP_NORM_VEC; ++u) {
                const int i = base + threadIdx.x + u * blockDim.x;
                v[u] = i < n4 ? x4[i] : zero;
            }
#pragma unroll
            for (int u = 0; u < QP_NORM_VEC; ++u) ss += qp_sumsq4(v[u]);
        }
        ss = qp_block_sum(ss, scratch);
        const float scale = rsqrtf(ss / (float)n + eps);
#pragma unroll
        for (int u = 0; u < QP_NORM_VEC; ++u) {
            const int i = threadIdx.x + u * blockDim.x;
            if (i < n4) o4[i] = qp_scale_mul4(xk[u], scale, wk[u]);
        }
        for (int base = step; base < n4; base += step) {
#pragma unroll
            for (int u = 0; u < QP_NORM_VEC; ++u) {
                const int i = base + threadIdx.x + u * blockDim.x;
                if (i < n4) o4[i] = qp_scale_mul4(x4[i], scale, w4[i]);
            }
        }
        return;
    }
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
