"""`qprof check` cases for the forward-pass ops (norm, add, RoPE, SwiGLU, KV write, attention, argmax).

Each case builds seeded inputs, poisons the GPU output with NaN, runs the kernel and measures it
against a float64 torch reference (qprof.check.registry.measure: NMSE, max abs error, NaN count).
register_ops() puts one Op per family into the `qprof check` registry; the pytest suite
(tests/gpu/test_forward_ops.py) runs the same cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from qprof.check.registry import MATMUL_NMSE, Case, Measurement, Op, Selection, measure

# Thresholds. Pure data movement is exact; float32 elementwise ops sit near 1e-14; attention's
# float32 softmax and sums land around 1e-12, so 1e-9 still fails on any wrong index or scale.
EXACT = 0.0
ELEMENTWISE_NMSE = 1e-10
ATTENTION_NMSE = 1e-9
THRESHOLDS = {"rmsnorm": ELEMENTWISE_NMSE, "add": ELEMENTWISE_NMSE, "swiglu": ELEMENTWISE_NMSE,
              "rope": ELEMENTWISE_NMSE, "kv_write": EXACT, "attention": ATTENTION_NMSE, "argmax": EXACT}
DESCRIPTIONS = {
    "rmsnorm": "RMSNorm over rows (float32)", "add": "residual add", "swiglu": "silu(gate) * up",
    "rope": "rotary embedding, normal mode, host or device position", "kv_write": "K/V rows into the cache",
    "attention": "causal GQA attention, decode (split-KV) and prefill, window and mask modes",
    "argmax": "greedy token on the device",
}


@dataclass(frozen=True)
class ForwardCase:
    op: str  # family: rmsnorm, add, rope, swiglu, kv_write, attention, argmax
    label: str  # shape and options, e.g. "decode 32/8x128 pos=600 window=0 mask=device"
    n: int  # rows / tokens of the case
    model_shape: bool  # at SmolLM2 / Mistral-7B sizes (the "mistral" shape set) rather than small ones
    run: Callable[[], Measurement] = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.op}[{self.label}]"


def _poisoned(*shape: int, dtype=torch.float32) -> torch.Tensor:
    if dtype == torch.int32:
        return torch.full(shape, -1, dtype=dtype, device="cuda")
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def _rand(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _result(got: torch.Tensor, ref: torch.Tensor, threshold: float) -> Measurement:
    return measure(got.detach().double().cpu(), ref.double(), threshold)


# ---------------------------------------------------------------- float64 references


def ref_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, positions: torch.Tensor, rope_dim: int, theta: float) -> torch.Tensor:
    """Normal mode on x [T, H, D]: pairs (x[2i], x[2i+1]) of the first rope_dim values, angle p * theta^(-2i/rope_dim)."""
    i = torch.arange(rope_dim // 2, dtype=torch.float64)
    # frequency and angle rounded to float32 (the convention of every llama runtime), trig in float64
    inv_freq = (theta ** (-2.0 * i / rope_dim)).float()
    ang = (positions.float()[:, None] * inv_freq).double()
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    out = x.clone()
    x0, x1 = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    out[..., 0:rope_dim:2] = x0 * cos - x1 * sin
    out[..., 1:rope_dim:2] = x0 * sin + x1 * cos
    return out


def ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                  window: int) -> torch.Tensor:
    """q [T, H, D], k/v [S, KV, D] (keys at positions 0..S-1); causal (+ window) -> [T, H*D]."""
    t, h, d = q.shape
    group = h // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    diff = q_pos[:, None] - torch.arange(k.shape[0])[None, :]
    allowed = diff >= 0
    if window > 0:
        allowed &= diff < window
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hts,shd->thd", torch.softmax(scores, -1), v).reshape(t, h * d)


# ---------------------------------------------------------------- cases


def _rmsnorm_case(rows: int, n: int, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    x, w = _rand(gen, rows, n, scale=3.0), _rand(gen, n)
    out = _poisoned(rows, n)
    ops.rmsnorm(x.float().cuda(), w.float().cuda(), out, 1e-5)
    return _result(out, ref_rmsnorm(x, w, 1e-5), ELEMENTWISE_NMSE)


def _add_case(n: int, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    a, b = _rand(gen, n), _rand(gen, n)
    out = _poisoned(n)
    ops.add(a.float().cuda(), b.float().cuda(), out)
    return _result(out, a + b, ELEMENTWISE_NMSE)


def _swiglu_case(n: int, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    g, u = _rand(gen, n, scale=4.0), _rand(gen, n)
    out = _poisoned(n)
    ops.swiglu(g.float().cuda(), u.float().cuda(), out)
    return _result(out, torch.nn.functional.silu(g) * u, ELEMENTWISE_NMSE)


def _rope_case(rows: int, n_head: int, n_head_kv: int, head_dim: int, rope_dim: int, pos0: int,
               device_pos: bool, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    q, k = _rand(gen, rows, n_head, head_dim), _rand(gen, rows, n_head_kv, head_dim)
    q_d, k_d = q.float().cuda(), k.float().cuda()
    pos = torch.tensor([pos0], dtype=torch.int32, device="cuda") if device_pos else None
    # the host pos0 is deliberately wrong when the device scalar must win
    ops.rope(q_d, k_d, rows, n_head, n_head_kv, head_dim, rope_dim, 1e6, pos=pos,
             pos0=-7 if device_pos else pos0)
    positions = torch.arange(pos0, pos0 + rows)
    got = torch.cat([q_d.reshape(rows, -1), k_d.reshape(rows, -1)], 1)
    ref = torch.cat([ref_rope(q, positions, rope_dim, 1e6).reshape(rows, -1),
                     ref_rope(k, positions, rope_dim, 1e6).reshape(rows, -1)], 1)
    return _result(got, ref, ELEMENTWISE_NMSE)


def _kv_write_case(rows: int, kv_dim: int, n_ctx: int, pos0: int, device_pos: bool, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    k, v = _rand(gen, rows, kv_dim).float(), _rand(gen, rows, kv_dim).float()
    kc, vc = _poisoned(n_ctx, kv_dim), _poisoned(n_ctx, kv_dim)
    pos = torch.tensor([pos0], dtype=torch.int32, device="cuda") if device_pos else None
    ops.kv_write(k.cuda(), v.cuda(), kc, vc, rows, pos=pos, pos0=-7 if device_pos else pos0)
    got = torch.cat([kc[pos0:pos0 + rows], vc[pos0:pos0 + rows]])
    untouched = torch.cat([kc[:pos0], kc[pos0 + rows:]]).isnan().all().item()
    res = _result(got, torch.cat([k, v]), EXACT)
    # a write outside its rows is as wrong as a missing one
    return res if untouched else Measurement(math.inf, res.max_abs_err, res.n_nan, EXACT)


def _attention_inputs(gen, n_q: int, pos0: int, n_head: int, n_head_kv: int, d: int, n_ctx: int,
                      kv_dtype: torch.dtype = torch.float32):
    """q, k, v (float64; k and v as the cache holds them) and the NaN-padded caches of kv_dtype."""
    n_keys = pos0 + n_q
    q = _rand(gen, n_q, n_head, d)
    k, v = _rand(gen, n_keys, n_head_kv, d), _rand(gen, n_keys, n_head_kv, d)
    k, v = k.to(kv_dtype).double(), v.to(kv_dtype).double()  # a float16 cache rounds once, exactly so
    kc = torch.full((n_ctx, n_head_kv * d), float("nan"), dtype=kv_dtype)  # unwritten rows are NaN
    vc = kc.clone()
    kc[:n_keys], vc[:n_keys] = k.reshape(n_keys, -1).to(kv_dtype), v.reshape(n_keys, -1).to(kv_dtype)
    return q, k, v, kc.cuda(), vc.cuda()


def _attention_case(phase: str, n_q: int, pos0: int, n_head: int, n_head_kv: int, d: int, window: int,
                    mask_mode: str, n_ctx: int, seed: int, kv_dtype: torch.dtype = torch.float32) -> Measurement:
    from qprof.check.fused_cases import dequantize_qvec
    from qprof.runtime.cuda import ops
    from qprof.runtime.cuda.quant_ops import QVec

    gen = torch.Generator().manual_seed(seed)
    q, k, v, kc, vc = _attention_inputs(gen, n_q, pos0, n_head, n_head_kv, d, n_ctx, kv_dtype)
    shape = ops.AttentionShape(n_head, n_head_kv, d, window)
    q_pos = torch.arange(pos0, pos0 + n_q)
    mask = None
    if mask_mode == "device":
        mask = ops.Mask(ops.causal_mask(torch.arange(n_ctx, device="cuda"), n_ctx, window), row_by_pos=True)
    elif mask_mode == "upload":
        mask = ops.Mask(ops.causal_mask(q_pos, pos0 + n_q, window).cuda(), row_by_pos=False)
    out = _poisoned(n_q, n_head * d)
    q_d = q.reshape(n_q, -1).float().cuda()
    if phase == "decode":
        scratch = ops.DecodeScratch.allocate(shape, n_ctx)
        scratch.part_o.fill_(float("nan"))
        scratch.part_ml.fill_(float("nan"))
        pos = torch.tensor([pos0], dtype=torch.int32, device="cuda")
        out_q = QVec.allocate(n_head * d)
        ops.attention_decode(q_d[0], kc, vc, out[0], shape, scratch, pos=pos, mask=mask, out_q=out_q.data)
        # checked on a second launch with the same scratch, as every later step and graph replay runs: it
        # merges only if the first left each KV head's counter at zero
        out.fill_(float("nan"))
        out_q.data.fill_(0xFF)  # a NaN scale wherever the merge fails to write
        ops.attention_decode(q_d[0], kc, vc, out[0], shape, scratch, pos=pos, mask=mask, out_q=out_q.data)
        ref = ref_attention(q, k, v, q_pos, window)
        m = _result(out, ref, ATTENTION_NMSE)
        # the quantized copy the attn_output projection reads: 16-bit, so held to the matvec threshold
        mq = measure(dequantize_qvec(out_q), ref.reshape(-1), MATMUL_NMSE)
        return m if mq.passed else mq
    else:
        ops.attention_prefill(q_d, kc, vc, out, n_q, shape, pos0, mask=mask)
    return _result(out, ref_attention(q, k, v, q_pos, window), ATTENTION_NMSE)


def _argmax_case(rows: int, n: int, ties: bool, seed: int) -> Measurement:
    from qprof.runtime.cuda import ops

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=gen)
    if ties:  # the maximum repeated: the first index must win, as in torch.argmax
        x[:, n // 3] = x[:, 2 * n // 3] = 100.0
    out = _poisoned(rows, dtype=torch.int32)
    ops.argmax(x.cuda(), out)
    return _result(out.float(), x.argmax(-1).double(), EXACT)


def forward_cases(quick: bool = False) -> list[ForwardCase]:
    """Every forward op at small shapes and at SmolLM2 / Mistral-7B shapes; `quick` keeps the small ones."""
    cases: list[ForwardCase] = []

    def add_case(op: str, label: str, n: int, model_shape: bool, fn: Callable[..., Measurement], *args) -> None:
        if not (quick and model_shape):
            cases.append(ForwardCase(op, label, n, model_shape, lambda: fn(*args)))

    for rows, n, big in ((1, 256, False), (9, 576, True), (1, 4096, True), (512, 4096, True)):
        add_case("rmsnorm", f"{rows}x{n}", rows, big, _rmsnorm_case, rows, n, rows + n)
    for n, big in ((1000, False), (14336, True)):
        add_case("add", f"n={n}", 1, big, _add_case, n, n)
        add_case("swiglu", f"n={n}", 1, big, _swiglu_case, n, n + 1)
    rope_shapes = [(1, 4, 2, 64, 64, 37, True, False), (7, 4, 2, 32, 32, 0, False, False),
                   (3, 4, 2, 128, 64, 5, False, False), (1, 9, 3, 64, 64, 37, True, True),
                   (1, 32, 8, 128, 128, 4095, True, True), (16, 32, 8, 128, 128, 100, False, True)]
    for rows, h, hkv, d, rd, pos0, dev, big in rope_shapes:
        add_case("rope", f"{rows}x{h}/{hkv}x{d} rope{rd} pos={pos0}{' devpos' if dev else ''}", rows, big,
                 _rope_case, rows, h, hkv, d, rd, pos0, dev, rows + pos0)
    for rows, kv_dim, pos0, dev, big in ((1, 64, 40, True, False), (9, 192, 0, False, False),
                                         (512, 1024, 100, False, True)):
        add_case("kv_write", f"{rows}x{kv_dim} pos={pos0}{' devpos' if dev else ''}", rows, big, _kv_write_case,
                 rows, kv_dim, 1024, pos0, dev, rows)
    for rows, n, ties, big in ((3, 1000, False, False), (1, 1000, True, False), (1, 49152, False, True),
                               (1, 32000, True, True)):
        add_case("argmax", f"{rows}x{n}{' ties' if ties else ''}", rows, big, _argmax_case, rows, n, ties, n)

    # attention: small heads, SmolLM2's 9/3x64 and Mistral-7B's 32/8x128; 8/8, 8/1 and 6/1 for the decode
    # kernels built for 1 and 8 query heads per KV head (6: two of the eight heads unused)
    masks = ((0, "skip"), (0, "device"), (0, "upload"), (50, "skip"), (50, "device"), (50, "upload"))
    for h, hkv, d, n_ctx, big in ((4, 2, 32, 256, False), (4, 1, 96, 256, False), (8, 8, 64, 256, False),
                                  (8, 1, 32, 256, False), (6, 1, 128, 256, False), (9, 3, 64, 1024, True),
                                  (32, 8, 128, 1024, True)):
        positions = (0, 1, 127, 128, 200) if not big else (0, 600, n_ctx - 1)
        prefill = ((1, 0), (7, 0), (9, 33), (40, 3), (100, 60)) if not big else ((64, 0), (200, 300), (512, 0))
        shape = f"{h}/{hkv}x{d}"
        for window, mask_mode in masks:
            for pos in positions:
                add_case("attention", f"decode {shape} pos={pos} window={window} mask={mask_mode}", 1, big,
                         _attention_case, "decode", 1, pos, h, hkv, d, window, mask_mode, n_ctx, pos + d)
            for n_q, pos0 in prefill:
                add_case("attention", f"prefill {shape} n={n_q} pos0={pos0} window={window} mask={mask_mode}",
                         n_q, big, _attention_case, "prefill", n_q, pos0, h, hkv, d, window, mask_mode, n_ctx,
                         n_q + pos0)
    # a long context: every split of Mistral-7B's decode holds 128 keys, several rounds of its loads in flight
    for pos, window, mask_mode in ((2500, 0, "skip"), (4095, 0, "skip"), (4095, 1000, "skip"), (3000, 0, "device")):
        add_case("attention", f"decode 32/8x128 pos={pos} window={window} mask={mask_mode} n_ctx=4096", 1, True,
                 _attention_case, "decode", 1, pos, 32, 8, 128, window, mask_mode, 4096, pos + 128)
    for phase, n_q, pos0 in (("decode", 1, 0), ("decode", 1, 1023), ("prefill", 64, 0), ("prefill", 200, 300)):
        # float16 rows of every head size, and the kernels for 1 and 8 query heads per KV head
        for h, hkv, d, big in ((4, 2, 32, False), (4, 1, 96, False), (9, 3, 64, False), (8, 1, 32, False),
                               (8, 8, 64, False), (32, 8, 128, True)):
            p0 = min(pos0, 200)
            add_case("attention", f"{phase} {h}/{hkv}x{d} n={n_q} pos0={p0} f16 KV", n_q, big, _attention_case,
                     phase, n_q, p0, h, hkv, d, 0, "skip", 1024, p0 + d + 7, torch.float16)
    return cases


def register_ops(register: Callable[[Op], Op]) -> None:
    """The `qprof check` hook: one Op per forward family; small cases for "small", the rest for "mistral"."""
    by_op: dict[str, list[ForwardCase]] = {}
    for fc in forward_cases():
        by_op.setdefault(fc.op, []).append(fc)

    def generator(entries: list[ForwardCase]):
        def cases(selection: Selection):
            for fc in entries:
                if (selection.mistral if fc.model_shape else selection.small):
                    yield Case(fc.op, None, fc.label, fc.n, group=("forward", fc.op),
                               measure=lambda ctx, fc=fc: fc.run())

        return cases

    for name, entries in by_op.items():
        register(Op(name, THRESHOLDS[name], generator(entries), description=DESCRIPTIONS[name]))
