// SwiGLU gate of the llama MLP: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
#include "common.cuh"

extern "C" __global__ void swiglu_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                      float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        // expf (not __expf): --use_fast_math maps it to the fast path anyway; keep the intent exact.
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
