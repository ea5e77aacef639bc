// Where a quantized block lies in device memory: GGUF's layout, or the split of device_layout.py (QbAt).
// Included by quant_blocks.cuh after its integer types and QbType ids; qb_at and qb_row read Block<T>::BYTES at
// instantiation. NVRTC-safe like it.
#pragma once

// ------------------------------------------------------------------ where a block lies on the device
// Blocks of 18, 34 and 210 bytes (Q4_0, Q8_0, Q6_K) leave their codes 2-aligned (loads of halfwords joined by
// funnel shifts). Such a tensor is repacked once at upload (qprof/quant/device_layout.py, checked against the
// GGUF bytes by tests/test_kernels_ptxas.py): every block's body in block order, then every block's head (its
// HEAD bytes at AT of GGUF's block: the float16 scale). The same bytes; every body (16, 32 or 208 bytes) starts
// 16-aligned. DeviceSplit mirrors device_layout.HEADS; the other types keep GGUF's layout.
// A block is found from the tensor, its index and the tensor's block count (qb_at, below); QbAt turns into
// the block pointer that the unsplit types decode from. (Q4_1's and Q5_1's 20 and 24 bytes keep 4- and 8-aligned
// codes: split, their stage took more instructions, not fewer; Q5_0's 22, split, measured no faster on the H200.)
template <int T>
struct DeviceSplit {
    static constexpr int AT = 0, HEAD = 0;
};
#define QB_DEVICE_SPLIT(ID, AT_, HEAD_)                \
    template <>                                       \
    struct DeviceSplit<ID> {                          \
        static constexpr int AT = AT_, HEAD = HEAD_; \
    };
QB_DEVICE_SPLIT(QB_Q4_0, 0, 2)   // d | qs[16]
QB_DEVICE_SPLIT(QB_Q8_0, 0, 2)   // d | qs[32]
QB_DEVICE_SPLIT(QB_Q6_K, 208, 2) // ql[128], qh[64], scales[16] | d
#undef QB_DEVICE_SPLIT

struct QbAt {
    const qb_u8* b;  // the block (a split type: its body)
    const qb_u8* d;  // a split type: its head; null for the others
    __host__ __device__ operator const qb_u8*() const { return b; }
};

// A block's head (HEAD bytes at AT of GGUF's block) and its body (the bytes before or after it) in either device
// layout, so that a type is split or not by its DeviceSplit row alone; the row must agree with the decoder's.
template <int T, int AT, int HEAD>
static __host__ __device__ __forceinline__ const qb_u8* qb_head(const QbAt& at) {
    static_assert(DeviceSplit<T>::HEAD == 0 || (DeviceSplit<T>::AT == AT && DeviceSplit<T>::HEAD == HEAD),
                  "DeviceSplit disagrees with the decoder's GGUF layout");
    return DeviceSplit<T>::HEAD > 0 ? at.d : at.b + AT;
}
template <int T, int AT, int HEAD>
static __host__ __device__ __forceinline__ const qb_u8* qb_body(const QbAt& at) {
    return DeviceSplit<T>::HEAD > 0 || AT > 0 ? at.b : at.b + HEAD;
}
// The alignment of the body's codes at offset `at` of it: 16 once split (every body 16-aligned), else GGUF's.
template <int T>
static __host__ __device__ constexpr int qb_body_align(int gguf_align) {
    return DeviceSplit<T>::HEAD > 0 ? 16 : gguf_align;
}

template <int T>
struct Block;

// ------------------------------------------------------------------ finding a block (see DeviceSplit)
// Block i of a tensor of n blocks at w.
template <int T>
static __host__ __device__ __forceinline__ QbAt qb_at(const qb_u8* w, long long i, long long n) {
    constexpr int HEAD = DeviceSplit<T>::HEAD, BODY = Block<T>::BYTES - HEAD;
    static_assert(HEAD == 0 || BODY % 16 == 0, "a split type's body must keep every block 16-aligned");
    if constexpr (HEAD > 0) {
        return QbAt{w + i * BODY, w + n * BODY + i * HEAD};
    } else {
        return QbAt{w + i * Block<T>::BYTES, nullptr};
    }
}

// Where row `row` of a tensor of `rows` rows of `blocks_per_row` blocks starts: its first block (a split
// type: its first body and head). Made per type, so the unsplit types carry one pointer a row.
struct QbRow {
    const qb_u8* b;
    const qb_u8* d;
};

template <int T>
static __host__ __device__ __forceinline__ QbRow qb_row(const qb_u8* w, int row, int blocks_per_row, int rows) {
    const QbAt at = qb_at<T>(w, (long long)row * blocks_per_row, (long long)rows * blocks_per_row);
    return QbRow{at.b, at.d};
}

template <int T>
static __host__ __device__ __forceinline__ QbAt qb_row_at(const QbRow& r, int j) {
    constexpr int HEAD = DeviceSplit<T>::HEAD;
    if constexpr (HEAD > 0) {
        return QbAt{r.b + (long long)j * (Block<T>::BYTES - HEAD), r.d + (long long)j * HEAD};
    } else {
        return QbAt{r.b + (long long)j * Block<T>::BYTES, nullptr};
    }
}

// The row after r (of blocks_per_row blocks).
template <int T>
static __host__ __device__ __forceinline__ QbRow qb_row_next(const QbRow& r, int blocks_per_row) {
    const QbAt at = qb_row_at<T>(r, blocks_per_row);
    return QbRow{at.b, at.d};
}
