// Programmatic dependent launch (sm_90): a decode kernel lets the next one be launched once all of
// its CTAs have passed qp_grid_release, so the next kernel's CTAs start beside its tail, ask L2 for
// their weights, and only then wait (qp_grid_wait) until this grid has finished and its writes are
// visible. The matvecs release after their weight loop. On the H200 (2026-12-01) decode ran slower
// launched this way than plainly, released at the kernels' start or after the loop alike, with or
// without the warm (QP_MV_WARM_BYTES), so --pdl is off by default (README).
// The host launches a kernel this way only when its PTX holds the wait (driver.py), and a kernel so
// launched must read nothing the previous kernels write, and write nothing they read, before
// qp_grid_wait. Without the launch attribute both are no-ops.
#pragma once

static __device__ __forceinline__ void qp_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void qp_grid_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
