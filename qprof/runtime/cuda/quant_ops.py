"""Quantized weights on the GPU and the ops that read them: dequantize, get_rows, matvec, matmul.

A DeviceWeight is the GGUF block bytes of one matrix uploaded once, used in place by every
kernel. Launch shapes come from kernels.py, which derives them from the quant traits table.
Output tensors are passed in (static buffers for a graph-capturable decode); every call checks
dtypes, shapes and devices and raises a one-line QprofError instead of launching on bad input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from qprof.errors import QprofError
from qprof.quant import device_layout
from qprof.quant.traits import QuantTraits, traits
from qprof.runtime.cuda import kernels as K


@dataclass
class DeviceWeight:
    """One weight matrix as block bytes in device memory, rows * row_bytes of them: GGUF's layout, or for the
    split types (Q4_0, Q8_0, Q6_K) the repacked one the kernels read (qprof.quant.device_layout; from_bytes repacks)."""

    name: str
    qtype: str
    shape: tuple[int, int]  # (rows, cols), torch order: one output per row
    raw: torch.Tensor = field(repr=False)  # uint8, CUDA, rows * row_bytes
    traits: QuantTraits = field(repr=False)
    # (family, variant, launch key) -> (kernel handle, LaunchConfig): a decode step pays no lookups
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        want = self.traits.row_bytes(self.shape[1]) * self.shape[0]
        if self.raw.dtype != torch.uint8 or not self.raw.is_cuda or not self.raw.is_contiguous():
            raise QprofError(f"{self.name}: raw bytes must be a contiguous uint8 CUDA tensor")
        _check_size(self.name, self.traits, self.shape, self.raw.numel())
        room = self.raw.untyped_storage().nbytes() - self.raw.storage_offset()
        if self.raw.data_ptr() % 16 or room < -(-want // 16) * 16:
            raise QprofError(f"{self.name}: raw bytes must start 16-byte aligned with room to a 16-byte multiple "
                             "(the matvec copies 16-byte spans); make them with device_bytes()")

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def row_bytes(self) -> int:
        return self.traits.row_bytes(self.cols)

    @property
    def n_bytes(self) -> int:
        return self.raw.numel()

    @classmethod
    def from_bytes(cls, name: str, qtype: str, shape: tuple[int, ...], raw: np.ndarray | torch.Tensor) -> DeviceWeight:
        """Upload a tensor's GGUF bytes (any shape whose size is rows * row_bytes) once, in the device layout."""
        t = traits(qtype)
        if len(shape) == 1:
            shape = (1, shape[0])
        if len(shape) != 2:
            raise QprofError(f"{name}: expected a matrix or a vector, got shape {tuple(shape)}")
        if isinstance(raw, np.ndarray):
            with warnings.catch_warnings():  # a read-only memmap is fine: it is only copied to the device
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                raw = torch.from_numpy(np.ascontiguousarray(raw))
        shape = (int(shape[0]), int(shape[1]))
        _check_size(name, t, shape, raw.numel())  # before the repack, which needs whole blocks
        flat = device_layout.to_device(t.name, raw.reshape(-1).to(dtype=torch.uint8))
        data = device_bytes(flat.numel())
        data.copy_(flat)
        return cls(name, t.name, shape, data, t)

    @classmethod
    def from_tensor_info(cls, info) -> DeviceWeight:
        """Upload a qprof.model.gguf_file.TensorInfo's raw bytes once."""
        return cls.from_bytes(info.name, info.qtype, tuple(info.shape), info.raw)


def _check_size(name: str, t: QuantTraits, shape: tuple[int, int], n_bytes: int) -> None:
    rows, cols = shape
    want = rows * t.row_bytes(cols)
    if n_bytes != want:
        raise QprofError(f"{name}: {t.name} {rows}x{cols} needs {want} bytes, got {n_bytes}")


