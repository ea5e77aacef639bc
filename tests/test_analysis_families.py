"""Kernel families from kernel names: qprof's own, llama.cpp, cuBLAS/CUTLASS/nvjet, PyTorch, flash-attention, Triton."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qprof.analysis.families import FAMILY_PATTERNS, OTHER, classify, classify_kernel, short_name

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


@pytest.mark.parametrize("name, expected", [
    # qprof's own: <family>_<qtype>[_variant] or a plain identifier
    ("matvec_q4_k", ("matvec", "Q4_K")),
    ("matvec_q6_k_b1", ("matvec", "Q6_K")),
    ("dequant_q6_k_f16", ("dequant", "Q6_K")),
    ("get_rows_q8_0", ("get_rows", "Q8_0")),
    ("rmsnorm_f32", ("rmsnorm", "F32")),
    ("swiglu_f32", ("swiglu", "F32")),
    ("attn_decode_d64", ("attn_decode", None)),
    ("attn_decode_d128_g4", ("attn_decode", None)),
    ("attn_decode_d128_g4_f16kv", ("attn_decode", None)),
    ("attn_combine", ("attn_combine", None)),
    # BLAS
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32_execute_kernel__5x_cublas", ("gemm", None)),
    ("nvjet_sm90_hsh_8x64_64x16_2x1_v_bz_TNN", ("gemm", None)),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nn_align1>(T1::Params)", ("gemm", None)),
    ("void cublasLt::splitKreduce_kernel<(int)32, (int)16, int, float, __half>(cublasLt::cublasSplitKParams<T6>)",
     ("gemm", None)),
    ("gemv2T_kernel_val<int, int, float, float, float, 128, 16, 4, 4, false>", ("gemv", None)),
    # llama.cpp, with the weight type from (ggml_type)N
    ("void mul_mat_vec_q<(ggml_type)12, (int)1, (bool)1, (bool)0, (bool)0>(const void *, const void *)",
     ("matvec", "Q4_K")),
    ("void mul_mat_vec_q<(ggml_type)14, (int)1, (bool)0, (bool)0, (bool)0>(const void *)", ("matvec", "Q6_K")),
    ("void mul_mat_q<(ggml_type)12, (int)64, (bool)0, (ggml_prec)30>(const char *)", ("matmul", "Q4_K")),
    ("void mul_mat_q_stream_k_fixup<(ggml_type)14, (int)64, (bool)0, (ggml_prec)30>(const int *)", ("matmul", "Q6_K")),
    ("void flash_attn_ext_vec<(int)128, (int)1, (ggml_type)1, (ggml_type)1, (bool)0>(const char *)",
     ("flash_attention", "F16")),
    ("void flash_attn_combine_results<(int)128>(const float *, const float2 *, float *, int)",
     ("flash_attention", None)),
    ("void rms_norm_f32<(int)1024, (bool)1, (bool)0, (bool)0>(const float *, float *)", ("rmsnorm", None)),
    ("void rope_norm<(bool)1, (bool)0, float, float>(const T3 *, T4 *)", ("rope", None)),
    ("quantize_q8_1(const float *, void *, long, long, long, long, long, unsigned int, uint3)", ("quantize", None)),
    ("void quantize_mmq_q8_1<(mmq_q8_1_ds_layout)1, (bool)0>(const float *)", ("quantize", None)),
    ("void convert_unary<__half, float>(const void *, float *)", ("convert", None)),
    ("void cpy_f32_f16<&cpy_1_f32_f16>(const char *, char *)", ("cpy", None)),
    ("void k_set_rows<float, long, __half>(const T1 *, const T2 *, T3 *)", ("cpy", None)),
    ("void k_get_rows_float<float, float>(const T1 *, const int *, T2 *)", ("get_rows", None)),
    ("void k_bin_bcast<&op_add, float, float, float, const float *>(const T2 *)", ("binary", None)),
    ("void unary_gated_op_kernel<&op_silu, float>(const T2 *, const T2 *, T2 *)", ("unary", None)),
    ("void soft_max_f32<(bool)1, (int)0, (int)0>(const float *)", ("softmax", None)),
    # flash-attention (Dao), cuDNN and PyTorch SDPA
    ("void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>>(Flash_fwd_params)",
     ("flash_attention", None)),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1x1_kernel0_0",
     ("flash_attention", None)),
    ("fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t>::Params)",
     ("flash_attention", None)),
    # PyTorch (ATen)
    ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::FillFunctor<float>>(int, T2, T3)",
     ("torch_elementwise", None)),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase &)>",
     ("torch_copy", None)),
    ("void at::native::<unnamed>::CatArrayBatchedCopy<at::native::<unnamed>::OpaqueType<(unsigned int)4>>(T1 *)",
     ("torch_copy", None)),
    ("void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>(T3)",
     ("torch_reduce", None)),
    ("void at::native::<unnamed>::indexSelectSmallIndex<c10::Half, long, unsigned int, (int)2, (int)2, (int)-2>()",
     ("torch_index", None)),
    ("void at::native::vectorized_gather_kernel<(int)16, long>(char *, char *, T2 *, int)", ("torch_index", None)),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float>(float *)",
     ("torch_softmax", None)),
    # Triton (torch.compile)
    ("triton_poi_fused_add_mul_0", ("triton_pointwise", None)),
    ("triton_red_fused__to_copy_mean_pow_1", ("triton_reduce", None)),
    ("triton_tem_fused_mm_4", ("triton_gemm", None)),
    # nothing knows it
    ("void some::library::mystery_kernel<int>(int)", (OTHER, None)),
    ("weird$name", (OTHER, None)),
])
def test_families(name, expected):
    assert classify_kernel(name) == expected


def test_engine_is_recorded_where_a_row_matched():
    assert classify("void mul_mat_vec_q<(ggml_type)12>(const void *)").engine == "llama.cpp"
    assert classify("nvjet_sm90_hsh_64x8_64x16_4x1_v_bz_TNT").engine == "cuBLAS"
    assert classify("void at::native::reduce_kernel<512>(T3)").engine == "PyTorch"
    assert classify("matvec_q4_k").engine is None  # qprof's own naming rule, not a table row


def test_every_qprof_kernel_keeps_its_own_family():
    """No engine pattern captures a kernel of kernels/*.cu: each keeps the family its name states."""
    names = set()
    for cu in KERNELS.glob("*.cu"):
        names |= set(re.findall(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s*)?([a-z][a-z0-9_]*)\s*\(',
                                cu.read_text()))
    assert len(names) >= 8
    for name in names:
        got = classify(name)
        assert got.engine is None, f"{name} matched the {got.engine} row for {got.family}"
        assert got.family != OTHER


def test_patterns_compile_and_name_an_engine():
    for engine, family, pattern in FAMILY_PATTERNS:
        assert engine and family and re.compile(pattern)


@pytest.mark.parametrize("name, short", [
    ("void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float>>(T3)", "reduce_kernel"),
    ("void at::native::<unnamed>::CatArrayBatchedCopy<at::native::<unnamed>::OpaqueType<(unsigned int)4>>(T1 *)",
     "CatArrayBatchedCopy"),
    ("quantize_q8_1(const float *, void *, long)", "quantize_q8_1"),
    ("nvjet_sm90_hsh_8x64_64x16_2x1_v_bz_TNN", "nvjet_sm90_hsh_8x64_64x16_2x1_v_bz_TNN"),
    ("matvec_q4_k", "matvec_q4_k"),
])
def test_short_name(name, short):
    assert short_name(name) == short
