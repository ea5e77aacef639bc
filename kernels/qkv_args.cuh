// The fused QKV kernel's by-value argument (kernels/matvec_fused.cu). Plain C types only, so that
// tests/test_fused_args.py compiles this header on the host and checks every field's offset against
// the ctypes mirror qprof/runtime/cuda/fused_ops.py packs (a silent layout drift would hand the
// kernel wrong pointers). NVRTC-safe: no includes.
#pragma once

struct QkvSegment {
    const unsigned char* w;
    int type;  // GGML type id
    int rows;  // even: rows pair up inside a segment
    int row_bytes;
    int pad_;
};

struct QkvArgs {
    QkvSegment seg[3];  // q, k, v
    const unsigned char* xq;  // QVec of x * attn_norm, with partials
    float* q_out;    // [rows_q]
    void* k_cache;   // [n_ctx, kv_dim], float32 or float16
    void* v_cache;
    const int* pos;  // the step's position, on the device
    const float* rope_cs;  // [n_ctx][rope_dim / 2] (cos, sin) pairs: rope.cu rope_table
    float eps;
    int cols;
    int head_dim;
    int rope_dim;
    int n_ctx;
    int kv_f16;
    int pad_;
};
