"""`qprof check` cases for the fused decode kernels: norm+matvec, matvec+residual, norm+QKV+RoPE+KV, norm+gate+up+SwiGLU.

Every quantized type, at small shapes and Mistral-7B's, one column (the fused kernels are decode's),
plus every Q/K + V type pair with a QKV kernel of its own (Q4_K_M keeps V in Q6_K on some layers), a mix
that only the generic run-time-dispatch kernel serves, and that kernel on uniform types too. Outputs and the whole KV cache are
NaN-poisoned first; the reference is float64 over the CPU dequantization (as quant_cases) with the
float64 RMSNorm / RoPE / SwiGLU of forward_cases. Activations are quantized inside the kernels, so
these ops keep the matvec threshold (5e-4); the report prints each case's measured NMSE.
A cache row other than the step's that the QKV kernel wrote fails the case.
"""

from __future__ import annotations

import math

import torch

from qprof.check.forward_cases import ref_rmsnorm, ref_rope
from qprof.check.quant_cases import random_weight_bytes, reference_values
from qprof.check.registry import MATMUL_NMSE, Case, CheckContext, Measurement, Op, Selection, measure
from qprof.quant.traits import QUANTIZED_TYPES, traits
from qprof.runtime.cuda.kernels import QKV_V_PAIRS

EPS = 1e-5
THETA = 1e6
HEAD_DIM = 128
SMALL = {"qkv": (256, 128, 512), "gate_up": (96, 512), "norm": (40, 512), "residual": (96, 512)}
MISTRAL = {"qkv": (4096, 1024, 4096), "gate_up": (14336, 4096), "norm": (32000, 4096), "residual": (4096, 14336)}
GENERIC_ONLY_QKV = ("Q8_0", "Q8_0", "Q4_0")  # no kernel of its own: the run-time dispatch
DESCRIPTIONS = {
    "fused_qkv": "RMSNorm + Q/K/V (per-segment types) + RoPE + KV-cache write, one launch",
    "fused_gate_up": "RMSNorm + gate + up + SwiGLU, one launch",
    "fused_norm_matvec": "RMSNorm inside the matvec (the output projection)",
    "fused_residual_matvec": "matvec + residual add + the next norm's quantized input in the epilogue",
}


def _weight(ctx: CheckContext, qtype: str, rows: int, cols: int, salt: int):
    from qprof.runtime.cuda.quant_ops import DeviceWeight

    def make():
        seed = (traits(qtype).ggml_type * 7_000_003 + rows * 131 + cols + salt) % (2**31)
        raw = random_weight_bytes(qtype, rows, cols, seed)
        ref = torch.from_numpy(reference_values(raw, qtype, rows, cols)).to("cuda").double()
        return DeviceWeight.from_bytes(f"check.{qtype}.{rows}x{cols}.{salt}", qtype, (rows, cols), raw), ref

    return ctx.cached(("w", qtype, rows, cols, salt), make)


def _inputs(cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cols, generator=gen, dtype=torch.float64) * 3.0
    w = torch.randn(cols, generator=gen, dtype=torch.float64)
    return x, w


def _quantized(x: torch.Tensor, norm: torch.Tensor | None):
    """x (times the norm weight) as the QVec a fused kernel reads, made by the quantize kernel."""
    from qprof.runtime.cuda.quant_ops import QVec, quantize

    xq = QVec.allocate(x.shape[-1])
    xq.data.fill_(0xFF)  # poisoned: a byte the kernel fails to write reads as a NaN scale
    return quantize(x.float().cuda().contiguous(), xq, None if norm is None else norm.float().cuda())


