"""Launchers of the fused decode projections (kernels/matvec_fused.cu): RMSNorm+QKV+RoPE+KV write, RMSNorm+gate+up+SwiGLU.

Both read the residual stream as a QVec that the op before wrote as x * norm weight with its
sum(x^2) partials (quant_ops.QVec), and write their results where the unfused ops would (q, the KV
cache rows at the step's position, act; gate+up also act as a QVec for ffn_down). Launch shapes
come from the quant traits table; qkv_supported / gate_up_supported say when the fused path applies.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from qprof.errors import QprofError
from qprof.runtime.cuda import kernels as K
from qprof.runtime.cuda.quant_ops import DeviceWeight, QVec, _launch, check_vector


class _Segment(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("type", ctypes.c_int), ("rows", ctypes.c_int),
                ("row_bytes", ctypes.c_int), ("pad_", ctypes.c_int)]


class _QkvArgs(ctypes.Structure):  # QkvArgs in kernels/qkv_args.cuh, field for field (tests/test_fused_args.py)
    _fields_ = [("seg", _Segment * 3), ("xq", ctypes.c_void_p),
                ("q_out", ctypes.c_void_p), ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
                ("pos", ctypes.c_void_p), ("rope_cs", ctypes.c_void_p), ("eps", ctypes.c_float),
                ("cols", ctypes.c_int), ("head_dim", ctypes.c_int), ("rope_dim", ctypes.c_int),
                ("n_ctx", ctypes.c_int), ("kv_f16", ctypes.c_int), ("pad_", ctypes.c_int)]


@dataclass(frozen=True)
class RopeSpec:
    head_dim: int
    rope_dim: int
    theta: float


def _quantized(*weights: DeviceWeight) -> bool:
    return all(w.traits.family != "float" for w in weights)


def qkv_supported(wq: DeviceWeight, wk: DeviceWeight, wv: DeviceWeight) -> str | None:
    """Why Q, K and V cannot go through the fused kernel, or None when they can."""
    if not _quantized(wq, wk, wv):
        return "a float-typed projection (the fused kernels read quantized blocks)"
    if len({wq.cols, wk.cols, wv.cols}) != 1:
        return "Q, K and V read inputs of different widths"
    if wk.rows != wv.rows or any(w.rows % 2 for w in (wq, wk, wv)):
        return "K and V differ in rows, or a row count is odd"
    return None


def gate_up_supported(wg: DeviceWeight, wu: DeviceWeight) -> str | None:
    if not _quantized(wg, wu):
        return "a float-typed projection (the fused kernels read quantized blocks)"
    if wg.qtype != wu.qtype or wg.shape != wu.shape:
        return f"gate ({wg.qtype} {list(wg.shape)}) and up ({wu.qtype} {list(wu.shape)}) differ"
    return None


def _rope_table(n_ctx: int, rope: RopeSpec, given: torch.Tensor | None) -> torch.Tensor:
    """The (cos, sin) table a QKV launch reads: the runtime's, shared by its layers, or one of its own."""
    from qprof.runtime.cuda.ops import rope_table

    if given is None:
        return rope_table(n_ctx, rope.rope_dim, rope.theta)
    want = (n_ctx, rope.rope_dim // 2, 2)
    if given.dtype != torch.float32 or not given.is_cuda or tuple(given.shape) != want or not given.is_contiguous():
        raise QprofError(f"fused QKV: the RoPE table must be a contiguous float32 {list(want)} device tensor")
    return given


def _segment(w: DeviceWeight) -> _Segment:
    return _Segment(w.raw.data_ptr(), w.traits.ggml_type, w.rows, w.row_bytes, 0)


class QkvLaunch:
    """One layer's fused QKV launch, its argument struct built once (a decode step pays no packing)."""

    def __init__(self, wq: DeviceWeight, wk: DeviceWeight, wv: DeviceWeight, xq: QVec, eps: float,
                 q_out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, rope: RopeSpec,
                 generic: bool = False, rope_cs: torch.Tensor | None = None):
        """xq: x * attn_norm quantized, with its partials (the RMSNorm is applied from them).

        rope_cs: ops.rope_table for the cache's positions, which a runtime makes once for all its layers
        (the launch holds it); without it the launch makes its own."""
        why = qkv_supported(wq, wk, wv)
        if why:
            raise QprofError(f"{wq.name}: fused QKV does not apply: {why}")
        cols = wq.cols
        if xq.cols != cols or xq.batch != 1:
            raise QprofError(f"{wq.name}: fused QKV reads one quantized column of {cols} values")
        check_vector(wq, q_out, "Q output", wq.rows)
        kv_dtypes = (torch.float32, torch.float16)
        for name, c in (("K cache", k_cache), ("V cache", v_cache)):
            if c.dtype not in kv_dtypes or c.dim() != 2 or c.shape[1] != wk.rows or not c.is_contiguous():
                raise QprofError(f"{wk.name}: {name} must be a contiguous float32/float16 [n_ctx, {wk.rows}] tensor")
        if k_cache.dtype != v_cache.dtype:
            raise QprofError(f"{wk.name}: K and V caches must share a dtype")
        if rope.rope_dim % 2 or rope.rope_dim > rope.head_dim or wq.rows % rope.head_dim or wk.rows % rope.head_dim:
            raise QprofError(f"{wq.name}: rope dimension {rope.rope_dim} / head size {rope.head_dim} do not fit")
        n_ctx = int(k_cache.shape[0])
        rope_cs = _rope_table(n_ctx, rope, rope_cs)
        self.weights, self.tensors = (wq, wk, wv), (xq, q_out, k_cache, v_cache, rope_cs)
        self.args = _QkvArgs((_Segment * 3)(*(_segment(w) for w in (wq, wk, wv))), xq.data.data_ptr(),
                             q_out.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), 0, rope_cs.data_ptr(),
                             float(eps), cols, rope.head_dim, rope.rope_dim, n_ctx,
                             int(k_cache.dtype == torch.float16), 0)
        self.cfg = K.qkv_launch((wq.traits, wk.traits, wv.traits), wq.rows + wk.rows + wv.rows)
        # generic: the run-time-dispatch kernel whatever the types (a check covers it on uniform weights too)
        self.kernel_name = K.QKV_KERNEL if generic else K.qkv_kernel_name(wq.qtype, wk.qtype, wv.qtype)

    def __call__(self, pos: torch.Tensor) -> None:
        """Run it for the position in the device int32 `pos` (the step's, or a scalar-upload fault's copy)."""
        from qprof.runtime.cuda.driver import KernelLibrary

        if pos.dtype != torch.int32 or not pos.is_cuda:
            raise QprofError("fused QKV: the position must be a device int32 tensor")
        self.args.pos = pos.data_ptr()
        lib = KernelLibrary.get()
        lib.launch(lib.kernel(K.FUSED_FILE, self.kernel_name), self.cfg.grid, self.cfg.block, self.args,
                   shared_bytes=self.cfg.shared_bytes)


def gate_up(wg: DeviceWeight, wu: DeviceWeight, xq: QVec, eps: float, act: torch.Tensor,
            act_q: QVec | None = None) -> torch.Tensor:
    """act[i] = silu(g_i) * u_i with g = Wg rmsnorm(x), u = Wu rmsnorm(x), in one launch.

    xq holds x * ffn_norm quantized with its partials; act_q (when given) gets act quantized.
    """
    why = gate_up_supported(wg, wu)
    if why:
        raise QprofError(f"{wg.name}: fused gate+up does not apply: {why}")
    if xq.cols != wg.cols or xq.batch != 1:
        raise QprofError(f"{wg.name}: fused gate+up reads one quantized column of {wg.cols} values")
    check_vector(wg, act, "SwiGLU output", wg.rows)
    if act_q is not None and (act_q.cols != wg.rows or act_q.batch != 1):
        raise QprofError(f"{wg.name}: the quantized SwiGLU output needs one column of {wg.rows} values")
    _launch(wg, "matvec_gate_up", None, None, lambda: K.gate_up_launch(wg.traits, wg.rows),
            wg.raw, wu.raw, xq.data, act, None if act_q is None else act_q.data, wg.rows, wg.cols, wg.row_bytes,
            float(eps))
    return act
