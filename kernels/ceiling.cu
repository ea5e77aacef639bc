// Card ceilings (qprof.ceilings.measure): a streaming read of a buffer many times the L2, to measure
// the read bandwidth decode is bound by.
//
// stream_read_sum: every thread walks the buffer grid-stride in 16-byte loads, CEIL_READ_UNROLL of them in
// flight, with evict-first (__ldcs) loads since nothing is read twice. Each block writes the wrapping 32-bit
// sum of every word it read to block_sums[blockIdx.x]: the loads feed a result, so they cannot be optimised
// away, and the host checks that the block sums add up to the buffer's sum (every word read exactly once).
// Launch: block CEIL_READ_THREADS (a multiple of 32, at most 1024), any grid; n_vec = buffer bytes / 16.

#define CEIL_READ_UNROLL 4
#define CEIL_WARP 32

__device__ __forceinline__ unsigned int ceil_word_sum(const uint4 v) { return v.x + v.y + v.z + v.w; }

extern "C" __global__ void stream_read_sum(const uint4* __restrict__ src, long long n_vec,
                                           unsigned int* __restrict__ block_sums) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int acc = 0u;
    for (; i + (CEIL_READ_UNROLL - 1) * stride < n_vec; i += CEIL_READ_UNROLL * stride) {
        uint4 v[CEIL_READ_UNROLL];
#pragma unroll
        for (int u = 0; u < CEIL_READ_UNROLL; ++u) v[u] = __ldcs(src + i + u * stride);
#pragma unroll
        for (int u = 0; u < CEIL_READ_UNROLL; ++u) acc += ceil_word_sum(v[u]);
    }
    for (; i < n_vec; i += stride) acc += ceil_word_sum(__ldcs(src + i));

    for (int o = CEIL_WARP / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    __shared__ unsigned int warp_sums[1024 / CEIL_WARP];
    const int lane = threadIdx.x % CEIL_WARP, warp = threadIdx.x / CEIL_WARP;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        unsigned int s = lane < (int)(blockDim.x / CEIL_WARP) ? warp_sums[lane] : 0u;
        for (int o = CEIL_WARP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) block_sums[blockIdx.x] = s;
    }
}

// Instruction fetch (tests/gpu/bench_attention.py --fetch): CEIL_FETCH_FMAS multiply-adds per thread
// in 8 independent chains, as straight-line code (about 64 KB of SASS) or as a loop of 64 of them
// (under 2 KB), so that the two differ only in how much code the SMs fetch. The sum is stored only when
// it is exactly `never`, which the host never passes, so no store happens yet nothing can be dropped.
#define CEIL_FETCH_FMAS 4096

template <int N>
__device__ __forceinline__ void ceil_fma_chains(float (&a)[8]) {
#pragma unroll
    for (int i = 0; i < N / 8; ++i)
#pragma unroll
        for (int k = 0; k < 8; ++k) a[k] = fmaf(a[k], 1.0001f, 0.25f);
}

__device__ __forceinline__ void ceil_fetch_keep(const float (&a)[8], float* out, float never) {
    const float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    if (s == never) out[threadIdx.x] = s;
}

extern "C" __global__ void fetch_straight(float* out, float seed, float never) {
    float a[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = seed + k;
    ceil_fma_chains<CEIL_FETCH_FMAS>(a);
    ceil_fetch_keep(a, out, never);
}

extern "C" __global__ void fetch_loop(float* out, float seed, float never) {
    float a[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] = seed + k;
#pragma unroll 1
    for (int i = 0; i < CEIL_FETCH_FMAS / 64; ++i) ceil_fma_chains<64>(a);
    ceil_fetch_keep(a, out, never);
}