def _qkv(ctx: CheckContext, types: tuple[str, str, str], rows_q: int, rows_kv: int, cols: int,
         generic: bool = False) -> Measurement:
    from qprof.runtime.cuda.fused_ops import QkvLaunch, RopeSpec

    (wq, rq), (wk, rk), (wv, rv) = (_weight(ctx, t, r, cols, i) for i, (t, r) in
                                    enumerate(zip(types, (rows_q, rows_kv, rows_kv))))
    x, nw = _inputs(cols, rows_q + cols)
    pos, n_ctx = 37, 40
    q_out = CheckContext.poisoned((1, rows_q))
    k_cache, v_cache = CheckContext.poisoned((n_ctx, rows_kv)), CheckContext.poisoned((n_ctx, rows_kv))
    launch = QkvLaunch(wq, wk, wv, _quantized(x, nw), EPS, q_out, k_cache, v_cache, RopeSpec(HEAD_DIM, HEAD_DIM, THETA),
                       generic=generic)
    launch(torch.tensor([pos], dtype=torch.int32, device="cuda"))
    xn = ref_rmsnorm(x, nw, EPS).cuda()
    positions = torch.tensor([pos])
    q = ref_rope((xn @ rq.t()).cpu().view(1, -1, HEAD_DIM), positions, HEAD_DIM, THETA).reshape(1, -1)
    k = ref_rope((xn @ rk.t()).cpu().view(1, -1, HEAD_DIM), positions, HEAD_DIM, THETA).reshape(1, -1)
    v = (xn @ rv.t()).cpu()
    others = torch.cat([k_cache[:pos], k_cache[pos + 1:], v_cache[:pos], v_cache[pos + 1:]])
    got = torch.cat([q_out, k_cache[pos:pos + 1], v_cache[pos:pos + 1]], dim=1)
    m = measure(got.double().cpu(), torch.cat([q, k, v], dim=1), MATMUL_NMSE)
    if not bool(torch.isnan(others).all()):  # a write to another position's cache row
        return Measurement(math.inf, m.max_abs_err, m.n_nan, MATMUL_NMSE)
    return m


def _gate_up(ctx: CheckContext, qtype: str, rows: int, cols: int) -> Measurement:
    from qprof.runtime.cuda.fused_ops import gate_up
    from qprof.runtime.cuda.quant_ops import QVec

    (wg, rg), (wu, ru) = _weight(ctx, qtype, rows, cols, 0), _weight(ctx, qtype, rows, cols, 1)
    x, nw = _inputs(cols, rows + cols)
    act = CheckContext.poisoned((1, rows))
    act_q = QVec.allocate(rows)
    act_q.data.fill_(0xFF)
    gate_up(wg, wu, _quantized(x, nw), EPS, act, act_q=act_q)
    xn = ref_rmsnorm(x, nw, EPS).cuda()
    ref = (torch.nn.functional.silu(xn @ rg.t()) * (xn @ ru.t())).cpu()
    m = measure(act.double().cpu(), ref, MATMUL_NMSE)
    return _with_quantized_output(m, act_q, act, ref)


def _norm_matvec(ctx: CheckContext, qtype: str, rows: int, cols: int) -> Measurement:
    from qprof.runtime.cuda.quant_ops import matvec_q

    w, ref_w = _weight(ctx, qtype, rows, cols, 0)
    x, nw = _inputs(cols, rows * 3 + cols)
    out = CheckContext.poisoned((1, rows))
    matvec_q(w, _quantized(x, nw), out, norm_eps=EPS)
    return measure(out.double().cpu(), (ref_rmsnorm(x, nw, EPS).cuda() @ ref_w.t()).cpu(), MATMUL_NMSE)


def _residual_matvec(ctx: CheckContext, qtype: str, rows: int, cols: int) -> Measurement:
    """out += W x in place, as the decode step runs it, and out * next_norm quantized for the next op."""
    from qprof.runtime.cuda.quant_ops import QVec, matvec_q

    w, ref_w = _weight(ctx, qtype, rows, cols, 0)
    x, _ = _inputs(cols, rows * 5 + cols)
    gen = torch.Generator().manual_seed(rows)
    resid = torch.randn(1, rows, generator=gen, dtype=torch.float64)
    next_norm = torch.randn(rows, generator=gen, dtype=torch.float64)
    out = resid.float().cuda()
    out_q = QVec.allocate(rows)
    out_q.data.fill_(0xFF)
    matvec_q(w, _quantized(x, None), out, residual=out, out_q=out_q, next_norm=next_norm.float().cuda())
    ref = resid + (x.cuda() @ ref_w.t()).cpu()
    m = measure(out.double().cpu(), ref, MATMUL_NMSE)
    return _with_quantized_output(m, out_q, out, ref * next_norm, norm=next_norm)


