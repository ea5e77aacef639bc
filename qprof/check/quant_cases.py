"""`qprof check` cases for the quantized ops: dequantize, get_rows, matvec and matmul, every type and n.

Weights are random GGUF blocks (every bit pattern of the quant bytes, finite float16 scales) at
small shapes and at Mistral-7B's shapes. The reference is independent of the kernels under test:
the CPU dequantization of qprof.quant.dequant (bit-exact with gguf-py), uploaded and multiplied
in float64 on the GPU. One input x of 512 rows per weight serves every n (its first n rows).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from qprof.check.registry import (
    EXACT_NMSE,
    FLOAT32_DOT_NMSE,
    MATMUL_NMSE,
    Case,
    CheckContext,
    Op,
    Selection,
    register,
)
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.dequant import dequantize as cpu_dequantize
from qprof.quant.traits import ALL_TYPES, FLOAT_TYPES, traits

SMALL_SHAPES: tuple[tuple[int, int], ...] = ((64, 256), (100, 512), (13, 768))
MISTRAL_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (14336, 4096), (4096, 14336), (32000, 4096))
N_VALUES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 512)
MATVEC_MAX_N = 8
F16_DEQUANT_NMSE = 1e-6  # float16 rounding of each value (relative error <= 2^-11)
_CHUNK_VALUES = 1 << 22  # CPU reference dequantization runs in row chunks of about this many values


def shapes_for(selection: Selection) -> list[tuple[int, int]]:
    return (list(SMALL_SHAPES) if selection.small else []) + (list(MISTRAL_SHAPES) if selection.mistral else [])


def random_weight_bytes(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """(rows, row_bytes) uint8: random quant bytes with finite float16 scales, or random float values."""
    t = traits(qtype)
    rng = np.random.default_rng(seed)
    if t.family == "float":
        values = rng.standard_normal((rows, cols), dtype=np.float32)
        if t.name == "F32":
            return values.view(np.uint8).reshape(rows, -1)
        if t.name == "F16":
            return values.astype(np.float16).view(np.uint8).reshape(rows, -1)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    n_blocks = rows * cols // t.block_values
    blocks = rng.integers(0, 256, size=(n_blocks, t.block_bytes), dtype=np.uint8)
    for offset in FP16_FIELDS[t.name]:
        # scales of either sign between 2^-9 and 2^-4: finite, normal, and small enough that sums stay tame
        mag = np.exp2(rng.uniform(-9.0, -4.0, size=n_blocks))
        sign = np.where(rng.random(n_blocks) < 0.5, -1.0, 1.0)
        blocks[:, offset:offset + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)


def reference_values(raw: np.ndarray, qtype: str, rows: int, cols: int) -> np.ndarray:
    """CPU dequantization (float32) of (rows, row_bytes) bytes, in row chunks on a few threads."""
    step = max(1, _CHUNK_VALUES // cols)
    if rows <= step:
        return cpu_dequantize(raw, qtype, (rows, cols))
    out = np.empty((rows, cols), dtype=np.float32)

    def work(r0: int) -> None:
        r1 = min(rows, r0 + step)
        out[r0:r1] = cpu_dequantize(raw[r0:r1], qtype, (r1 - r0, cols))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(0, rows, step)))
    return out


def _seed(qtype: str, rows: int, cols: int) -> int:
    return (traits(qtype).ggml_type * 1_000_003 + rows * 7919 + cols) % (2**31)


# ------------------------------------------------------------------ shared per-(type, shape) state


def _weight(case: Case, ctx: CheckContext):
    from qprof.runtime.cuda.quant_ops import DeviceWeight

    qtype, (rows, cols) = case.qtype, case.params

    def make():
        raw = random_weight_bytes(qtype, rows, cols, _seed(qtype, rows, cols))
        ref = torch.from_numpy(reference_values(raw, qtype, rows, cols)).to("cuda").double()
        return DeviceWeight.from_bytes(f"check.{qtype}.{rows}x{cols}", qtype, (rows, cols), raw), ref

    return ctx.cached("weight", make)


def _x(case: Case, ctx: CheckContext) -> torch.Tensor:
    cols = case.params[1]

    def make():
        gen = torch.Generator().manual_seed(cols)
        return torch.randn(max(N_VALUES), cols, generator=gen, dtype=torch.float32).to("cuda")

    return ctx.cached("x", make)


def _y_ref(case: Case, ctx: CheckContext) -> torch.Tensor:
    def make():
        _, w_ref = _weight(case, ctx)
        return _x(case, ctx).double() @ w_ref.t()

    return ctx.cached("y_ref", make)


def _ids(case: Case) -> torch.Tensor:
    rows = case.params[0]
    gen = torch.Generator().manual_seed(rows * 31 + case.n)
    ids = torch.randint(0, rows, (case.n,), generator=gen, dtype=torch.int32)
    ids[0] = rows - 1  # both ends of the table
    if case.n > 1:
        ids[1] = 0
    return ids.to("cuda")


# ------------------------------------------------------------------ runners and references


def _run_dequantize(case: Case, ctx: CheckContext) -> torch.Tensor:
    from qprof.runtime.cuda.quant_ops import dequantize

    w, _ = _weight(case, ctx)
    dtype = torch.float16 if case.op == "dequantize_f16" else torch.float32
    return dequantize(w, ctx.poisoned(w.shape, dtype), inject=ctx.selection.inject)


def _ref_dequantize(case: Case, ctx: CheckContext) -> torch.Tensor:
    return _weight(case, ctx)[1]


def _run_get_rows(case: Case, ctx: CheckContext) -> torch.Tensor:
    from qprof.runtime.cuda.quant_ops import get_rows

    w, _ = _weight(case, ctx)
    return get_rows(w, _ids(case), ctx.poisoned((case.n, w.cols)))


def _ref_get_rows(case: Case, ctx: CheckContext) -> torch.Tensor:
    return _weight(case, ctx)[1][_ids(case).long()]


def _run_matvec(case: Case, ctx: CheckContext) -> torch.Tensor:
    from qprof.runtime.cuda.quant_ops import matvec

    w, _ = _weight(case, ctx)
    return matvec(w, _x(case, ctx)[: case.n].contiguous(), ctx.poisoned((case.n, w.rows)))


def _run_matmul(case: Case, ctx: CheckContext) -> torch.Tensor:
    from qprof.runtime.cuda.quant_ops import matmul

    w, _ = _weight(case, ctx)
    scratch = ctx.cached("scratch", lambda: torch.empty(w.rows * w.cols, dtype=torch.float16, device="cuda"))
    ctx.poison(scratch)
    return matmul(w, _x(case, ctx)[: case.n].contiguous(), ctx.poisoned((case.n, w.rows)), scratch,
                  inject=ctx.selection.inject)


def _ref_product(case: Case, ctx: CheckContext) -> torch.Tensor:
    return _y_ref(case, ctx)[: case.n]


# ------------------------------------------------------------------ case generators


def _type_shapes(selection: Selection):
    for qtype in ALL_TYPES:
        if not selection.wants_type(qtype):
            continue
        for rows, cols in shapes_for(selection):
            yield qtype, rows, cols


def _cases(op: str, n_values: tuple[int | None, ...], injectable: bool):
    def generate(selection: Selection):
        from qprof.runtime.cuda.kernels import inject_affected_types

        affected = injectable and selection.inject is not None
        broken = set(inject_affected_types()) if affected else set()
        for qtype, rows, cols in _type_shapes(selection):
            for n in n_values:
                if selection.wants_n(n):
                    yield Case(op, qtype, f"{rows}x{cols}", n, group=(qtype, rows, cols), params=(rows, cols),
                               expect_inject_failure=qtype in broken)

    return generate


OPS = (
    Op("dequantize", EXACT_NMSE, _cases("dequantize", (None,), True), _run_dequantize, _ref_dequantize,
       "blocks -> float32 (the prefill path's weight expansion)", injectable=True),
    Op("dequantize_f16", F16_DEQUANT_NMSE, _cases("dequantize_f16", (None,), True), _run_dequantize,
       _ref_dequantize, "blocks -> float16 (what matmul feeds cuBLAS)", injectable=True),
    Op("get_rows", EXACT_NMSE, _cases("get_rows", N_VALUES, False), _run_get_rows, _ref_get_rows,
       "embedding rows by id -> float32"),
    Op("matvec", MATMUL_NMSE, _cases("matvec", tuple(n for n in N_VALUES if n <= MATVEC_MAX_N), False),
       _run_matvec, _ref_product, "decode matrix x vector, batch 1..8 (quantized types: int8/int16 activations, dp4a)",
       type_thresholds=tuple((t, FLOAT32_DOT_NMSE) for t in FLOAT_TYPES)),
    Op("matmul", MATMUL_NMSE, _cases("matmul", N_VALUES, True), _run_matmul, _ref_product,
       "prefill: dequantize to float16 + cuBLAS", injectable=True),
)

for _op in OPS:
    register(_op)