def device_bytes(n: int) -> torch.Tensor:
    """An uninitialised uint8 CUDA tensor of n bytes whose storage runs to a 16-byte multiple: the
    matvec's copy engine moves 16-byte aligned spans, up to 15 bytes past the last row's end."""
    return torch.empty(-(-n // 16) * 16, dtype=torch.uint8, device="cuda")[:n]


# ------------------------------------------------------------------ argument checks


def _check(t: torch.Tensor, what: str, w: DeviceWeight, dtypes: tuple[torch.dtype, ...],
           shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise QprofError(f"{w.name}: {what} must be a torch tensor, got {type(t).__name__}")
    names = "/".join(str(d).replace("torch.", "") for d in dtypes)
    if t.dtype not in dtypes:
        raise QprofError(f"{w.name}: {what} must be {names}, got {str(t.dtype).replace('torch.', '')}")
    if not t.is_cuda:
        raise QprofError(f"{w.name}: {what} must be on the GPU")
    if tuple(t.shape) != tuple(shape):
        raise QprofError(f"{w.name}: {what} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous() or t.data_ptr() % 16:
        raise QprofError(f"{w.name}: {what} must be contiguous and 16-byte aligned")


def _batch(x: torch.Tensor) -> int:
    return 1 if x.dim() == 1 else int(x.shape[0])


def _launch(w: DeviceWeight, family: str, variant: str | None, key, make_cfg, *args) -> None:
    """Launch the weight's kernel of `family`; its handle and launch shape are cached on the weight."""
    from qprof.runtime.cuda.driver import KernelLibrary

    plan = w._plans.get((family, variant, key))
    if plan is None:
        plan = w._plans[(family, variant, key)] = (K.kernel(family, w.qtype, variant), make_cfg())
    kern, cfg = plan
    KernelLibrary.get().launch(kern, cfg.grid, cfg.block, *args, shared_bytes=cfg.shared_bytes)


# ------------------------------------------------------------------ ops


def dequantize(w: DeviceWeight, out: torch.Tensor, inject: str | None = None) -> torch.Tensor:
    """out[rows, cols] (float16 or float32) = the weight's values. inject="block-dim" reproduces the seed's bug."""
    _check(out, "dequantize output", w, (torch.float32, torch.float16), w.shape)
    n_blocks = w.rows * w.cols // w.traits.block_values
    variant = "f32" if out.dtype == torch.float32 else "f16"
    _launch(w, "dequant", variant, inject, lambda: K.dequant_launch(w.traits, n_blocks, inject), w.raw, out, n_blocks)
    return out


def get_rows(w: DeviceWeight, ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = row ids[i] of the weight (embedding lookup), float32. An id out of range gives a NaN row."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int32 or not ids.is_cuda or ids.dim() != 1:
        raise QprofError(f"{w.name}: get_rows ids must be a 1-D int32 CUDA tensor")
    if not ids.is_contiguous():
        raise QprofError(f"{w.name}: get_rows ids must be contiguous")
    n = int(ids.shape[0])
    _check(out, "get_rows output", w, (torch.float32,), (n, w.cols))
    if n == 0:
        return out
    blocks_per_row = w.cols // w.traits.block_values
    _launch(w, "get_rows", None, n, lambda: K.get_rows_launch(w.traits, blocks_per_row, n),
            w.raw, ids, out, w.rows, blocks_per_row, w.row_bytes)
    return out


def check_vector(w: DeviceWeight, t: torch.Tensor, what: str, n: int) -> None:
    """A contiguous float32 CUDA vector of n values (a norm weight, a residual row)."""
    _check(t, what, w, (torch.float32,), (n,) if t.dim() == 1 else tuple(t.shape))
    if t.numel() != n:
        raise QprofError(f"{w.name}: {what} must hold {n} values, got {t.numel()}")


@dataclass
class QVec:
    """Activations quantized for the dp4a matvec (the QVec of kernels/matvec_qvec.cuh): `batch` columns
    of `cols` values, 16-bit at batch 1 and 8-bit above, with per-32 scales, per-16 sums and the
    sum(x^2) partials a fused RMSNorm reads. Written by quantize() or by a producing kernel's epilogue."""

    data: torch.Tensor  # uint8, CUDA
    cols: int
    batch: int = 1

    @classmethod
    def allocate(cls, cols: int, batch: int = 1) -> QVec:
        if cols % 32:
            raise QprofError(f"quantized activations need a multiple of 32 values, got {cols}")
        n = batch * K.xq_column_bytes(K.xq_planes(batch), cols)
        return cls(torch.zeros(n, dtype=torch.uint8, device="cuda"), cols, batch)


def quantize(x: torch.Tensor, xq: QVec, norm: torch.Tensor | None = None) -> QVec:
    """xq = x [batch, cols] (times the RMSNorm weight `norm`, whose partials it keeps), quantized."""
    from qprof.runtime.cuda.driver import KernelLibrary

    if x.dtype != torch.float32 or not x.is_cuda or not x.is_contiguous() or x.numel() != xq.cols * xq.batch:
        raise QprofError(f"quantize: expects a contiguous float32 CUDA tensor of {xq.batch} x {xq.cols} values")
    if norm is not None and (norm.dtype != torch.float32 or norm.numel() != xq.cols or not norm.is_contiguous()):
        raise QprofError(f"quantize: the norm weight must be {xq.cols} contiguous float32 values")
    lib = KernelLibrary.get()
    kern = lib.kernel("matvec", "quantize_q16" if xq.batch == 1 else "quantize_q8")
    lib.launch(kern, (-(-xq.cols // K.QUANTIZE_VALUES_PER_CTA), xq.batch), (K.QUANTIZE_THREADS,), x, norm, xq.data,
               xq.cols)
    return xq


_SCRATCH: dict[tuple[int, int], QVec] = {}


def _scratch_qvec(cols: int, batch: int) -> QVec:
    """One QVec per shape for matvec calls handed float x (tests, benchmarks, the unfused decode step)."""
    key = (cols, batch)
    if key not in _SCRATCH:
        _SCRATCH[key] = QVec.allocate(cols, batch)
    return _SCRATCH[key]


def matvec(w: DeviceWeight, x: torch.Tensor, out: torch.Tensor, norm: torch.Tensor | None = None,
           eps: float = 0.0, residual: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, rows] = x[b, cols] @ W.T for 1 <= b <= 8 (decode); a 1-D x and out mean b = 1.

    norm (quantized types): x is RMSNorm-ed with this weight and eps first.
    residual (same shape as out, may be out itself): out = residual + W x, fused into the epilogue.
    Quantized types quantize x first (one more launch); matvec_q takes an already quantized QVec.
    """
    b = _batch(x)
    if not 1 <= b <= K.MATVEC_MAX_BATCH:
        raise QprofError(f"{w.name}: matvec takes 1..{K.MATVEC_MAX_BATCH} columns, got {b}; use matmul")
    if w.cols % K.MATVEC_COL_MULTIPLE:
        raise QprofError(f"{w.name}: matvec needs a row length that is a multiple of {K.MATVEC_COL_MULTIPLE}, "
                         f"got {w.cols}")
    x_shape = (w.cols,) if x.dim() == 1 else (b, w.cols)
    out_shape = (w.rows,) if out.dim() == 1 and x.dim() == 1 else (b, w.rows)
    _check(x, "matvec input", w, (torch.float32,), x_shape)
    _check(out, "matvec output", w, (torch.float32,), out_shape)
    if w.traits.family == "float":
        if norm is not None:
            raise QprofError(f"{w.name}: a fused RMSNorm needs a quantized weight, got {w.qtype}")
        _launch_matvec(w, b, x, out, 0, 0.0, residual, None, None)
        return out
    if norm is not None:
        check_vector(w, norm, "matvec norm weight", w.cols)
    xq = quantize(x, _scratch_qvec(w.cols, b), norm)
    return matvec_q(w, xq, out, eps if norm is not None else None, residual)


def matvec_q(w: DeviceWeight, xq: QVec, out: torch.Tensor, norm_eps: float | None = None,
             residual: torch.Tensor | None = None, out_q: QVec | None = None,
             next_norm: torch.Tensor | None = None) -> torch.Tensor:
    """out = W x for an already quantized x; norm_eps: x holds x * norm weight, scale by 1 / rms(x).

    out_q (batch 1): also write out (times next_norm, the next RMSNorm's weight) quantized.
    """
    if w.traits.family == "float":
        raise QprofError(f"{w.name}: quantized activations need a quantized weight, got {w.qtype}")
    if xq.cols != w.cols or not 1 <= xq.batch <= K.MATVEC_MAX_BATCH:
        raise QprofError(f"{w.name}: quantized input holds {xq.batch} x {xq.cols} values, expected columns of {w.cols}")
    out_shape = (w.rows,) if out.dim() == 1 else (xq.batch, w.rows)
    _check(out, "matvec output", w, (torch.float32,), out_shape)
    if out.numel() != xq.batch * w.rows:
        raise QprofError(f"{w.name}: matvec output must hold {xq.batch} x {w.rows} values")
    if out_q is not None and (xq.batch != 1 or out_q.cols != w.rows or out_q.batch != 1):
        raise QprofError(f"{w.name}: a quantized output needs one column of {w.rows} values")
    if next_norm is not None:
        check_vector(w, next_norm, "next norm weight", w.rows)
    _launch_matvec(w, xq.batch, xq.data, out, int(norm_eps is not None), float(norm_eps or 0.0), residual,
                   None if out_q is None else out_q.data, next_norm)
    return out


def _launch_matvec(w: DeviceWeight, b: int, x, out, use_norm: int, eps: float, residual, out_q, next_norm) -> None:
    if residual is not None:
        _check(residual, "matvec residual", w, (torch.float32,), tuple(out.shape))
    _launch(w, "matvec", f"b{b}", None, lambda: K.matvec_launch(w.traits, w.rows),
            w.raw, x, out, w.rows, w.cols, w.row_bytes, use_norm, eps, residual, out_q, next_norm)


_MM_DTYPE_OUT: bool | None = None  # whether this torch has aten::mm.dtype_out (fp16 in, fp32 out)


def matmul_path() -> str:
    """How matmul's GEMM writes float32: one cuBLAS call, or a float16 result copied (older torch)."""
    if _MM_DTYPE_OUT is None:
        return "unknown until the first matmul"
    return "cuBLAS fp16 x fp16 -> fp32 (mm.dtype_out)" if _MM_DTYPE_OUT else "cuBLAS fp16 -> fp16, copied to fp32"


def _mm_into_f32(a16: torch.Tensor, b16_t: torch.Tensor, out: torch.Tensor) -> None:
    global _MM_DTYPE_OUT
    if _MM_DTYPE_OUT is not False:
        try:
            torch.ops.aten.mm.dtype_out(a16, b16_t, torch.float32, out=out)
            _MM_DTYPE_OUT = True
            return
        except (AttributeError, RuntimeError, NotImplementedError):
            _MM_DTYPE_OUT = False
    out.copy_(torch.mm(a16, b16_t))


def matmul(w: DeviceWeight, x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor | None = None,
           inject: str | None = None) -> torch.Tensor:
    """out[n, rows] = x[n, cols] @ W.T for many tokens (prefill): dequantize to float16, then cuBLAS.

    `scratch` is a float16 buffer of at least rows*cols elements (allocated per call when None).
    inject="block-dim" launches the dequantize step with the seed's wrong block size.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise QprofError(f"{w.name}: matmul input must be a 2-D tensor [n, {w.cols}]")
    n = int(x.shape[0])
    if x.dtype not in (torch.float32, torch.float16) or not x.is_cuda or tuple(x.shape) != (n, w.cols):
        raise QprofError(f"{w.name}: matmul input must be float32/float16 CUDA [n, {w.cols}], "
                         f"got {str(x.dtype).replace('torch.', '')} {list(x.shape)}")
    _check(out, "matmul output", w, (torch.float32,), (n, w.rows))
    numel = w.rows * w.cols
    if scratch is None:
        scratch = torch.empty(numel, dtype=torch.float16, device="cuda")
    elif scratch.dtype != torch.float16 or not scratch.is_cuda or not scratch.is_contiguous() or scratch.numel() < numel:
        raise QprofError(f"{w.name}: matmul scratch must be a contiguous float16 CUDA buffer of >= {numel} elements")
    if n == 0:
        return out
    w16 = scratch.reshape(-1)[:numel].view(w.rows, w.cols)
    dequantize(w, w16, inject=inject)
    x16 = x if x.dtype == torch.float16 else x.to(torch.float16)
    _mm_into_f32(x16.contiguous(), w16.t(), out)
    return out