def _with_quantized_output(m: Measurement, xq, y: torch.Tensor, ref_q: torch.Tensor,
                           norm: torch.Tensor | None = None) -> Measurement:
    """The worse of m and the check of a kernel's quantized output: its values (a matvec with an
    identity-like read-back: dequantized on the host) against ref_q, and its norm partials."""
    got = dequantize_qvec(xq)
    mq = measure(got, ref_q.reshape(-1), MATMUL_NMSE)
    if norm is not None:
        ss = qvec_partials(xq).sum()
        want = float((y.double().cpu() ** 2).sum())
        if not math.isclose(float(ss), want, rel_tol=1e-5):
            return Measurement(math.inf, m.max_abs_err, m.n_nan, MATMUL_NMSE)
    return mq if (mq.nmse > m.nmse or mq.n_nan) else m


def _qvec_fields(xq):
    from qprof.runtime.cuda import kernels as K

    planes, cols = K.xq_planes(xq.batch), xq.cols
    raw = xq.data[: K.xq_column_bytes(planes, cols)].cpu()
    floats = raw[planes * cols: planes * cols + (cols // 32 + cols // 16 + cols // 32) * 4].view(torch.float32)
    return raw, floats, planes, cols


def dequantize_qvec(xq) -> torch.Tensor:
    """Column 0 of a QVec back to float64 (dx * xi), read on the host: what a matvec would see."""
    raw, floats, planes, cols = _qvec_fields(xq)
    hi = raw[:cols].view(torch.int8).double()
    xi = hi * 256 + raw[cols:2 * cols].double() if planes == 2 else hi
    return xi * floats[: cols // 32].double().repeat_interleave(32)


def qvec_partials(xq) -> torch.Tensor:
    """The sum(x^2) partials of column 0 (one per 32 values)."""
    _, floats, _, cols = _qvec_fields(xq)
    return floats[cols // 32 + cols // 16:].double()


def _shape_sets(selection: Selection):
    if selection.small:
        yield SMALL
    if selection.mistral:
        yield MISTRAL


def _cases(op: str):
    def generate(selection: Selection):
        for shapes in _shape_sets(selection):
            combos = [(t, t, t) for t in QUANTIZED_TYPES] if op == "fused_qkv" else [(t,) for t in QUANTIZED_TYPES]
            if op == "fused_qkv":  # every compiled Q/K + V pair, and one mix only the generic kernel serves
                combos += [(qk, qk, v) for qk, v in QKV_V_PAIRS] + [GENERIC_ONLY_QKV]
            for types in combos:
                label_type = "+".join(dict.fromkeys(types))
                if not all(selection.wants_type(t) for t in types):
                    continue
                shape = shapes[op.removeprefix("fused_").removesuffix("_matvec")]
                label = "/".join(map(str, shape[:-1])) + f"x{shape[-1]}"
                yield Case(op, label_type, label, 1, group=(op, types, shape),
                           measure=lambda ctx, types=types, shape=shape: _MEASURE[op](ctx, types, shape))
                if op == "fused_qkv" and len(set(types)) == 1 and types[0] in ("Q4_K", "Q6_K", "Q3_K"):
                    yield Case(op, label_type, label + " generic", 1, group=(op, types, shape),
                               measure=lambda ctx, types=types, shape=shape: _qkv(ctx, types, *shape, generic=True))

    return generate


_MEASURE = {
    "fused_qkv": lambda ctx, types, shape: _qkv(ctx, types, *shape),
    "fused_gate_up": lambda ctx, types, shape: _gate_up(ctx, types[0], *shape),
    "fused_norm_matvec": lambda ctx, types, shape: _norm_matvec(ctx, types[0], *shape),
    "fused_residual_matvec": lambda ctx, types, shape: _residual_matvec(ctx, types[0], *shape),
}


def register_ops(register) -> None:
    for name, description in DESCRIPTIONS.items():
        register(Op(name, MATMUL_NMSE, _cases(name), description=description))
