"""Kernel families from kernel names: one table of name patterns per engine (data; the first match wins).

Each row is (engine, family, pattern). The pattern is a regular expression searched in the
lower-cased kernel name; demangled C++ names carry the most (template arguments such as
llama.cpp's `(ggml_type)12`), so parsers classify the demangled name when the trace has one.
To teach qprof another engine, add rows to FAMILY_PATTERNS (most specific first) and a test
name for each in tests/test_analysis_families.py.

Names no row matches: qprof's own kernels are `<family>_<qtype>[_variant]` (matvec_q4_k ->
matvec, Q4_K) or plain C identifiers, which name their own family (step_set); anything
else (a C++ name nothing here knows) is "other", and reports name its top kernels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qprof.quant.traits import ALL_TYPES

OTHER = "other"

# (engine, family, pattern searched in the lower-cased name). Order matters: the first match wins.
FAMILY_PATTERNS: tuple[tuple[str, str, str], ...] = (
    # attention kernels first: several carry "cutlass" or "gemm" in their names
    ("flash-attention", "flash_attention", r"flash_fwd|flash_bwd|flash::|flash_attn_(fwd|bwd|varlen)"),
    ("cuDNN", "flash_attention", r"cudnn.*sdpa|sdpa.*flash|cudnn.*flash"),
    ("PyTorch", "flash_attention", r"fmha|efficient_attention|mem_eff_attention"),
    ("llama.cpp", "flash_attention", r"\bflash_attn_(ext|combine|stream_k|tile|vec|mask)"),
    # llama.cpp (ggml-cuda): one family per op file
    ("llama.cpp", "matvec", r"\bmul_mat_vec"),
    ("llama.cpp", "matmul", r"\bmul_mat_q|\bmul_mat_f\b|\bmul_mat_f<"),
    ("llama.cpp", "rmsnorm", r"\brms_norm"),
    ("llama.cpp", "norm", r"\b(norm|group_norm|l2_norm)_f32"),
    ("llama.cpp", "rope", r"\brope_(norm|neox|multi|vision)"),
    ("llama.cpp", "quantize", r"\bquantize_(q8_1|mmq)"),
    ("llama.cpp", "convert", r"\bconvert_|\bdequantize_block|\bk_convert"),
    ("llama.cpp", "cpy", r"\bcpy_|\bk_set_rows|\bset_rows"),
    ("llama.cpp", "get_rows", r"\bk_get_rows"),
    ("llama.cpp", "softmax", r"\bsoft_max"),
    ("llama.cpp", "binary", r"\bk_bin_bcast"),
    ("llama.cpp", "unary", r"\bunary_|\bk_unary|\bop_silu|\bsilu_f32|\bgelu_f32"),
    # BLAS libraries
    ("cuBLAS", "gemv", r"gemv"),
    ("cuBLAS", "gemm", r"nvjet|gemm|cublas|splitkreduce|xmma|^(sm\d+|ampere|hopper|volta|turing)_"),
    ("CUTLASS", "gemm", r"cutlass"),
    # Triton (torch.compile and hand-written): inductor's prefixes say what was fused
    ("Triton", "triton_pointwise", r"^triton_poi"),
    ("Triton", "triton_reduce", r"^triton_(red|per)"),
    ("Triton", "triton_gemm", r"^triton_tem|^triton_.*(mm|matmul)"),
    ("Triton", "triton", r"^triton_|triton"),
    # PyTorch (ATen) native kernels
    ("PyTorch", "torch_softmax", r"softmax"),
    ("PyTorch", "torch_copy", r"copy_kernel|catarraybatchedcopy|direct_copy|copy_device_to_device"),
    ("PyTorch", "torch_index", (r"index_select|indexselect|gather_kernel|scatter|index_put|index_kernel|"
                               r"indexfunc|index_elementwise|embedding")),
    ("PyTorch", "torch_reduce", (r"reduce_kernel|devicescan|devicereduce|deviceradixsort|devicesegmented|"
                                r"layer_norm|batch_norm|cunn_")),
    ("PyTorch", "torch_elementwise", r"elementwise_kernel|at::native|at_cuda_detail"),
)

# GGML_TYPE_* enum values (ggml.h) for the types qprof knows; llama.cpp's templated kernels name them
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
              11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
_GGML_TYPE = re.compile(r"\(ggml_type\)(\d+)")
_QTYPES = sorted((t.lower() for t in ALL_TYPES), key=len, reverse=True)
_OURS = re.compile(r"^(?P<family>[a-z][a-z0-9_]*?)_(?P<qtype>" + "|".join(_QTYPES) + r")(?:_(?P<rest>[a-z0-9_]+))?$")
# a head-dim template, its heads per KV head and its KV type: attn_decode_d64, attn_decode_d128_g4_f16kv
_SPECIALIZED = re.compile(r"^(?P<family>[a-z][a-z0-9_]*?)_d\d+(?:_g\d+)?(?:_f16kv)?$")
_PLAIN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class KernelClass:
    family: str
    qtype: str | None
    engine: str | None  # who wrote the kernel ("llama.cpp", "cuBLAS", "PyTorch", ...); None when no row matched


_COMPILED = tuple((engine, family, re.compile(pattern)) for engine, family, pattern in FAMILY_PATTERNS)


def classify(name: str) -> KernelClass:
    """Family, quant type and engine of one kernel name (short or demangled)."""
    low = name.strip().lower()
    for engine, family, pattern in _COMPILED:
        if pattern.search(low):
            m = _GGML_TYPE.search(low)
            qtype = GGML_TYPES.get(int(m.group(1))) if m else None
            return KernelClass(family, qtype, engine)
    m = _OURS.match(low)
    if m:
        return KernelClass(m.group("family"), m.group("qtype").upper(), None)
    m = _SPECIALIZED.match(low)
    if m:
        return KernelClass(m.group("family"), None, None)
    if _PLAIN.match(low):
        return KernelClass(low, None, None)
    return KernelClass(OTHER, None, None)


def classify_kernel(name: str) -> tuple[str, str | None]:
    """(family, qtype) of a kernel name: matvec_q4_k -> ("matvec", "Q4_K"), nvjet_... -> ("gemm", None)."""
    got = classify(name)
    return got.family, got.qtype


_TEMPLATE = re.compile(r"<[^<>]*>")


def short_name(name: str) -> str:
    """A demangled C++ kernel name without return type, namespaces, template arguments and parameters.

    'void at::native::reduce_kernel<512, 1, ...>(T3)' -> 'reduce_kernel'; a plain name is returned as is.
    """
    text = name.strip()
    if "(" not in text and "<" not in text and "::" not in text:
        return text
    prev = None
    while prev != text:  # strip nested template argument lists from the inside out
        prev, text = text, _TEMPLATE.sub("", text)
    text = text.split("(", 1)[0].strip()
    text = text.rsplit(" ", 1)[-1]
    return text.rsplit("::", 1)[-1] or name
